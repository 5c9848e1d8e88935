//! `--method rst`: kill with a RST carrying exactly the sequence number the kernel expects.
//!
//! The numbers are read from the kernel, not guessed: an `iter/tcp` BPF program walks the
//! namespace's sockets and reports `rcv_nxt`/`snd_nxt` (`skc_tw_rcv_nxt` for TIME_WAIT). The RST
//! goes out of a raw socket in the target namespace. A TIME_WAIT socket dies on a RST whose
//! sequence is its `rcv_nxt` (when `tcp_rfc1337=0`); an established socket too (RFC 5961 exact
//! match), and its peer gets a RST at our `snd_nxt`, so both ends are reset. Afterwards one
//! sock_diag dump tells which sockets really died.

use std::{
    collections::HashMap,
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::{Ebpf, EbpfLoader, programs::Iter};
use twreset_common::{
    AF_INET,
    iter::{IterOffsets, OFFSETS_GLOBAL, SeqRecord},
};

use crate::{
    diag::{Diag, Entry, Outcome},
    kernel::btf::{BtfError, KernelBtf},
    kill::{
        Method,
        killer::{KillError, Killer},
        packet,
    },
    sock::{DiagSocket, SockKey},
};

const PROGRAM: &str = "iter_tcp";

pub fn offsets(btf: &KernelBtf) -> Result<IterOffsets, BtfError> {
    let sc = |m| btf.offset("sock_common", m);
    Ok(IterOffsets {
        daddr: sc("skc_daddr")?,
        rcv_saddr: sc("skc_rcv_saddr")?,
        dport: sc("skc_dport")?,
        num: sc("skc_num")?,
        family: sc("skc_family")?,
        state: sc("skc_state")?,
        v6_daddr: sc("skc_v6_daddr")?,
        v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        tw_rcv_nxt: sc("skc_tw_rcv_nxt")?,
        tw_snd_nxt: sc("skc_tw_snd_nxt")?,
        rcv_nxt: btf.offset("tcp_sock", "rcv_nxt")?,
        snd_nxt: btf.offset("tcp_sock", "snd_nxt")?,
    })
}

/// 4-tuple as the iterator and the dump both see it.
type Tuple4 = (IpAddr, u16, IpAddr, u16);

fn tuple(k: &SockKey) -> Tuple4 {
    (k.laddr, k.lport, k.raddr, k.rport)
}

/// Parse the iterator's output (a stream of [`SeqRecord`]s) into (rcv_nxt, snd_nxt) per tuple.
pub fn parse_records(bytes: &[u8]) -> HashMap<Tuple4, (u32, u32)> {
    let ip = |family: u16, raw: [u8; 16]| -> IpAddr {
        if family == AF_INET {
            Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()
        } else {
            Ipv6Addr::from(raw).to_canonical()
        }
    };
    bytes
        .as_chunks::<{ size_of::<SeqRecord>() }>()
        .0
        .iter()
        .map(|c| {
            // SAFETY: exact-size chunk of a plain repr(C) integer struct, read unaligned.
            let r: SeqRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            ((ip(r.family, r.saddr), r.sport, ip(r.family, r.daddr), r.dport), (r.rcv_nxt, r.snd_nxt))
        })
        .collect()
}

/// The object with the iterator program loaded, kept for the life of the process: loading it
/// parses the kernel's BTF twice and creates every map of the object (tens of milliseconds here,
/// seconds in a VM under TCG), and the agent's relief may kill every cycle. Each read attaches a
/// fresh link (the walk covers the namespace current when its file is made), closed after it.
static LOADED: std::sync::Mutex<Option<Ebpf>> = std::sync::Mutex::new(None);

fn load_iter() -> Result<Ebpf, KillError> {
    let btf = KernelBtf::load().map_err(|source| KillError::Btf { source })?;
    let off = offsets(&btf).map_err(|source| KillError::Btf { source })?;
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &off, true)
        .load(crate::probe::EBPF_OBJ)
        .map_err(|source| KillError::BpfLoad { source })?;
    let kbtf =
        aya::Btf::from_sys_fs().map_err(|source| KillError::Iter { what: "kernel BTF", source: source.into() })?;
    let prog: &mut Iter = ebpf.program_mut(PROGRAM).ok_or(KillError::NoProgram)?.try_into().map_err(
        |source: aya::programs::ProgramError| KillError::Iter { what: "program type", source: source.into() },
    )?;
    prog.load("tcp", &kbtf).map_err(|source| KillError::Iter { what: "load", source: source.into() })?;
    Ok(ebpf)
}

/// Load the iterator now, so the first kill does not wait for it (the agent's relief, on kernels
/// whose TIME_WAIT sockets only an RST can kill: [`needed_for_time_wait`]).
pub fn preload() -> Result<(), KillError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if loaded.is_none() {
        *loaded = Some(load_iter()?);
    }
    Ok(())
}

/// Before Linux 6.0 SOCK_DESTROY cannot kill a TIME_WAIT socket: `--method auto` sends the RST
/// (the kill itself still finds out by trying, see `kill::auto`).
pub fn needed_for_time_wait() -> bool {
    crate::kernel::procfs::running_version().is_some_and(|v| v < (6, 0))
}

/// Run the iterator in the calling thread's namespace (the iterator walks the namespace that is
/// current when its file is created).
fn read_sequences() -> Result<HashMap<Tuple4, (u32, u32)>, KillError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if loaded.is_none() {
        *loaded = Some(load_iter()?);
    }
    let ebpf = loaded.as_mut().expect("loaded just above");
    let prog: &mut Iter = ebpf.program_mut(PROGRAM).ok_or(KillError::NoProgram)?.try_into().map_err(
        |source: aya::programs::ProgramError| KillError::Iter { what: "program type", source: source.into() },
    )?;
    let link = prog.attach().map_err(|source| KillError::Iter { what: "attach", source: source.into() })?;
    let link = prog.take_link(link).map_err(|source| KillError::Iter { what: "link", source: source.into() })?;
    let mut file = link.into_file().map_err(|source| KillError::Iter { what: "iterator", source: source.into() })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|source| KillError::Iter { what: "read", source: source.into() })?;
    Ok(parse_records(&bytes))
}

/// Raw sockets (IPPROTO_RAW: we write the IP header) of the calling thread's namespace.
struct RawSender {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl RawSender {
    fn fd(&mut self, v4: bool) -> io::Result<i32> {
        let (slot, family) = if v4 { (&mut self.v4, libc::AF_INET) } else { (&mut self.v6, libc::AF_INET6) };
        if slot.is_none() {
            // SAFETY: plain socket(2), owned at once.
            let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fresh fd.
            *slot = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(slot.as_ref().expect("just set").as_raw_fd())
    }

    fn send(&mut self, src: SocketAddr, dst: SocketAddr, seq: u32) -> io::Result<()> {
        let pkt = packet::rst(src, dst, seq).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = self.fd(dst.is_ipv4())?;
        // SAFETY: zeroed sockaddr_storage is a valid "no address"; we fill the family's part.
        let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match dst.ip() {
            IpAddr::V4(ip) => {
                let sin = (&raw mut to).cast::<libc::sockaddr_in>();
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                unsafe {
                    (*sin).sin_family = libc::AF_INET as u16;
                    (*sin).sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
                }
                size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(ip) => {
                let sin6 = (&raw mut to).cast::<libc::sockaddr_in6>();
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    (*sin6).sin6_family = libc::AF_INET6 as u16;
                    (*sin6).sin6_addr.s6_addr = ip.octets();
                }
                size_of::<libc::sockaddr_in6>()
            }
        };
        // SAFETY: valid buffer and address for the duration of the call.
        let n = unsafe { libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&raw const to).cast(), len as u32) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// RST injection with kernel-read sequence numbers.
pub struct RstKiller;

impl Killer for RstKiller {
    fn method(&self) -> Method {
        Method::Rst
    }

    fn kill(&mut self, targets: &[Entry], progress: &mut dyn FnMut(usize)) -> Result<Vec<Outcome>, KillError> {
        let t0 = std::time::Instant::now();
        let seqs = read_sequences()?;
        let t1 = std::time::Instant::now();
        let mut raw = RawSender { v4: None, v6: None };
        let mut out = Vec::with_capacity(targets.len());
        for (i, e) in targets.iter().enumerate() {
            let k = &e.sock.key;
            let (local, remote) = (SocketAddr::new(k.laddr, k.lport), SocketAddr::new(k.raddr, k.rport));
            let outcome = match seqs.get(&tuple(k)) {
                None => Outcome::Gone,
                Some(&(rcv_nxt, snd_nxt)) => {
                    // The peer first: once the local socket is gone nothing would answer it.
                    let peer = if e.sock.timewait { Ok(()) } else { raw.send(local, remote, snd_nxt) };
                    match peer.and_then(|_| raw.send(remote, local, rcv_nxt)) {
                        Ok(()) => Outcome::Killed, // confirmed below
                        Err(err) => Outcome::Failed { errno: err.raw_os_error().unwrap_or(libc::EIO) },
                    }
                }
            };
            out.push(outcome);
            if i % 1024 == 1023 {
                progress(i + 1);
            }
        }
        progress(targets.len());
        let t2 = std::time::Instant::now();
        confirm(targets, &mut out)?;
        tracing::debug!(sockets = seqs.len(), iter = ?(t1 - t0), send = ?(t2 - t1), confirm = ?t2.elapsed(), "rst");
        Ok(out)
    }
}

/// A sent RST is only a claim: a fresh dump says which sockets are really gone. Loopback RSTs
/// are processed in softirq, which can lag under load, so survivors get a few short retries.
/// A killed socket frees its port, and a busy client may take it for a new connection to the
/// same peer at once: the dump then shows the same 4-tuple again. So a socket with the target's
/// tuple counts as the target only if it can be: the same cookie where both have one, else for a
/// TIME_WAIT target a TIME_WAIT socket whose timer has no more time left than the target's had
/// at the plan (a new one starts a full 60 s).
fn confirm(targets: &[Entry], out: &mut [Outcome]) -> Result<(), KillError> {
    let mut diag = Diag::open().map_err(|source| KillError::Destroy { source })?;
    for attempt in 0..10 {
        let mut alive: HashMap<Tuple4, Vec<DiagSocket>> = HashMap::new();
        for e in diag.dump(&[]).map_err(|source| KillError::Destroy { source })? {
            alive.entry(tuple(&e.sock.key)).or_default().push(e.sock);
        }
        let mut survivors = 0;
        for (e, o) in targets.iter().zip(out.iter_mut()) {
            if matches!(o, Outcome::Killed | Outcome::Survived) {
                let same = alive.get(&tuple(&e.sock.key)).is_some_and(|l| l.iter().any(|a| may_be(&e.sock, a)));
                *o = if same { Outcome::Survived } else { Outcome::Killed };
                survivors += usize::from(*o == Outcome::Survived);
            }
        }
        if survivors == 0 || attempt == 9 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether `alive` (same 4-tuple, in a later dump) may be the socket `target` was (see
/// [`confirm`]).
fn may_be(target: &DiagSocket, alive: &DiagSocket) -> bool {
    if target.cookie != 0 && alive.cookie != 0 {
        return target.cookie == alive.cookie;
    }
    if target.timewait {
        return alive.timewait && alive.expires_ms <= target.expires_ms;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TcpState;

    #[test]
    fn parses_records() {
        let mut a = SeqRecord {
            family: AF_INET,
            sport: 40000,
            dport: 80,
            state: 6,
            rcv_nxt: 11,
            snd_nxt: 22,
            ..Default::default()
        };
        a.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        a.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut b =
            SeqRecord { family: twreset_common::AF_INET6, sport: 1, dport: 2, rcv_nxt: 5, ..Default::default() };
        b.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        b.daddr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
        let mut bytes = Vec::new();
        for r in [a, b] {
            // SAFETY: test-only view of a repr(C) value.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&raw const r).cast::<u8>(), size_of::<SeqRecord>())
            });
        }
        bytes.push(0); // a trailing partial record is ignored
        let m = parse_records(&bytes);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(m[&(ip("10.0.0.1"), 40000, ip("10.0.0.2"), 80)], (11, 22));
        assert_eq!(m[&(ip("fd00::1"), 1, ip("10.0.0.9"), 2)], (5, 0));
    }

    #[test]
    fn offsets_from_running_kernel() {
        let path = crate::kernel::btf::vmlinux_path();
        if !path.exists() {
            assert!(std::env::var("CI").is_err(), "CI needs kernel BTF");
            return;
        }
        let off = offsets(&KernelBtf::from_path(&path).unwrap()).unwrap();
        // docs/internals/kernel-abi.md, Linux 6.18: tw rcv_nxt 124, snd_nxt 132; dport 12, num 14.
        assert_eq!((off.dport, off.num, off.tw_rcv_nxt, off.tw_snd_nxt), (12, 14, 124, 132));
        assert!(off.rcv_nxt > 1000 && off.snd_nxt > 1000);
    }

    #[test]
    fn a_new_socket_on_a_killed_ones_tuple_is_not_a_survivor() {
        let key = SockKey {
            netns_cookie: 1,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 40000,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 80,
        };
        let sock = |timewait, expires_ms, cookie| DiagSocket {
            key,
            state: if timewait { TcpState::TimeWait } else { TcpState::Established },
            timewait,
            expires_ms,
            cookie,
            inode: 0,
            uid: 0,
        };
        // A TIME_WAIT target with 30 s left: a TIME_WAIT socket with 59 s is a new one.
        assert!(!may_be(&sock(true, 30_000, 0), &sock(true, 59_000, 0)));
        assert!(may_be(&sock(true, 30_000, 0), &sock(true, 29_900, 0)));
        // A new established connection on the tuple is not the TIME_WAIT target.
        assert!(!may_be(&sock(true, 30_000, 0), &sock(false, 0, 7)));
        // Cookies decide where both have one.
        assert!(may_be(&sock(false, 0, 7), &sock(false, 0, 7)));
        assert!(!may_be(&sock(false, 0, 7), &sock(false, 0, 8)));
    }
}
