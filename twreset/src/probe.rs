//! Owner of the loaded eBPF object: load with kernel offsets, set filters, attach, read loss counters.

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        BtfTracePoint, CgroupSockAddr, Iter, ProgramError, SockOps, links::CgroupAttachMode,
        tp_btf::BtfTracePointLinkId,
    },
};
use ipnet::IpNet;
use twreset_common::{FilterConfig, KernelOffsets, OFFSETS_GLOBAL, PeerKey, filter, stat, tcp_state};

use crate::{
    decode::mapped,
    kernel::{
        btf::{BtfError, KernelBtf, kernel_offsets},
        caps, cgroup,
        kallsyms::{Kallsyms, KallsymsError},
    },
    state::TcpState,
};

/// The eBPF object built by `cargo xtask`, embedded so the binary is self-contained.
pub(crate) static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(env!("TWRESET_EBPF_OBJ"));

/// How often readers drain the ring buffer on their own: the kernel side wakes them only once a
/// quarter MiB is pending (see `maps::send` in twreset-ebpf), so this bounds the latency of a
/// quiet stream.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The state programs, attached in this order to the BTF-typed raw tracepoint (tp_btf)
/// `inet_sock_set_state`: the primary, then the backup that handles what the kernel skipped the
/// primary for (see twreset-ebpf's `programs::state`).
const STATE_PROGRAMS: [&str; 2] = ["set_state", "set_state_nest"];
const STATE_TRACEPOINT: &str = "inet_sock_set_state";
/// The TIME_WAIT lifecycle programs, attached as BTF-typed raw tracepoints of the same names.
const TIMER_PROGRAMS: [&str; 3] = ["timer_start", "timer_expire_entry", "timer_cancel"];
/// The `sock_ops` program: transitions of established sockets, from `tcp_set_state()` itself.
const SOCK_OPS_PROGRAM: &str = "sock_state";
/// The `cgroup/connect4` and `connect6` programs that give every connecting TCP socket to
/// `sock_ops` from birth (`filter::OWN`).
const OWN_PROGRAMS: [&str; 2] = ["connect_own4", "connect_own6"];
/// The `iter/tcp` program that gives existing sockets to `sock_ops` (`filter::OWN`).
const OWN_ITER_PROGRAM: &str = "iter_own";

/// Every raw tracepoint the programs attach to, with the leading `TP_PROTO` arguments they read
/// (checked against the kernel's BTF at load time: a kernel that changed them is refused, not
/// misread).
pub const RAW_TRACEPOINTS: [(&str, &[&str]); 4] = [
    (STATE_TRACEPOINT, &["const struct sock *", "const int", "const int"]),
    ("timer_start", &["struct timer_list *"]),
    ("timer_expire_entry", &["struct timer_list *"]),
    ("timer_cancel", &["struct timer_list *"]),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object into the kernel failed")]
    Load(#[source] aya::EbpfError),
    #[error("reading the kernel's BTF for the TIME_WAIT programs failed")]
    AyaBtf(#[source] aya::BtfError),
    #[error("eBPF program {name} missing from the object")]
    NoProgram { name: &'static str },
    #[error("eBPF map {name} missing from the object")]
    NoMap { name: &'static str },
    #[error("eBPF program {name}: {action} failed")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name}: update failed")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("TIME_WAIT tracking unavailable on this kernel")]
    NoTimewait(#[source] TimewaitUnavailable),
    #[error("reading program info of {name} failed")]
    Info {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the iterator that hands existing sockets to sock_ops failed")]
    Iterate(#[source] std::io::Error),
    #[error("{refused} existing sockets refused the sock_ops flag")]
    OwnRefused { refused: u64 },
    #[error("kernel {release} cannot hand sockets to sock_ops at connect() (needs Linux >= 6.12)")]
    OwnKernel { release: String },
    #[error("no cgroup v2 hierarchy is mounted (sock_ops attaches at its root)")]
    NoCgroup2,
    #[error("the kernel's BTF has no tcp_sock.bpf_sock_ops_cb_flags")]
    NoSockOpsFlags,
    #[error("opening the cgroup v2 root {path}")]
    CgroupOpen {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the TIME_WAIT lifecycle programs cannot work on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum TimewaitUnavailable {
    #[error(transparent)]
    Kallsyms(KallsymsError),
    #[error(transparent)]
    Btf(BtfError),
}

/// What the kernel-side filter keeps. Empty lists mean "no filter on that field".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `None`: every namespace.
    pub netns: Option<Vec<u64>>,
    pub peers: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
    /// A TIME_WAIT table's probe (`filter::TW_TABLE`): with the timer programs, and the
    /// `sock_ops` program reporting only the creations they missed.
    pub tw_table: bool,
}

/// Events the kernel side could not deliver, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    pub ringbuf_full: u64,
    pub recursion_misses: u64,
    pub read_errors: u64,
    pub sent: u64,
    /// Transitions the kernel skipped the primary state program for (they nested inside its run)
    /// that the backup handled: not lost, shown so the recovery is seen working.
    pub recovered: u64,
    /// Transitions the `sock_ops` program reported (in place of the tracepoint, which leaves a
    /// few per million undelivered): established sockets', or with `filter::OWN` all of them
    /// but the ones of sockets older than the trace until they were handed over.
    pub sock_ops: u64,
    /// TIME_WAIT creations no `timer_start` reported, which the `sock_ops` program did
    /// (`filter::TW_TABLE`).
    pub tw_born: u64,
}

impl Loss {
    /// Account `misses` of the attached program `name`. The primary state program's misses less
    /// the backup's recoveries are lost; the backup's own misses are transitions the primary
    /// took. Any other program's misses are lost.
    fn add_misses(&mut self, name: &str, misses: u64, recovered: u64) {
        match name {
            n if n == STATE_PROGRAMS[0] => self.recursion_misses += misses.saturating_sub(recovered),
            n if STATE_PROGRAMS.contains(&n) => {}
            _ => self.recursion_misses += misses,
        }
    }

    /// Events that never reached userspace: a failed kernel read drops the event it was for.
    pub fn lost(&self) -> u64 {
        self.ringbuf_full + self.recursion_misses + self.read_errors
    }

    /// What [`Loss::lost`] is made of, for a message.
    pub fn breakdown(&self) -> String {
        format!(
            "ring buffer full: {}, recursion misses: {}, kernel read errors: {}",
            self.ringbuf_full, self.recursion_misses, self.read_errors
        )
    }
}

pub struct Probe {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    /// The state programs' links, until [`Probe::detach_state`].
    state_links: Vec<(&'static str, BtfTracePointLinkId)>,
    /// Why the TIME_WAIT programs cannot work here, if they cannot.
    timewait_unavailable: Option<TimewaitUnavailable>,
    kallsyms: Option<Kallsyms>,
    /// Kernel-side log records (aya-log), forwarded to `tracing` by [`Probe::flush_logs`].
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// `tcp_sock.bpf_sock_ops_cb_flags` is known (the `sock_ops` source can work).
    sock_ops_flags_known: bool,
    /// The `sock_ops` program is attached and the filter says so (`filter::SOCK_OPS`).
    sock_ops_on: bool,
    /// The timer programs are attached and the filter says so (`filter::TIMERS`).
    timers_on: bool,
    /// The connect programs are attached and the filter says so (`filter::OWN`).
    own_on: bool,
    /// The state programs were detached after the hand-over ([`Probe::detach_state`]).
    state_detached: bool,
    /// `iter_own` is loaded.
    own_iter_loaded: bool,
}

impl Probe {
    /// Check privileges, mount tracefs if needed, read offsets from BTF, load (not attach).
    pub fn load() -> Result<Self, ProbeError> {
        caps::require_bpf()?;
        let btf = KernelBtf::load()?;
        let mut off = kernel_offsets(&btf)?;
        off.own_possible = u32::from(own_possible());
        let (state, timers) = RAW_TRACEPOINTS.split_at(1);
        btf.check_raw_tracepoint(state[0].0, state[0].1)?;
        let (kallsyms, timewait_unavailable) = match timers
            .iter()
            .try_for_each(|(name, args)| btf.check_raw_tracepoint(name, args))
            .map_err(TimewaitUnavailable::Btf)
            .and_then(|_| Kallsyms::load().map_err(TimewaitUnavailable::Kallsyms))
            .and_then(|k| timewait_symbols(&k, &mut off).map(|_| k).map_err(TimewaitUnavailable::Kallsyms))
        {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e)),
        };
        let mut ebpf =
            EbpfLoader::new().override_global(OFFSETS_GLOBAL, &off, true).load(EBPF_OBJ).map_err(ProbeError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("kernel-side logging unavailable: {e}");
                None
            }
        };
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            state_links: Vec::new(),
            timewait_unavailable,
            kallsyms,
            logger,
            sock_ops_flags_known: off.tcp_cb_flags != 0,
            sock_ops_on: false,
            timers_on: false,
            own_on: false,
            state_detached: false,
            own_iter_loaded: false,
        })
    }

    /// Forward pending kernel-side log records to `tracing` (stderr, `TWRESET_LOG`).
    pub fn flush_logs(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Kernel symbols, available when TIME_WAIT tracking is.
    pub fn kallsyms(&self) -> Option<&Kallsyms> {
        self.kallsyms.as_ref()
    }

    /// Attach the TIME_WAIT lifecycle programs (BTF-typed raw tracepoints `timer_start`,
    /// `timer_expire_entry`, `timer_cancel`, filtered in BPF on `tw_timer_handler`), all but
    /// those named in `skip` (fault injection for tests; empty in normal use).
    pub fn attach_timewait(&mut self, skip: &[&str]) -> Result<(), ProbeError> {
        if let Some(e) = self.timewait_unavailable.take() {
            return Err(ProbeError::NoTimewait(e));
        }
        let btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;
        for name in TIMER_PROGRAMS.into_iter().filter(|n| !skip.contains(n)) {
            self.attach_btf(name, name, &btf)?;
        }
        let cfg = self.config()?;
        self.write_config(&FilterConfig { flags: cfg.flags | filter::TIMERS, ..cfg })?;
        self.timers_on = true;
        Ok(())
    }

    /// Replace the kernel-side filter; safe while attached (the config word is written last).
    pub fn set_filters(&mut self, f: &Filters) -> Result<(), ProbeError> {
        {
            let mut m: HashMap<_, u64, u8> =
                HashMap::try_from(self.map_mut("NETNS_FILTER")?).map_err(map_err("NETNS_FILTER"))?;
            let old: Vec<u64> = m.keys().filter_map(Result::ok).collect();
            for k in old {
                m.remove(&k).map_err(map_err("NETNS_FILTER"))?;
            }
            for c in f.netns.iter().flatten() {
                m.insert(c, &1, 0).map_err(map_err("NETNS_FILTER"))?;
            }
        }
        {
            let mut m: HashMap<_, u16, u8> =
                HashMap::try_from(self.map_mut("PORT_FILTER")?).map_err(map_err("PORT_FILTER"))?;
            let old: Vec<u16> = m.keys().filter_map(Result::ok).collect();
            for k in old {
                m.remove(&k).map_err(map_err("PORT_FILTER"))?;
            }
            for p in &f.ports {
                m.insert(p, &1, 0).map_err(map_err("PORT_FILTER"))?;
            }
        }
        {
            let mut m: LpmTrie<_, PeerKey, u8> =
                LpmTrie::try_from(self.map_mut("PEER_FILTER")?).map_err(map_err("PEER_FILTER"))?;
            let old: Vec<Key<PeerKey>> = m.keys().filter_map(Result::ok).collect();
            for k in old {
                m.remove(&k).map_err(map_err("PEER_FILTER"))?;
            }
            for net in &f.peers {
                let extra = if net.addr().is_ipv4() { 96 } else { 0 };
                let key = Key::new(u32::from(net.prefix_len()) + extra, mapped(net.network()));
                m.insert(&key, &1, 0).map_err(map_err("PEER_FILTER"))?;
            }
        }
        let mut cfg = FilterConfig::default();
        if let Some(list) = &f.netns {
            cfg.flags |= filter::NETNS;
            if let [one] = list.as_slice() {
                cfg.netns_cookie = *one;
            }
        }
        if !f.peers.is_empty() {
            cfg.flags |= filter::PEER;
        }
        if !f.ports.is_empty() {
            cfg.flags |= filter::PORT;
        }
        if f.tw_table {
            cfg.flags |= filter::TW_TABLE;
        }
        if !f.states.is_empty() {
            cfg.flags |= filter::STATE;
            cfg.state_mask = f.states.iter().fold(0, |m, s| m | 1 << s.number());
        }
        const { assert!(tcp_state::MAX < 32) };
        if self.sock_ops_on {
            cfg.flags |= filter::SOCK_OPS;
        }
        if self.timers_on {
            cfg.flags |= filter::TIMERS;
        }
        if self.own_on {
            cfg.flags |= filter::OWN;
        }
        if self.state_detached {
            cfg.flags |= filter::STATE_DETACHED;
        }
        self.write_config(&cfg)
    }

    fn write_config(&mut self, cfg: &FilterConfig) -> Result<(), ProbeError> {
        let mut c: Array<_, FilterConfig> = Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        c.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    /// Before [`Probe::attach_state`]: attach the `sock_ops` program at the cgroup v2 root and
    /// hand it the transitions of established sockets (`filter::SOCK_OPS`; the tracepoint
    /// programs leave those to it). With `filter::TW_TABLE` it reports only the TIME_WAIT
    /// creations the timer programs missed; then attach it after them. It turns `BPF_SOCK_OPS_STATE_CB` on for each socket that
    /// becomes established from now on; older sockets stay with the tracepoint. The flag is set
    /// before the program attaches and the tracepoint programs attach after it, so no
    /// transition ever sees the two sides disagree (which would lose or double it). On error
    /// nothing changed and the tracepoint reports everything.
    pub fn attach_sock_ops(&mut self) -> Result<(), ProbeError> {
        if !self.sock_ops_flags_known {
            return Err(ProbeError::NoSockOpsFlags);
        }
        debug_assert!(!self.attached.contains(&STATE_PROGRAMS[0]), "attach sock_ops before the state programs");
        let path = cgroup::v2_root().ok_or(ProbeError::NoCgroup2)?;
        let dir = std::fs::File::open(&path).map_err(|source| ProbeError::CgroupOpen { path, source })?;
        let before = self.config()?;
        self.write_config(&FilterConfig { flags: before.flags | filter::SOCK_OPS, ..before })?;
        let attached = self.load_attach_sock_ops(dir);
        if attached.is_err() {
            self.write_config(&before)?;
        }
        attached?;
        self.sock_ops_on = true;
        Ok(())
    }

    /// After [`Probe::attach_sock_ops`]: give every TCP socket created from now on to `sock_ops`
    /// from birth (`filter::OWN`).
    pub fn attach_own(&mut self) -> Result<(), ProbeError> {
        // `bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)` is Linux 6.12's; before, the programs
        // load but the flag would not be set.
        if !own_possible() {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            return Err(ProbeError::OwnKernel { release: release.trim().to_owned() });
        }
        let path = cgroup::v2_root().ok_or(ProbeError::NoCgroup2)?;
        let dir = std::fs::File::open(&path).map_err(|source| ProbeError::CgroupOpen { path, source })?;
        let before = self.config()?;
        self.write_config(&FilterConfig { flags: before.flags | filter::OWN, ..before })?;
        for name in OWN_PROGRAMS {
            let prog: &mut CgroupSockAddr = self.program_mut(name)?;
            prog.load().map_err(|source| ProbeError::Program { name, action: "load", source })?;
            prog.attach(&dir, CgroupAttachMode::Single).map_err(|source| ProbeError::Program {
                name,
                action: "attach",
                source,
            })?;
        }
        self.own_on = true;
        Ok(())
    }

    fn load_attach_sock_ops(&mut self, cgroup_root: std::fs::File) -> Result<(), ProbeError> {
        let name = SOCK_OPS_PROGRAM;
        let prog: &mut SockOps = self.program_mut(name)?;
        prog.load().map_err(|source| ProbeError::Program { name, action: "load", source })?;
        // aya attaches through a bpf_link, which the kernel always treats as allowing other
        // programs beside it; it refuses the ALLOW_MULTI flag there (EINVAL).
        prog.attach(cgroup_root, CgroupAttachMode::Single).map_err(|source| ProbeError::Program {
            name,
            action: "attach",
            source,
        })?;
        Ok(())
    }

    /// The program `name` of the object, as the program type `T` it must be.
    fn program_mut<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, ProbeError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(ProbeError::NoProgram { name })?
            .try_into()
            .map_err(|source| ProbeError::Program { name, action: "type check", source })
    }

    fn config(&self) -> Result<FilterConfig, ProbeError> {
        let map = self.ebpf.map("CONFIG").ok_or(ProbeError::NoMap { name: "CONFIG" })?;
        let c: Array<_, FilterConfig> = Array::try_from(map).map_err(map_err("CONFIG"))?;
        c.get(&0, 0).map_err(map_err("CONFIG"))
    }

    /// Attach the state programs to `inet_sock_set_state` in [`STATE_PROGRAMS`] order: the
    /// kernel calls a tracepoint's programs in attach order, which their protocol relies on.
    /// Detached when the probe is dropped.
    pub fn attach_state(&mut self) -> Result<(), ProbeError> {
        let btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;
        for name in STATE_PROGRAMS {
            let link = self.attach_btf(name, STATE_TRACEPOINT, &btf)?;
            self.state_links.push((name, link));
        }
        Ok(())
    }

    /// With [`Probe::attach_own`]: give the TCP sockets of the calling thread's namespace that
    /// existed before to `sock_ops` (`iter_own`). Returns how many full sockets it handed over;
    /// an error when any refused (then the tracepoint must stay).
    pub fn own_existing(&mut self) -> Result<u64, ProbeError> {
        let name = OWN_ITER_PROGRAM;
        if !self.own_iter_loaded {
            let btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;
            let prog: &mut Iter = self.program_mut(name)?;
            prog.load("tcp", &btf).map_err(|source| ProbeError::Program { name, action: "load", source })?;
            self.own_iter_loaded = true;
        }
        let prog: &mut Iter = self.program_mut(name)?;
        let link = prog.attach().map_err(|source| ProbeError::Program { name, action: "attach", source })?;
        let link = prog.take_link(link).map_err(|source| ProbeError::Program { name, action: "link", source })?;
        let mut file = link.into_file().map_err(|e| ProbeError::Iterate(std::io::Error::other(e)))?;
        let mut done = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut done).map_err(ProbeError::Iterate)?;
        let refused = done.iter().filter(|&&b| b == 0).count() as u64;
        if refused > 0 {
            return Err(ProbeError::OwnRefused { refused });
        }
        Ok(done.len() as u64)
    }

    /// Detach the state programs from the tracepoint once every socket they would report is
    /// `sock_ops`' (see [`Probe::own_existing`]). Their counters stay readable. Then `sock_ops`
    /// stops leaving them notes (`filter::STATE_DETACHED`).
    pub fn detach_state(&mut self) -> Result<(), ProbeError> {
        for (name, link) in std::mem::take(&mut self.state_links) {
            let prog: &mut BtfTracePoint = self.program_mut(name)?;
            prog.detach(link).map_err(|source| ProbeError::Program { name, action: "detach", source })?;
        }
        let before = self.config()?;
        self.write_config(&FilterConfig { flags: before.flags | filter::STATE_DETACHED, ..before })?;
        self.state_detached = true;
        Ok(())
    }

    /// Load (verify) the BTF-typed raw tracepoint program `name` for `tracepoint` and attach it.
    fn attach_btf(
        &mut self,
        name: &'static str,
        tracepoint: &str,
        btf: &aya::Btf,
    ) -> Result<BtfTracePointLinkId, ProbeError> {
        let prog: &mut BtfTracePoint = self.program_mut(name)?;
        prog.load(tracepoint, btf).map_err(|source| ProbeError::Program { name, action: "load", source })?;
        let link = prog.attach().map_err(|source| ProbeError::Program { name, action: "attach", source })?;
        self.attached.push(name);
        Ok(link)
    }

    /// The event ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(ProbeError::NoMap { name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name: "EVENTS", source })
    }

    /// Kernel-side loss: ring-buffer reserve failures and read errors (per-CPU counters, summed)
    /// plus the attached programs' `recursion_misses` from the kernel's program info. For the
    /// state programs that is the primary's misses less what the backup recovered; the backup's
    /// own misses are transitions the primary handled (it nested on the backup, not on itself).
    pub fn loss(&self) -> Result<Loss, ProbeError> {
        let map = self.ebpf.map("STATS").ok_or(ProbeError::NoMap { name: "STATS" })?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name: "STATS", source })?;
        let sum = |i: u32| -> u64 { stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        let mut loss = Loss {
            ringbuf_full: sum(stat::RINGBUF_FULL),
            read_errors: sum(stat::READ_ERROR),
            sent: sum(stat::SENT),
            recursion_misses: 0,
            recovered: sum(stat::RECOVERED),
            sock_ops: sum(stat::SOCK_OPS),
            tw_born: sum(stat::TW_BORN),
        };
        for &name in &self.attached {
            let prog = self.ebpf.program(name).ok_or(ProbeError::NoProgram { name })?;
            let fd = prog.fd().map_err(|source| ProbeError::Program { name, action: "fd", source })?;
            let misses =
                recursion_misses(fd.as_fd().as_raw_fd()).map_err(|source| ProbeError::Info { name, source })?;
            loss.add_misses(name, misses, loss.recovered);
        }
        Ok(loss)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, ProbeError> {
        self.ebpf.map_mut(name).ok_or(ProbeError::NoMap { name })
    }
}

/// A map error of `name`, for `map_err`.
fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// `bpf_prog_info.recursion_misses` via `BPF_OBJ_GET_INFO_BY_FD` (aya's ProgramInfo omits it).
fn recursion_misses(prog_fd: i32) -> Result<u64, std::io::Error> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr =
        InfoAttr { bpf_fd: prog_fd as u32, info_len: size_of_val(&info) as u32, info: (&raw mut info) as u64 };
    // SAFETY: attr points at a zeroed, correctly sized bpf_prog_info that outlives the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw mut attr, size_of::<InfoAttr>() as u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// Can sockets be given to `sock_ops` at `connect()` (`filter::OWN`)? That needs
/// `bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)` from cgroup sock_addr programs, Linux 6.12's: the
/// programs load on older kernels but the flag is not set, so only the version can tell.
pub fn own_possible() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    crate::kernel::procfs::kernel_version(release.trim()).is_some_and(|v| v >= (6, 12))
}

/// The TIME_WAIT programs need these kernel functions' addresses.
pub const TIMEWAIT_SYMBOLS: [&str; 2] = ["tw_timer_handler", "inet_twsk_deschedule_put"];
/// The timer function on the stack under `inet_twsk_deschedule_put`'s cancel, for when that is
/// inlined into its caller (Debian's 6.1 inlines it into `inet_twsk_purge`): the caller is then
/// the frame above this one. `__timer_delete_sync` where the kernel has it out of line (6.1
/// stable kernels with the timer-shutdown backport, whose `timer_delete_sync` and
/// `timer_shutdown_sync` are tail calls into it and never on the stack), else
/// `timer_shutdown_sync` (6.2 on), `timer_delete_sync` or `del_timer_sync` (5.10). The first one
/// the kernel has is used; none is fine (no fallback).
pub const SHUTDOWN_SYMBOLS: [&str; 4] =
    ["__timer_delete_sync", "timer_shutdown_sync", "timer_delete_sync", "del_timer_sync"];

/// Fill the function addresses the TIME_WAIT programs need.
fn timewait_symbols(k: &Kallsyms, off: &mut KernelOffsets) -> Result<(), KallsymsError> {
    off.tw_timer_fn = k.range(TIMEWAIT_SYMBOLS[0])?.0;
    (off.desched_start, off.desched_end) = k.range(TIMEWAIT_SYMBOLS[1])?;
    (off.shutdown_start, off.shutdown_end) =
        SHUTDOWN_SYMBOLS.iter().find_map(|name| k.range(name).ok()).unwrap_or((0, 0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_are_lost_unless_recovered() {
        let mut l = Loss::default();
        // Full trace: primary, backup, and a timer program.
        l.add_misses("set_state", 9, 7);
        l.add_misses("set_state_nest", 5, 7);
        l.add_misses("timer_start", 2, 7);
        assert_eq!((l.recursion_misses, l.lost()), (2 + 2, 4));
        // A table's probe: timer programs only; each of their misses is lost.
        let mut t = Loss::default();
        t.add_misses("timer_cancel", 1, 0);
        t.add_misses("timer_start", 3, 0);
        assert_eq!((t.recursion_misses, t.lost()), (4, 4));
        // The two counters are read a moment apart: more recovered than missed is not negative.
        let mut r = Loss::default();
        r.add_misses("set_state", 1, 2);
        assert_eq!(r.lost(), 0);
    }

    #[test]
    fn a_failed_kernel_read_is_a_lost_event() {
        let l = Loss {
            ringbuf_full: 1,
            recursion_misses: 2,
            read_errors: 4,
            sent: 100,
            recovered: 16,
            sock_ops: 32,
            tw_born: 64,
        };
        assert_eq!(l.lost(), 7);
        assert_eq!(l.breakdown(), "ring buffer full: 1, recursion misses: 2, kernel read errors: 4");
    }
}
