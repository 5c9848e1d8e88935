//! Connection churn generator for `cargo xtask bench`: short TCP connections on loopback, plain std.
//!
//! Run it inside a network namespace (`ip netns exec NS churn ...`). It listens on `--ports` server
//! ports (0.0.0.0), and `--threads` client threads connect from `--src` source addresses (bound
//! with IP_BIND_ADDRESS_NO_PORT so the kernel picks the port per 4-tuple, not per source address)
//! to `--dst`, round-robin over sources and ports, until `--seconds` have passed or `--count`
//! connections are done, as fast as it can or paced at `--rate` connections per second overall. Even-indexed ports are client-close (the client ends in TIME_WAIT),
//! odd-indexed ports server-close (the server ends in TIME_WAIT); `--mode client|server` makes
//! every port one kind. Each connection waits for the other side's FIN before it is dropped, so
//! every connection has completed its close (and made its TIME_WAIT socket) when it is counted.
//! Prints one JSON line on stdout.

use std::{
    io::{self, Read},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    os::fd::FromRawFd,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: churn [--threads N] [--seconds S | --count N] [--rate CONN_PER_S] \
[--ports BASE:COUNT] [--src FIRST_IP:COUNT] [--dst IP] [--mode mixed|client|server]";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Mixed,
    Client,
    Server,
}

#[derive(Debug)]
struct Opts {
    threads: usize,
    seconds: f64,
    count: Option<u64>,
    /// Connections per second over all threads (paced), or as fast as possible.
    rate: Option<f64>,
    port_base: u16,
    ports: u16,
    src_first: Ipv4Addr,
    srcs: u32,
    dst: Ipv4Addr,
    mode: Mode,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        threads: 4,
        seconds: 5.0,
        count: None,
        rate: None,
        port_base: 900,
        ports: 8,
        src_first: Ipv4Addr::new(127, 0, 1, 1),
        srcs: 16,
        dst: Ipv4Addr::new(127, 0, 0, 1),
        mode: Mode::Mixed,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {val:?}: {what}");
        match flag.as_str() {
            "--threads" => o.threads = val.parse().map_err(|_| bad("not a number"))?,
            "--seconds" => o.seconds = val.parse().map_err(|_| bad("not a number"))?,
            "--count" => o.count = Some(val.parse().map_err(|_| bad("not a number"))?),
            "--rate" => match val.parse::<f64>() {
                Ok(r) if r > 0.0 => o.rate = Some(r),
                _ => return Err(bad("not a positive number")),
            },
            "--ports" => {
                let (b, n) = val.split_once(':').ok_or_else(|| bad("expected BASE:COUNT"))?;
                o.port_base = b.parse().map_err(|_| bad("bad base port"))?;
                o.ports = n.parse().map_err(|_| bad("bad port count"))?;
            }
            "--src" => {
                let (ip, n) = val.split_once(':').ok_or_else(|| bad("expected FIRST_IP:COUNT"))?;
                o.src_first = ip.parse().map_err(|_| bad("bad IPv4 address"))?;
                o.srcs = n.parse().map_err(|_| bad("bad count"))?;
            }
            "--dst" => o.dst = val.parse().map_err(|_| bad("bad IPv4 address"))?,
            "--mode" => {
                o.mode = match val.as_str() {
                    "mixed" => Mode::Mixed,
                    "client" => Mode::Client,
                    "server" => Mode::Server,
                    _ => return Err(bad("expected mixed, client or server")),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.threads == 0 || o.ports == 0 || o.srcs == 0 {
        return Err("threads, ports and sources must be at least 1".into());
    }
    if u32::from(o.port_base) + u32::from(o.ports) > 65536 {
        return Err("port range runs past 65535".into());
    }
    Ok(o)
}

/// Whether the client closes first on the port with this index.
fn client_closes(mode: Mode, port_index: u16) -> bool {
    match mode {
        Mode::Client => true,
        Mode::Server => false,
        Mode::Mixed => port_index.is_multiple_of(2),
    }
}

/// Raw socket calls std does not offer: bind-before-connect with IP_BIND_ADDRESS_NO_PORT.
mod sys {
    use std::{ffi::c_void, io, net::Ipv4Addr};

    const AF_INET: i32 = 2;
    const SOCK_STREAM_CLOEXEC: i32 = 1 | 0o2000000;
    const IPPROTO_IP: i32 = 0;
    const IP_BIND_ADDRESS_NO_PORT: i32 = 24;

    #[repr(C)]
    struct SockaddrIn {
        family: u16,
        port_be: u16,
        addr: [u8; 4],
        zero: [u8; 8],
    }

    unsafe extern "C" {
        fn socket(domain: i32, ty: i32, proto: i32) -> i32;
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const c_void, len: u32) -> i32;
        fn bind(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        fn connect(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        fn close(fd: i32) -> i32;
    }

    fn sockaddr(ip: Ipv4Addr, port: u16) -> SockaddrIn {
        SockaddrIn { family: AF_INET as u16, port_be: port.to_be(), addr: ip.octets(), zero: [0; 8] }
    }

    /// A connected TCP socket from `src` (port chosen by connect) to `dst:port`; returns its fd.
    pub fn connect_from(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> io::Result<i32> {
        let len = size_of::<SockaddrIn>() as u32;
        // SAFETY: plain syscalls on an fd we own; the sockaddr outlives each call; the fd is
        // closed on every error path and handed to the caller otherwise.
        unsafe {
            let fd = socket(AF_INET, SOCK_STREAM_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let one: i32 = 1;
            let src_sa = sockaddr(src, 0);
            let dst_sa = sockaddr(dst, port);
            let ok = setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, (&one as *const i32).cast(), 4) == 0
                && bind(fd, &src_sa, len) == 0
                && connect(fd, &dst_sa, len) == 0;
            if !ok {
                let e = io::Error::last_os_error();
                close(fd);
                return Err(e);
            }
            Ok(fd)
        }
    }
}

/// Read until the peer's FIN; the connection carries no data, so this is one blocking read.
fn wait_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn serve(listener: TcpListener, client_close: bool, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if client_close {
            wait_eof(&mut s); // the client's FIN first, so the client is the active closer
        }
        drop(s);
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

struct Counters {
    client_close: AtomicU64,
    server_close: AtomicU64,
    errors: AtomicU64,
    issued: AtomicU64,
    /// Connection slots taken so far when paced: the n-th starts n / rate seconds after the start.
    paced: AtomicU64,
}

fn client(o: &Opts, id: usize, c: &Counters, start: Instant, deadline: Instant) {
    let mut k = 0u64;
    loop {
        if let Some(rate) = o.rate {
            let at = start + Duration::from_secs_f64(c.paced.fetch_add(1, Ordering::Relaxed) as f64 / rate);
            if o.count.is_none() && at >= deadline {
                return;
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        if let Some(n) = o.count {
            if c.issued.fetch_add(1, Ordering::Relaxed) >= n {
                return;
            }
        } else if Instant::now() >= deadline {
            return;
        }
        // Every thread walks all ports in turn (so `mixed` alternates close sides within a thread)
        // and moves to the next source address after each round.
        let port_index = ((k + id as u64) % u64::from(o.ports)) as u16;
        let src =
            Ipv4Addr::from(u32::from(o.src_first) + ((k / u64::from(o.ports) + id as u64) % u64::from(o.srcs)) as u32);
        k += 1;
        let fd = match sys::connect_from(src, o.dst, o.port_base + port_index) {
            Ok(fd) => fd,
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if o.count.is_some() {
                    c.issued.fetch_sub(1, Ordering::Relaxed); // retry: a count means successful connections
                }
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        // SAFETY: `fd` is a connected TCP socket that nothing else owns.
        let mut s = unsafe { TcpStream::from_raw_fd(fd) };
        if client_closes(o.mode, port_index) {
            let _ = s.shutdown(Shutdown::Write);
            wait_eof(&mut s);
            c.client_close.fetch_add(1, Ordering::Relaxed);
        } else {
            wait_eof(&mut s);
            c.server_close.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(o: Opts) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for idx in 0..o.ports {
        let port = o.port_base + idx;
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .map_err(|e| io::Error::new(e.kind(), format!("listening on port {port}: {e}")))?;
        let stop = stop.clone();
        let cc = client_closes(o.mode, idx);
        servers.push((port, thread::spawn(move || serve(l, cc, stop))));
    }
    let c = Counters {
        client_close: AtomicU64::new(0),
        server_close: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        paced: AtomicU64::new(0),
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.seconds);
    thread::scope(|s| {
        for id in 0..o.threads {
            let (o, c) = (&o, &c);
            s.spawn(move || client(o, id, c, start, deadline));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for (idx, (port, h)) in servers.into_iter().enumerate() {
        // Wake the accept loop so it sees `stop`: one more ordinary connection of the port's kind,
        // counted like the others (so every traced transition is accounted for).
        let cc = client_closes(o.mode, idx as u16);
        if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            if cc {
                let _ = s.shutdown(Shutdown::Write);
            }
            wait_eof(&mut s);
            if cc { &c.client_close } else { &c.server_close }.fetch_add(1, Ordering::Relaxed);
        }
        let _ = h.join();
    }
    let (cc, sc) = (c.client_close.load(Ordering::Relaxed), c.server_close.load(Ordering::Relaxed));
    println!(
        "{{\"connections\":{},\"client_close\":{cc},\"server_close\":{sc},\"listeners\":{},\"errors\":{},\"seconds\":{secs:.4},\"conn_per_s\":{:.1},\"threads\":{}}}",
        cc + sc,
        o.ports,
        c.errors.load(Ordering::Relaxed),
        (cc + sc) as f64 / secs,
        o.threads
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("churn: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("churn: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args("--threads 2 --count 100 --ports 1000:4 --src 127.0.2.1:3 --dst 127.0.0.9 --mode server"))
            .unwrap();
        assert_eq!((o.threads, o.count, o.port_base, o.ports, o.srcs), (2, Some(100), 1000, 4, 3));
        assert_eq!((o.src_first, o.dst), (Ipv4Addr::new(127, 0, 2, 1), Ipv4Addr::new(127, 0, 0, 9)));
        assert!(o.mode == Mode::Server);
        assert!(parse(&args("--ports 65535:2")).unwrap_err().contains("65535"));
        assert!(parse(&args("--threads 0")).is_err());
        assert!(parse(&args("--mode sideways")).is_err());
        assert!(parse(&args("--threads")).unwrap_err().contains("needs a value"));
        assert!(parse(&args("--bogus 1")).unwrap_err().contains("unknown"));
        assert_eq!(parse(&args("--rate 2000")).unwrap().rate, Some(2000.0));
        assert!(parse(&args("--rate 0")).is_err());
    }

    #[test]
    fn close_sides() {
        assert!(client_closes(Mode::Mixed, 0) && !client_closes(Mode::Mixed, 1));
        assert!(client_closes(Mode::Client, 1) && !client_closes(Mode::Server, 0));
    }
}
