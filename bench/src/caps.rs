//! What the twreset binary under measurement offers, read from its `--help` (other branches add
//! commands), and the command lines the sections run it with.

use std::{ffi::OsString, path::Path, process::Command};

pub struct Caps {
    pub kill: bool,
    kill_yes: bool,
    pub tw: bool,
    pub trace_timewait: bool,
    /// A real `twreset agent` subcommand.
    pub agent_cmd: bool,
    /// The table-keeping command of the "twreset table" variant, with placeholders.
    table: Option<Vec<String>>,
}

fn help(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin).args(args).arg("--help").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Subcommand names from clap's `Commands:` section.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Placeholder for the namespace path in `TWRESET_BENCH_AGENT`.
const NETNS_HOLE: &str = "{netns}";
/// Placeholder for how long a self-ending table mode must keep the table (e.g. `5000ms`).
const SETTLE_HOLE: &str = "{settle}";

impl Caps {
    pub fn detect(bin: &Path) -> Self {
        let subs = subcommands(&help(bin, &[]).unwrap_or_default());
        let has = |s: &str| subs.iter().any(|c| c == s);
        let kill = has("kill");
        let kill_yes = kill && help(bin, &["kill"]).is_some_and(|h| h.contains("--yes"));
        let tw = has("tw");
        // The table-keeping path of one namespace: an explicit command line wins, then a repeating
        // `tw --watch`, then a one-shot `tw` that keeps its table live from kernel events for
        // `--settle` (no per-event output) before printing once. The agent has a variant of its own.
        let table = if let Ok(cmdline) = std::env::var("TWRESET_BENCH_AGENT") {
            Some(cmdline.split_whitespace().map(str::to_owned).collect())
        } else if tw && help(bin, &["tw"]).is_some_and(|h| h.contains("--watch")) {
            Some(vec!["tw".into(), "--watch".into(), "--json".into(), "--netns".into(), NETNS_HOLE.into()])
        } else if tw && help(bin, &["tw"]).is_some_and(|h| h.contains("--settle")) {
            Some(vec![
                "tw".into(),
                "--json".into(),
                "--netns".into(),
                NETNS_HOLE.into(),
                "--settle".into(),
                SETTLE_HOLE.into(),
            ])
        } else {
            None
        };
        let trace_timewait = help(bin, &["trace"]).is_some_and(|h| h.contains("--timewait"));
        Self { kill, kill_yes, tw, trace_timewait, agent_cmd: has("agent"), table }
    }

    /// Arguments of the table-keeping mode for one namespace, if the binary has one.
    pub fn table_cmd(&self, netns: &Path, settle_s: f64) -> Option<Vec<OsString>> {
        self.table.as_ref().map(|a| {
            a.iter()
                .map(|s| match s.as_str() {
                    NETNS_HOLE => netns.as_os_str().to_owned(),
                    SETTLE_HOLE => format!("{}ms", (settle_s * 1000.0) as u64).into(),
                    _ => s.into(),
                })
                .collect()
        })
    }

    /// Whether the table mode ends by itself (after `--settle`) rather than on SIGINT.
    pub fn table_ends(&self) -> bool {
        self.table.as_ref().is_some_and(|a| a.iter().any(|s| s == SETTLE_HOLE))
    }

    /// `twreset agent` on its own metrics port and API socket with an empty config (all
    /// defaults): it covers every namespace, the bench's included, and never meets an installed
    /// agent's port, socket or config.
    pub fn agent_args(&self, port: u16, socket: &Path) -> Vec<OsString> {
        let listen = format!("127.0.0.1:{port}");
        let mut a: Vec<OsString> = ["agent", "--config", "/dev/null", "--metrics-listen", &listen, "--socket"]
            .into_iter()
            .map(OsString::from)
            .collect();
        a.push(socket.as_os_str().to_owned());
        a
    }

    pub fn kill_args(&self, peer: &str, netns: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["kill".into(), peer.into(), "--netns".into(), netns.as_os_str().to_owned()];
        if self.kill_yes {
            a.push("--yes".into());
        }
        a
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "kill": self.kill, "tw": self.tw, "trace_timewait": self.trace_timewait, "agent_command": self.agent_cmd, "table": self.table })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_subcommands() {
        let h = "Usage: twreset <COMMAND>\n\nCommands:\n  trace  Stream\n  kill   Kill\n  help   Print\n\nOptions:\n  -h, --help\n";
        assert_eq!(subcommands(h), ["trace", "kill", "help"]);
    }
}
