//! Capability probes: each one tries the real thing (load a program, send a SOCK_DESTROY) and
//! reports what the kernel said, errno included. Kernel I/O; checked by tests/tests/doctor.rs.

use std::{io, path::Path};

use crate::{
    diag,
    doctor::{
        btf_func::{self, BtfFuncError},
        model::{Capabilities, Capability},
    },
    kernel::{btf, caps, kallsyms::Kallsyms, procfs as parse, tracefs},
};

const BPF_PROG_LOAD: libc::c_long = 5;
/// What `twreset trace` loads for `inet_sock_set_state`.
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;
/// Kernel functions an fentry probe may attach to (first one found in BTF wins).
const FENTRY_TARGETS: [&str; 3] = ["tcp_v4_connect", "tcp_close", "tcp_rcv_state_process"];

/// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_obj_fd` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<ProgLoadAttr>() == 120);

/// `r0 = 0; exit`: the smallest program every verifier accepts.
const RETURN_ZERO: [u64; 2] =
    [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];

/// Load a trivial program; Ok(()) when the kernel accepted it (the fd is closed at once).
fn prog_load(prog_type: u32, attach_type: u32, attach_btf_id: u32) -> io::Result<()> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: RETURN_ZERO.len() as u32,
        insns: RETURN_ZERO.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        attach_btf_id,
        ..Default::default()
    };
    attr.prog_name[..13].copy_from_slice(b"twreset_probe");
    // SAFETY: bpf(2) reads size_of::<ProgLoadAttr>() bytes of attr and the buffers it points to,
    // which all outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &raw mut attr, size_of::<ProgLoadAttr>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is the program fd the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Symbolic errno name for the few errors these probes meet, else the number.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::E2BIG => "E2BIG",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        _ => return format!("errno {e}"),
    }
    .to_owned()
}

fn failed(what: &str, e: &io::Error) -> Capability {
    let errno = e.raw_os_error().map(errno_name);
    Capability::no(errno.as_deref(), format!("{what} failed: {e}"))
}

fn probe_btf(path: &Path) -> Capability {
    if path.exists() {
        Capability::yes(path.display().to_string())
    } else {
        Capability::no(Some("ENOENT"), format!("{} does not exist", path.display()))
    }
}

/// Mount points of tracefs in a /proc/self/mountinfo text (field 5 is the mount point, the
/// file system type follows the ` - ` separator).
fn tracefs_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "tracefs").then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
        })
        .collect()
}

fn probe_tracefs() -> Capability {
    // mountinfo rather than the events directory: /sys/kernel/tracing is root-only, and a
    // non-root run must not report "not mounted" for "not readable".
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map(|t| tracefs_mounts(&t)).unwrap_or_default();
    match (mounts.is_empty(), tracefs::mounted()) {
        (_, true) => Capability::yes("events found under /sys/kernel/tracing or /sys/kernel/debug/tracing"),
        (false, false) => Capability::yes(format!("mounted at {} (not readable by this user)", mounts.join(", "))),
        (true, false) => Capability::no(
            None,
            "no tracefs in /proc/self/mountinfo (twreset does not need it; tools such as bpftrace do: \
             mount -t tracefs nodev /sys/kernel/tracing)",
        ),
    }
}

/// The tracepoint the state programs attach to, as the tp_btf probe's target.
const STATE_TRACEPOINT: &str = "inet_sock_set_state";

/// Can a BTF-typed raw tracepoint (tp_btf) program load, as every twreset program is?
fn probe_tracepoint(path: &Path) -> Capability {
    let btf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Capability::no(None, format!("tp_btf needs kernel BTF: cannot read {}: {e}", path.display())),
    };
    let id = match btf_func::tracepoint_id(&btf, STATE_TRACEPOINT) {
        Ok(Some(id)) => id,
        Ok(None) => return Capability::no(None, format!("no btf_trace_{STATE_TRACEPOINT} in kernel BTF")),
        Err(e) => return Capability::no(None, format!("cannot walk kernel BTF {}: {e}", path.display())),
    };
    let what = format!("BPF_PROG_LOAD of a tp_btf program on {STATE_TRACEPOINT}");
    match prog_load(BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, id) {
        Ok(()) => Capability::yes(format!("{what} succeeded")),
        Err(e) => failed(&what, &e),
    }
}

/// BTF id of the first kernel function of [`FENTRY_TARGETS`] present in `btf`.
fn fentry_target(btf: &[u8]) -> Result<Option<(&'static str, u32)>, BtfFuncError> {
    for name in FENTRY_TARGETS {
        if let Some(id) = btf_func::func_id(btf, name)? {
            return Ok(Some((name, id)));
        }
    }
    Ok(None)
}

fn probe_fentry(path: &Path) -> Capability {
    let btf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Capability::no(None, format!("fentry needs kernel BTF: cannot read {}: {e}", path.display())),
    };
    let (name, id) = match fentry_target(&btf) {
        Ok(Some(t)) => t,
        Ok(None) => return Capability::no(None, format!("none of {FENTRY_TARGETS:?} found in kernel BTF")),
        Err(e) => return Capability::no(None, format!("cannot walk kernel BTF {}: {e}", path.display())),
    };
    match prog_load(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, id) {
        Ok(()) => Capability::yes(format!("BPF_PROG_LOAD of an fentry program on {name} succeeded")),
        Err(e) => failed(&format!("BPF_PROG_LOAD of an fentry program on {name}"), &e),
    }
}

fn probe_sock_destroy(release: &str) -> Capability {
    match diag::Diag::open().and_then(|mut d| diag::probe_destroy(&mut d)) {
        Ok(errno) => sock_destroy_verdict(errno, release),
        Err(e) => Capability::no(None, format!("SOCK_DESTROY probe failed: {e:#}")),
    }
}

/// What the kernel's answer to the SOCK_DESTROY probe means on kernel `release`.
fn sock_destroy_verdict(errno: i32, release: &str) -> Capability {
    let too_old = parse::kernel_version(release).is_some_and(|v| v < (6, 0));
    match errno {
        libc::ENOENT if too_old => Capability::no(
            None,
            format!("SOCK_DESTROY is enabled but kernel {release} < 6.0 cannot destroy TIME_WAIT sockets"),
        ),
        libc::ENOENT => Capability::yes(format!(
            "SOCK_DESTROY of a nonexistent socket answered ENOENT (destroy handler present), kernel {release} >= 6.0"
        )),
        libc::EOPNOTSUPP => Capability::no(
            Some("EOPNOTSUPP"),
            "SOCK_DESTROY answered EOPNOTSUPP: kernel built without CONFIG_INET_DIAG_DESTROY",
        ),
        e => Capability::no(
            Some(&errno_name(e)),
            format!("SOCK_DESTROY probe answered {}", io::Error::from_raw_os_error(e)),
        ),
    }
}

fn probe_timewait_timer() -> Capability {
    use crate::probe::{SHUTDOWN_SYMBOLS, TIMEWAIT_SYMBOLS};
    let found = Kallsyms::load().and_then(|k| {
        TIMEWAIT_SYMBOLS.iter().try_for_each(|name| k.range(name).map(|_| ()))?;
        Ok(SHUTDOWN_SYMBOLS.iter().find(|name| k.range(name).is_ok()))
    });
    match found {
        Ok(cancel) => Capability::yes(format!(
            "{} found in /proc/kallsyms (timer cancel: {})",
            TIMEWAIT_SYMBOLS.join(", "),
            cancel.map_or("none found", |n| n)
        )),
        Err(e) => Capability::no(None, e.to_string()),
    }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Probe everything, in the calling thread's namespace.
pub fn capabilities(release: &str) -> Capabilities {
    let btf_path = btf::vmlinux_path();
    let bpf_tracepoint = probe_tracepoint(&btf_path);
    let mut bpf_fentry = probe_fentry(&btf_path);
    if !bpf_tracepoint.available && !bpf_fentry.available {
        // EPERM for both says "no privilege", not "this kernel refuses trampolines".
        bpf_fentry.detail.push_str("; inconclusive: even a tp_btf program is refused, so this is missing privilege");
    }
    let mut sock_destroy_time_wait = probe_sock_destroy(release);
    if sock_destroy_time_wait.available && caps::require_net_admin().is_err() {
        sock_destroy_time_wait.detail.push_str("; killing needs CAP_NET_ADMIN (run as root)");
    }
    Capabilities {
        btf: probe_btf(&btf_path),
        tracefs: probe_tracefs(),
        bpf_tracepoint,
        bpf_fentry,
        sock_destroy_time_wait,
        timewait_timer: probe_timewait_timer(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(9999), "errno 9999");
    }

    #[test]
    fn sock_destroy_verdicts() {
        let yes = sock_destroy_verdict(libc::ENOENT, "6.18.44-fc-v445");
        assert!(yes.available && yes.errno.is_none(), "{yes:?}");
        let old = sock_destroy_verdict(libc::ENOENT, "5.15.0-91-generic");
        assert!(!old.available && old.detail.contains("< 6.0"), "{old:?}");
        let off = sock_destroy_verdict(libc::EOPNOTSUPP, "6.18.44");
        assert_eq!((off.available, off.errno.as_deref()), (false, Some("EOPNOTSUPP")));
        assert!(off.detail.contains("CONFIG_INET_DIAG_DESTROY"));
        let perm = sock_destroy_verdict(libc::EPERM, "6.18.44");
        assert_eq!((perm.available, perm.errno.as_deref()), (false, Some("EPERM")));
    }

    #[test]
    fn tracefs_mount_points() {
        let t = "22 27 0:20 / /proc rw,nosuid - proc proc rw\n\
                 40 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:15 - tracefs tracefs rw\n\
                 41 22 0:13 / /mnt/x rw - ext4 /dev/vda rw\n";
        assert_eq!(tracefs_mounts(t), ["/sys/kernel/tracing"]);
        assert!(tracefs_mounts("").is_empty());
    }

    #[test]
    fn attr_offsets_match_the_kernel_abi() {
        // include/uapi/linux/bpf.h, BPF_PROG_LOAD member of union bpf_attr.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_obj_fd), 112);
    }
}
