//! Memory per tracked socket: a million TIME_WAIT entries into a fresh table (a hash map's
//! buckets come in powers of two, and a million lies just past a step: about the worst case). The budget is checked on
//! the table's own accounting of its map (capacity times entry size: the same on every machine);
//! the growth of the resident set (/proc/self/statm) is printed for the record only, since it
//! depends on the allocator and the machine (the bench measures it). Each family runs in a fresh
//! child process (this test binary run again). Run with `--nocapture` to see the figures.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use twreset::{
    ports::{Connected, PortSpaces},
    sock::SockKey,
    state::TcpState,
    table::{By, Sort, Table, ViewConfig},
    tw_event::{TwEvent, TwEventKind},
};

const N: u32 = 1_000_000;
/// The budget per tracked socket, beyond the table's fixed base: IPv4 (the agent's bar at a
/// million sockets is 53 for the whole process), IPv6 (a 16-byte remote address in every key).
const MAX_BYTES_PER_SOCKET: [(&str, f64); 2] = [("v4", 45.0), ("v6", 80.0)];

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let resident: u64 = statm.split_whitespace().nth(1).expect("statm field 2").parse().expect("pages");
    // SAFETY: sysconf has no preconditions.
    resident * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn key(i: u32, v6: bool) -> SockKey {
    // Realistic spread: a few local addresses, many peers and ports.
    let (laddr, raddr) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1 + (i % 4) as u16)),
            IpAddr::V6(Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0100_0000u128 + u128::from(i / 20))),
        )
    } else {
        (IpAddr::V4(Ipv4Addr::from(0x0a00_0001 + i % 4)), IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i / 20)))
    };
    SockKey {
        netns_cookie: 4096 + u64::from(i % 3),
        laddr,
        lport: 32768 + (i % 28000) as u16,
        raddr,
        rport: 443 + (i % 20) as u16,
    }
}

fn per_socket(v6: bool) -> f64 {
    let mut table = Table::new();
    // Warm up the allocator and the interners so the base is not counted per socket.
    table.apply(&TwEvent {
        ts_ns: 1,
        key: key(0, v6),
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    });
    let before = rss_bytes();
    let started = Instant::now();
    for i in 1..=N {
        let kind = TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 };
        table.apply(&TwEvent { ts_ns: u64::from(i), key: key(i, v6), kind });
    }
    let inserting = started.elapsed();
    let after = rss_bytes();
    assert_eq!(table.len(), N as usize + 1, "keys must be distinct");
    // Timings are printed for the record, never asserted (machines differ).
    let (connected, ranges) = (Connected::default(), PortSpaces::default());
    let timed = |by| {
        let t = Instant::now();
        let rows =
            table.snapshot(u64::from(N), by, Sort::Count, &ViewConfig::default(), &connected, &ranges).rows.len();
        (t.elapsed(), rows)
    };
    let (peer, peer_rows) = timed(By::Peer);
    let (dest, dest_rows) = timed(By::Dest);
    println!(
        "table speed: {:.0} ns per created event; snapshot of {} sockets: by peer {peer:.1?} ({peer_rows} rows), by dest {dest:.1?} ({dest_rows} rows)",
        inserting.as_nanos() as f64 / f64::from(N),
        table.len()
    );
    let measured = (after - before) as f64 / f64::from(N);
    let map = table.approx_bytes() as f64 / table.len() as f64;
    println!(
        "table memory, {}: {measured:.1} bytes per tracked socket by RSS ({} -> {} KiB for {N}); map alone {:.1} bytes",
        if v6 { "IPv6" } else { "IPv4" },
        before / 1024,
        after / 1024,
        map
    );
    map
}

/// Set in the child: which family to measure.
const CHILD: &str = "TWRESET_TABLE_MEMORY_FAMILY";

#[test]
fn measure_one_family() {
    // Only does work when started by `bytes_per_tracked_socket`.
    let Ok(family) = std::env::var(CHILD) else { return };
    let figure = per_socket(family == "v6");
    println!("BYTES_PER_SOCKET={figure:.1}");
}

fn run_child(family: &str) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "measure_one_family", "--nocapture", "--test-threads=1"])
        .env(CHILD, family)
        .output()
        .expect("run the measuring child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    // libtest prints its "test ... " prefix on the same line.
    for line in stdout.lines().filter_map(|l| l.find("table ").map(|i| &l[i..])) {
        println!("{line}");
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("BYTES_PER_SOCKET="))
        .unwrap_or_else(|| panic!("no figure in {stdout}"))
        .parse()
        .expect("figure")
}

#[test]
fn bytes_per_tracked_socket() {
    for (family, max) in MAX_BYTES_PER_SOCKET {
        let figure = run_child(family);
        assert!(figure <= max, "{family}: the map takes {figure:.1} bytes per tracked socket (budget {max})");
    }
}
