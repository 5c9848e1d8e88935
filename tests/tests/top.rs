//! `twreset top` in a real terminal (tmux, 80x24): the peers a test made, with their counts; a key
//! changes the grouping; quitting gives the terminal back as it was.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use twreset_tests::{Closer, NetNs, bin, connections, privileged};

/// A detached tmux server of its own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str, cmd: &str) -> Self {
        let t = Self { socket: format!("twr-{tag}-{}", std::process::id()) };
        t.run(&["new-session", "-d", "-x", "80", "-y", "24", cmd]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", keys]);
    }

    /// Wait until the screen satisfies `ok`, or panic showing the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + twreset_tests::poll_deadline();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "screen never showed {what}:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").status();
    }
}

/// The row of `label` split into words (box-drawing borders dropped).
fn row<'a>(screen: &'a str, label: &str) -> Option<Vec<&'a str>> {
    let line = screen.lines().find(|l| l.contains(&format!("│{label} ")) || l.contains(&format!(" {label} ")))?;
    Some(line.split(|c: char| c.is_whitespace() || c == '│').filter(|w| !w.is_empty()).collect())
}

#[test]
fn top_shows_peers_regroups_and_restores_the_terminal() {
    if !privileged("top_shows_peers_regroups_and_restores_the_terminal") {
        return;
    }
    let ns = NetNs::new("top");
    for a in ["10.79.0.1/32", "10.79.0.2/32", "10.79.0.3/32"] {
        ns.add_lo_addr(a);
    }
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let client = Some("10.79.0.1".parse().unwrap());
    ns.run(|| connections(sa("10.79.0.2:7101"), client, 6, Closer::Client));
    ns.run(|| connections(sa("10.79.0.3:7102"), client, 2, Closer::Client));
    assert_eq!(ns.time_wait().len(), 8);

    let cmd = format!(
        "{} top --netns {} --interval 250ms; echo TOP-EXITED $?; stty -a | grep -o -- '-\\?icanon '; sleep 60",
        bin().display(),
        ns.path().display()
    );
    let tmux = Tmux::start("top", &cmd);
    let screen = tmux.wait_for("both peers", |s| row(s, "10.79.0.2").is_some() && row(s, "10.79.0.3").is_some());
    assert_eq!(row(&screen, "10.79.0.2").unwrap()[1], "6", "{screen}");
    assert_eq!(row(&screen, "10.79.0.3").unwrap()[1], "2", "{screen}");
    assert!(screen.lines().next().unwrap().starts_with("tw 8 "), "{screen}");
    assert!(screen.contains("by peer"), "{screen}");

    // Live, not just seeded: new TIME_WAIT sockets show up while it runs.
    ns.run(|| connections(sa("10.79.0.3:7103"), client, 3, Closer::Client));
    let screen = tmux.wait_for("the new sockets", |s| row(s, "10.79.0.3").is_some_and(|r| r[1] == "5"));
    assert!(screen.lines().next().unwrap().starts_with("tw 11 "), "{screen}");
    assert_eq!(ns.time_wait().len(), 11);

    tmux.keys("g");
    let screen = tmux.wait_for("the prefix grouping", |s| s.contains("by prefix"));
    assert_eq!(row(&screen, "10.79.0.0/24").map(|r| r[1]), Some("11"), "{screen}");

    tmux.keys("q");
    // `stty` prints `icanon` (cooked, as before) or `-icanon` (left raw) after the exit line.
    let screen = tmux.wait_for("the shell again", |s| {
        s.contains("TOP-EXITED") && s.lines().any(|l| l.trim().trim_start_matches('-') == "icanon")
    });
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert!(screen.lines().any(|l| l.trim() == "icanon"), "terminal left in raw mode:\n{screen}");
    assert!(!screen.contains("by prefix"), "alternate screen not left:\n{screen}");
}

#[test]
fn top_reconciles_under_churn_with_zero_drift() {
    if !privileged("top_reconciles_under_churn_with_zero_drift") {
        return;
    }
    let ns = NetNs::new("top-churn");
    for a in ["10.79.1.1/32", "10.79.1.2/32", "fd79:1::1/128", "fd79:1::2/128"] {
        ns.add_lo_addr(a);
    }
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let cmd =
        format!("{} top --netns {} --interval 250ms --reconcile 500ms; sleep 60", bin().display(), ns.path().display());
    let tmux = Tmux::start("top-churn", &cmd);
    tmux.wait_for("the screen", |s| s.starts_with("tw 0 "));
    // Reconciles (every 500 ms) run while sockets come and go: none may count as drift. A fixed
    // amount of work (ROUNDS x 60 connections, well under any tw limit), spread by a short pause
    // per round so that reconciles fall inside it on a fast machine too; a slow one only takes
    // longer.
    const ROUNDS: u16 = 40;
    for round in 0..ROUNDS {
        let port = 7300 + round;
        ns.run(|| {
            connections(sa(&format!("10.79.1.2:{port}")), Some("10.79.1.1".parse().unwrap()), 30, Closer::Client);
            connections(sa(&format!("[fd79:1::2]:{port}")), Some("fd79:1::1".parse().unwrap()), 30, Closer::Server);
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    let round = ROUNDS;
    ns.wait_quiescent();
    let want = ns.time_wait().len();
    assert_eq!(want, usize::from(ROUNDS) * 60, "every connection left one TIME_WAIT socket");
    // The header must come to equal ss, with nothing drifted or lost, once reconciles pass.
    let screen = tmux.wait_for("the settled total", |s| s.starts_with(&format!("tw {want} ")));
    let head = screen.lines().next().unwrap();
    let field = |name: &str| -> u64 {
        let words: Vec<&str> = head.split_whitespace().collect();
        let i = words.iter().position(|w| *w == name).unwrap_or_else(|| panic!("no {name} in {head}"));
        words[i + 1].parse().unwrap()
    };
    assert_eq!(field("overflow"), 0, "{head}");
    // Without lost events nothing may drift. This kernel reports BPF recursion misses under load
    // (tracepoint programs nested on one CPU): then each loss must have forced a resync. It also
    // drops about one TIME_WAIT creation in 100k with no counter at all (docs/internals/known-gaps.md,
    // "Events no counter sees"); `top`'s 500 ms reconciles fix such a socket, as drift, before a quiet
    // namespace could be compared with the kernel's count. One of those is tolerated here (this
    // run makes 2,400 connections); the table logic going wrong drifts by many.
    if field("lost") == 0 {
        assert!(field("drift") <= 1, "{head}");
    } else {
        assert!(field("resyncs") > 0, "lost events without a resync: {head}");
    }
    eprintln!("top_reconciles_under_churn_with_zero_drift: {want} TIME_WAIT sockets over {round} rounds: {head}");
}
