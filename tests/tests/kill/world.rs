//! Test world for `twreset kill`: namespaces with TIME_WAIT and established bystanders, fast
//! socket factories, and the before/after `ss` comparison every kill test uses.

use std::{
    collections::BTreeSet,
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use twreset_tests::{Closer, NetNs, SsSocket, connections, listen, ndjson, twreset};

pub type Set = BTreeSet<SsSocket>;

pub const C: &str = "10.77.0.10";
pub const C2: &str = "10.77.0.11";
pub const S1: &str = "10.77.0.100";
pub const S2: &str = "10.77.0.200";
pub const C6: &str = "fd77::2";
pub const S6: &str = "fd77::1";

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// `n` established connections to `server`; both ends are returned and stay open.
pub fn established(server: SocketAddr, client: &str, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let l = listen(server).unwrap_or_else(|e| panic!("listen {server}: {e}; {}", ss_here()));
    (0..n)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None).unwrap();
            s.bind(&sa(client, 0).into()).unwrap();
            s.connect(&server.into()).unwrap();
            (TcpStream::from(s), l.accept().unwrap().0)
        })
        .collect()
}

/// `ss -tan` of the calling thread's namespace, for failure messages.
pub fn ss_here() -> String {
    let out = std::process::Command::new("ss").args(["-tanp"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Client-closed connections from explicit client ports (no ephemeral-port search, so tens of
/// thousands are quick): every client socket ends in TIME_WAIT. Returns the client addresses.
pub fn fast_time_wait(server: SocketAddr, clients: &[&str], n: usize, first_port: u16) -> Vec<SocketAddr> {
    let l = listen(server).unwrap();
    (0..n)
        .map(|i| {
            let local = sa(clients[i % clients.len()], first_port + (i / clients.len()) as u16);
            let s = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None).unwrap();
            s.bind(&local.into()).unwrap_or_else(|e| panic!("bind {local}: {e}"));
            s.connect(&server.into()).unwrap();
            let (mut a, _) = l.accept().unwrap();
            // The client closes first and the server waits for its FIN, so the client (and only
            // it) ends in TIME_WAIT even when softirq processing lags under load.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0);
            drop(a);
            drop(s);
            local
        })
        .collect()
}

/// A namespace with addresses on `lo`, TIME_WAIT sockets to several peers and ports (IPv4 and
/// IPv6, client- and server-side), and established connections held open by the returned value.
pub fn populate(ns: &NetNs) -> Vec<(TcpStream, TcpStream)> {
    for a in [C, C2, S1, S2] {
        ns.add_lo_addr(&format!("{a}/24"));
    }
    ns.add_lo_addr(&format!("{S6}/64"));
    ns.add_lo_addr(&format!("{C6}/64"));
    ns.run(|| {
        connections(sa(S1, 80), ip(C), 4, Closer::Client);
        connections(sa(S1, 443), ip(C), 3, Closer::Client);
        connections(sa(S2, 80), ip(C), 3, Closer::Client);
        connections(sa(S1, 80), ip(C2), 2, Closer::Client);
        // Server side in TIME_WAIT: local S1:8080, remote C:ephemeral.
        connections(sa(S1, 8080), ip(C), 3, Closer::Server);
        connections(sa(S6, 80), ip(C6), 3, Closer::Client);
        connections(sa(S6, 443), ip(C6), 2, Closer::Client);
        let mut held = established(sa(S1, 80), C, 2);
        held.extend(established(sa(S1, 443), C, 1));
        held.extend(established(sa(S6, 80), C6, 1));
        held
    })
}

pub struct World {
    pub a: NetNs,
    pub b: NetNs,
    _held: Vec<(TcpStream, TcpStream)>,
    pub audit: std::path::PathBuf,
}

pub fn world(tag: &str) -> World {
    let (a, b) = (NetNs::new(tag), NetNs::new(&format!("{tag}b")));
    let mut held = populate(&a);
    held.extend(populate(&b));
    settle(&a);
    settle(&b);
    let audit = std::env::temp_dir().join(format!("twreset-audit-{}.log", a.name));
    World { a, b, _held: held, audit }
}

/// Wait until two listings agree: closing server sockets are freed in softirq, which lags under
/// load, and a sock_diag dump can skip entries while sockets are being freed.
pub fn settle(ns: &NetNs) {
    let mut last = snapshot(ns);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(30));
        let now = snapshot(ns);
        if now == last {
            return;
        }
        last = now;
    }
    panic!("{}: socket listing never settled", ns.name);
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
    }
}

pub fn snapshot(ns: &NetNs) -> Set {
    ns.ss(&[]).into_iter().collect()
}

pub fn tw(s: &SsSocket) -> bool {
    s.state == "TIME-WAIT"
}

pub fn in_net(addr: &SocketAddr, cidr: &str) -> bool {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    net.contains(&addr.ip())
}

pub fn kill_in(w: &World, args: &[&str]) -> (Option<i32>, String, String) {
    let path = w.a.path();
    let mut full = vec!["kill", "--netns", path.to_str().unwrap(), "--audit-log", w.audit.to_str().unwrap()];
    full.extend_from_slice(args);
    twreset(&full)
}

/// Run `kill args` in namespace A; exactly the sockets `selected` picks from `ss` must die, in A
/// only, and the JSON summary must agree.
pub fn check_kill(w: &World, args: &[&str], selected: impl Fn(&SsSocket) -> bool) -> Set {
    let (before_a, before_b) = (snapshot(&w.a), snapshot(&w.b));
    let expect: Set = before_a.iter().filter(|s| selected(s)).cloned().collect();
    assert!(!expect.is_empty(), "scenario selects nothing for {args:?}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, err) = kill_in(w, &json_args);
    assert_eq!(code, Some(0), "kill {args:?}: {err}");
    let lines = ndjson(&out);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["killed"], expect.len() as u64, "{out}");
    assert_eq!(summary["failed"], 0);
    // Each socket says which method killed it: with the default (auto) SOCK_DESTROY, except
    // TIME_WAIT sockets before Linux 6.0, which the kernel cannot destroy: the exact RST.
    let auto = !args.contains(&"--method");
    for l in lines.iter().filter(|l| l["type"] == "socket") {
        let want = if l["timewait"] == true && !twreset_tests::kernel_at_least(6, 0) { "rst" } else { "destroy" };
        let method = l["method"].as_str().unwrap_or_else(|| panic!("no method: {l}"));
        assert!(!auto || method == want, "kill {args:?}: {l} killed by {method}, expected {want}");
    }
    let after_a = snapshot(&w.a);
    let want: Set = before_a.difference(&expect).cloned().collect();
    let (after_b, want_b) = (snapshot(&w.b), before_b);
    if twreset_tests::poll_deadline() > twreset_tests::POLL_DEADLINE {
        // A slowed-down machine (qemu TCG): building the world can take longer than TIME_WAIT
        // lasts, so bystander TIME_WAIT sockets may expire during the kill. Then the killed
        // sockets are the ones the tool reports, exactly, and only TIME_WAIT bystanders may go.
        let reported: BTreeSet<(String, String)> = lines
            .iter()
            .filter(|l| l["type"] == "socket" && l["result"] == "killed")
            .map(|l| (l["local"].as_str().unwrap().to_owned(), l["remote"].as_str().unwrap().to_owned()))
            .collect();
        let expected: BTreeSet<(String, String)> =
            expect.iter().map(|s| (s.local.to_string(), s.remote.to_string())).collect();
        assert_eq!(reported, expected, "kill {args:?}: the sockets reported killed");
        for (after, want, ns) in [(&after_a, &want, "A"), (&after_b, &want_b, "B")] {
            assert!(after.is_subset(want), "kill {args:?}: namespace {ns} lost more: {:#?}", want.difference(after));
            let gone: Vec<_> = want.difference(after).filter(|s| s.state != "TIME-WAIT").collect();
            assert!(gone.is_empty(), "kill {args:?}: namespace {ns} lost non-TIME_WAIT bystanders {gone:#?}");
        }
        return expect;
    }
    assert_eq!(after_a, want, "kill {args:?}: namespace A must lose exactly {expect:#?}");
    assert_eq!(after_b, want_b, "the second namespace must be untouched");
    expect
}
