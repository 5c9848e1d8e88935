//! `twreset top` in a real terminal (tmux, 80x24): the peers a test made, with their counts; a key
//! changes the grouping; quitting gives the terminal back as it was.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use twreset_tests::{Closer, NetNs, SsSocket, bin, connections, privileged};

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
        let deadline = Instant::now() + Duration::from_secs(20);
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

/// TIME_WAIT sockets per `ss` (unfiltered: with a state filter `ss` drops the State column that
/// `SsSocket::parse` expects, so `NetNs::time_wait` finds nothing).
fn time_wait(ns: &NetNs) -> Vec<SsSocket> {
    ns.ss(&[]).into_iter().filter(|s| s.state == "TIME-WAIT").collect()
}

#[test]
#[ignore = "needs the kernel TIME_WAIT feed (live::kernel_feed) wired"]
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
    assert_eq!(time_wait(&ns).len(), 8);

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

    tmux.keys("g");
    let screen = tmux.wait_for("the prefix grouping", |s| s.contains("by prefix"));
    assert_eq!(row(&screen, "10.79.0.0/24").map(|r| r[1]), Some("8"), "{screen}");

    tmux.keys("q");
    let screen = tmux.wait_for("the shell again", |s| s.contains("TOP-EXITED"));
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert!(screen.lines().any(|l| l.trim() == "icanon"), "terminal left in raw mode:\n{screen}");
    assert!(!screen.contains("by prefix"), "alternate screen not left:\n{screen}");
}
