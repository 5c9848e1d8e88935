//! `twreset doctor`: gather sysctls, counters and a socket dump per namespace, probe the kernel,
//! scan sysctl configuration files, then print the judged report (doctor::report).

use std::{
    collections::HashSet,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use clap::Args;

use crate::{
    cmd::{NetnsArgs, UsageError},
    diag::{self, DiagError},
    doctor::{
        model::{ConfigLine, Counters, Settings},
        paths, probe,
        report::{self, NsFacts},
    },
    kernel::{
        netns::{self, Netns, NetnsError},
        procfs::{self as parse, ParseError},
    },
    scope::NetnsScope,
    state::{self, TcpState},
};

/// Where sysctl(8) and systemd-sysctl read settings from (sysctl.d(5)); directories hold `*.conf`.
pub const DEFAULT_SYSCTL_PATHS: [&str; 6] = [
    "/etc/sysctl.conf",
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];
const RECYCLE_KEY: &str = "net.ipv4.tcp_tw_recycle";

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// One JSON document with stable keys (see docs/guide/doctor.md).
    #[arg(long)]
    pub json: bool,
    /// Sysctl configuration file or directory to scan instead of the defaults; repeatable (for tests).
    #[arg(long = "sysctl-dir", value_name = "DIR", hide = true)]
    pub sysctl_dirs: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct DoctorConfig {
    pub scope: NetnsScope,
    pub json: bool,
    pub sysctl_paths: Vec<PathBuf>,
}

impl TryFrom<DoctorArgs> for DoctorConfig {
    type Error = UsageError;
    fn try_from(a: DoctorArgs) -> Result<Self, UsageError> {
        let sysctl_paths = if a.sysctl_dirs.is_empty() {
            DEFAULT_SYSCTL_PATHS.iter().map(PathBuf::from).collect()
        } else {
            a.sysctl_dirs
        };
        Ok(Self { scope: NetnsScope::try_from(&a.netns)?, json: a.json, sysctl_paths })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("namespace {label}")]
    Netns {
        label: String,
        #[source]
        source: NetnsError,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("socket dump failed")]
    Dump {
        #[source]
        source: DiagError,
    },
    #[error("writing the report")]
    Output {
        #[source]
        source: io::Error,
    },
}

fn read(path: &Path) -> Result<Option<String>, DoctorError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DoctorError::Read { path: path.to_owned(), source }),
    }
}

fn sysctl<T>(name: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Result<Option<T>, DoctorError> {
    // /proc/sys/net resolves against the reading thread's network namespace.
    let path = Path::new("/proc/sys/net/ipv4").join(name);
    read(&path)?
        .map(|text| parse(&text).map_err(|source| DoctorError::Parse { path: path.clone(), source }))
        .transpose()
}

fn num<T: TryFrom<u64>>(name: &'static str) -> Result<Option<T>, DoctorError> {
    sysctl(name, |t| {
        let v = parse::number(name, t)?;
        T::try_from(v).map_err(|_| ParseError::Format {
            what: name,
            expected: "a smaller number",
            text: t.trim().into(),
        })
    })
}

fn settings() -> Result<Settings, DoctorError> {
    Ok(Settings {
        ip_local_port_range: sysctl("ip_local_port_range", parse::port_range)?,
        ip_local_reserved_ports: sysctl("ip_local_reserved_ports", parse::reserved_ports)?.unwrap_or_default(),
        tcp_tw_reuse: num("tcp_tw_reuse")?,
        tcp_tw_reuse_delay: num("tcp_tw_reuse_delay")?,
        tcp_max_tw_buckets: num("tcp_max_tw_buckets")?,
        tcp_fin_timeout: num("tcp_fin_timeout")?,
        tcp_timestamps: num("tcp_timestamps")?,
        tcp_rfc1337: num("tcp_rfc1337")?,
        tcp_tw_recycle: num("tcp_tw_recycle")?,
    })
}

/// A /proc/net file of the calling *thread's* namespace (/proc/self/net would follow the main
/// thread, which stays in twreset's own namespace).
fn proc_net<T>(file: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Result<T, DoctorError> {
    let path = Path::new("/proc/thread-self/net").join(file);
    let text = std::fs::read_to_string(&path).map_err(|source| DoctorError::Read { path: path.clone(), source })?;
    parse(&text).map_err(|source| DoctorError::Parse { path, source })
}

/// Everything namespaced, read from inside the namespace the calling thread is in.
fn gather_here(label: String, path: Option<PathBuf>) -> Result<NsFacts, DoctorError> {
    let settings = settings()?;
    let ext = proc_net("netstat", parse::tcp_ext)?;
    let timewait_total = proc_net("sockstat", parse::sockstat_tw)?;
    let sockets = diag::dump(&state::ALL).map_err(|source| DoctorError::Dump { source })?;
    let tw = |st: TcpState| sockets.iter().filter(|s| s.timewait && s.state == st).count() as u64;
    let counters = Counters {
        time_wait: tw(TcpState::TimeWait),
        fin_wait2_timewait: tw(TcpState::FinWait2),
        timewait_total,
        tcp_time_wait_overflow: ext.get("TCPTimeWaitOverflow").copied(),
        tw_recycled: ext.get("TWRecycled").copied(),
    };
    let cookie = netns::current_cookie().map_err(|source| DoctorError::Netns { label: label.clone(), source })?;
    Ok(NsFacts { label, path, cookie, owner: Default::default(), settings, counters, sockets })
}

fn gather_in(ns: &Netns, label: String) -> Result<NsFacts, DoctorError> {
    let path = Some(ns.path.clone());
    ns.run(|| gather_here(label.clone(), path)).map_err(|source| DoctorError::Netns { label: label.clone(), source })?
}

fn label_of(path: &Path) -> String {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if dir == Path::new(netns::NAMED_DIR) => name.to_string_lossy().into_owned(),
        _ => path.display().to_string(),
    }
}

/// Every network namespace reachable by path: `ip netns` names first, then one process per
/// remaining namespace. twreset's own namespace is reported separately as `current`.
fn all_namespaces() -> Vec<(String, Netns)> {
    let ino = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mut seen: HashSet<(u64, u64)> = ino(Path::new("/proc/thread-self/ns/net")).into_iter().collect();
    let mut out = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(netns::NAMED_DIR) {
        let mut named: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        named.sort();
        candidates.extend(named.into_iter().map(|p| (label_of(&p), p)));
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> =
            dir.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        pids.sort_unstable();
        candidates
            .extend(pids.into_iter().map(|pid| (format!("pid {pid}"), PathBuf::from(format!("/proc/{pid}/ns/net")))));
    }
    for (label, path) in candidates {
        // Processes come and go and named entries may be stale: skip what cannot be opened.
        let Some(id) = ino(&path) else { continue };
        if seen.insert(id)
            && let Ok(ns) = Netns::open(&path)
        {
            out.push((label, ns));
        }
    }
    out
}

/// Lines setting tcp_tw_recycle in the given files and directories (`*.conf`, sorted).
pub fn scan_sysctl_paths(paths: &[PathBuf]) -> Vec<ConfigLine> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut confs: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "conf") && f.is_file())
                .collect();
            confs.sort();
            files.extend(confs);
        } else if p.is_file() {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .filter_map(|f| Some((std::fs::read_to_string(&f).ok()?, f)))
        .flat_map(|(text, path)| {
            parse::sysctl_conf_sets(&text, RECYCLE_KEY).into_iter().map(move |(line, value)| ConfigLine {
                path: path.clone(),
                line,
                value,
            })
        })
        .collect()
}

/// `error: cause: cause`, like anyhow's `{:#}`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Run the doctor; returns the exit status (0: nothing worse than a warning, 1: critical).
pub fn run(cfg: DoctorConfig) -> Result<u8, DoctorError> {
    let release = probe::kernel_release();
    let caps = probe::capabilities(&release);
    let recycle = scan_sysctl_paths(&cfg.sysctl_paths);
    let facts = match &cfg.scope {
        NetnsScope::Current => vec![gather_here("current".into(), None)?],
        NetnsScope::Paths(list) => list.iter().map(|ns| gather_in(ns, label_of(&ns.path))).collect::<Result<_, _>>()?,
        NetnsScope::All => {
            let mut v = vec![gather_here("current".into(), None)?];
            for (label, ns) in all_namespaces() {
                // A process may exit while we look: one vanished namespace must not sink the report.
                match gather_in(&ns, label) {
                    Ok(f) => v.push(f),
                    Err(e) => eprintln!("twreset: warning: skipping {}: {}", ns.path.display(), chain(&e)),
                }
            }
            v
        }
    };
    // A pod's or a container's namespace is named after it.
    let mut facts = facts;
    let names = crate::output::NsNames::resolve();
    for f in &mut facts {
        if let Some(id) = names.identity(f.cookie).filter(|id| !id.is_plain()) {
            if matches!(
                id.kind,
                crate::kernel::identity::Kind::Pod { .. } | crate::kernel::identity::Kind::Container(_)
            ) {
                f.label = id.label();
            }
            f.owner = id.fields().into_iter().filter(|(k, _)| *k != "netns").collect();
        }
    }
    let version = parse::kernel_version(&release);
    let path_facts = paths::PathFacts {
        version,
        caps: &caps,
        cgroup2: crate::kernel::cgroup::v2_root().is_some(),
        id: netns::id_kind(),
    };
    let decided = paths::decide(&path_facts);
    let mut r = report::build(release, caps, cfg.sysctl_paths, recycle, facts);
    r.kernel.paths = Some(decided);
    let text = if cfg.json { report::json(&r) + "\n" } else { report::human(&r) };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|source| DoctorError::Output { source })?;
    Ok(r.exit_code)
}
