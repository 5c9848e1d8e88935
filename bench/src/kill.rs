//! Kill: N TIME_WAIT sockets to one peer plus bystanders to another, killed by `ss -K` and by
//! `twreset kill`, each in its own fresh namespace; wall time, peak RSS and what was left.

use std::{path::Path, process::Command};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Caps, churn, ns::Ns, sys};

/// The peer whose sockets die, and the bystander peer whose sockets must all survive.
pub const PEER: &str = "127.0.0.10";
pub const BYSTANDER: &str = "127.0.0.20";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    Ss,
    Twreset,
}

impl Tool {
    pub fn label(self) -> &'static str {
        match self {
            Tool::Ss => "ss -K",
            Tool::Twreset => "twreset kill",
        }
    }
}

/// One kill of one tool at one size.
#[derive(Debug, Clone, Default)]
pub struct Kill {
    pub n: u64,
    pub before: u64,
    pub bystanders_before: u64,
    pub wall_s: f64,
    pub maxrss_kib: u64,
    /// The bench's own RSS at spawn, below which `maxrss_kib` cannot go.
    pub floor_kib: u64,
    pub left: u64,
    pub bystanders_after: u64,
    pub exit: Option<i32>,
    pub stderr: String,
}

impl Kill {
    pub fn ok(&self) -> bool {
        self.left == 0 && self.bystanders_after == self.bystanders_before && self.exit == Some(0)
    }
    pub fn json(&self) -> Value {
        json!({
            "n": self.n, "before": self.before, "bystanders_before": self.bystanders_before, "wall_s": self.wall_s,
            "peak_rss_kib": self.maxrss_kib, "peak_rss_floor_kib": self.floor_kib, "left_behind": self.left, "bystanders_after": self.bystanders_after,
            "exit_status": self.exit, "stderr": self.stderr.trim(),
        })
    }
}

/// Bystanders: a tenth of N (at least 1,000), to the other peer.
pub fn bystanders(n: u64) -> u64 {
    (n / 10).max(1000)
}

/// Client-close connections: the client side ends in TIME_WAIT with `dst` as its remote address.
/// 16 sources x 8 server ports keep each (source, destination, port) far from its 64k ports.
fn make(churn_bin: &Path, ns: &Ns, dst: &str, n: u64) -> Result<()> {
    let count = n.to_string();
    churn::run(
        churn_bin,
        ns,
        &[
            "--threads",
            "4",
            "--mode",
            "client",
            "--count",
            &count,
            "--dst",
            dst,
            "--src",
            "127.0.1.1:16",
            "--ports",
            "900:8",
        ],
    )?;
    Ok(())
}

fn one(tool: Tool, n: u64, churn_bin: &Path, twreset: &Path, caps: &Caps) -> Result<Kill> {
    let ns = Ns::new("kill")?;
    make(churn_bin, &ns, PEER, n)?;
    make(churn_bin, &ns, BYSTANDER, bystanders(n))?;
    let mut k =
        Kill { n, before: ns.time_wait_to(PEER)?, bystanders_before: ns.time_wait_to(BYSTANDER)?, ..Kill::default() };
    let mut cmd = match tool {
        Tool::Ss => ns.cmd(&["ss", "-K", "state", "time-wait", "dst", PEER]),
        Tool::Twreset => {
            let mut c = Command::new(twreset);
            c.args(caps.kill_args(PEER, &ns.path()));
            c
        }
    };
    let m = sys::run_measured(&mut cmd, false)?;
    sys::check_interrupted()?;
    k.wall_s = m.wall.as_secs_f64();
    k.maxrss_kib = m.maxrss_kib;
    k.floor_kib = m.floor_kib;
    k.exit = m.status.code();
    k.stderr = m.stderr.chars().take(2000).collect();
    k.left = ns.time_wait_to(PEER)?;
    k.bystanders_after = ns.time_wait_to(BYSTANDER)?;
    Ok(k)
}

/// Per size: `ss -K` then `twreset kill` (or why the latter is n/a).
pub struct Outcome {
    pub n: u64,
    pub ss: Result<Kill, String>,
    pub twreset: Result<Kill, String>,
}

pub fn bench(sizes: &[u64], churn_bin: &Path, twreset: &Path, caps: &Caps) -> Result<Vec<Outcome>> {
    let mut outs = Vec::new();
    for &n in sizes {
        let run = |tool: Tool| -> Result<Result<Kill, String>> {
            if tool == Tool::Twreset && !caps.kill {
                return Ok(Err("n/a (not built): this twreset has no `kill`".into()));
            }
            eprintln!("bench: kill {n} TIME_WAIT sockets with {}", tool.label());
            match one(tool, n, churn_bin, twreset, caps) {
                Ok(k) => Ok(Ok(k)),
                Err(e) => {
                    sys::check_interrupted()?;
                    Ok(Err(format!("failed: {e:#}")))
                }
            }
        };
        let ss = run(Tool::Ss)?;
        let tw = run(Tool::Twreset)?;
        outs.push(Outcome { n, ss, twreset: tw });
    }
    Ok(outs)
}

pub fn json(outs: &[Outcome]) -> Value {
    let side = |r: &Result<Kill, String>| match r {
        Ok(k) => k.json(),
        Err(e) => json!({ "na": e }),
    };
    Value::Array(outs.iter().map(|o| json!({ "n": o.n, "ss": side(&o.ss), "twreset": side(&o.twreset) })).collect())
}
