//! Running the churn generator (`bin/churn.rs`, built next to the bench) inside a bench namespace.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{mean, ns::Ns, sys};

/// What one churn run reports (its JSON line).
#[derive(Debug, Clone, Default)]
pub struct Churned {
    pub connections: u64,
    pub client_close: u64,
    pub server_close: u64,
    pub listeners: u64,
    pub errors: u64,
    pub seconds: f64,
    pub conn_per_s: f64,
    /// CPU time the churn process used (its own and the loopback softirq work done in it).
    pub cpu_s: f64,
}

impl Churned {
    pub fn json(&self) -> Value {
        serde_json::json!({
            "connections": self.connections, "client_close": self.client_close, "server_close": self.server_close,
            "listeners": self.listeners, "connect_errors": self.errors, "seconds": self.seconds, "conn_per_s": self.conn_per_s, "cpu_s": self.cpu_s,
        })
    }
}

fn parse(line: &str) -> Result<Churned> {
    let v: Value = serde_json::from_str(line.trim()).with_context(|| format!("churn printed {line:?}"))?;
    let u = |k: &str| v[k].as_u64().with_context(|| format!("churn output lacks {k}"));
    let f = |k: &str| v[k].as_f64().with_context(|| format!("churn output lacks {k}"));
    Ok(Churned {
        connections: u("connections")?,
        client_close: u("client_close")?,
        server_close: u("server_close")?,
        listeners: u("listeners")?,
        errors: u("errors")?,
        seconds: f("seconds")?,
        conn_per_s: f("conn_per_s")?,
        cpu_s: 0.0,
    })
}

/// Run `churn args...` inside `ns` and parse its report.
pub fn run(bin: &std::path::Path, ns: &Ns, args: &[&str]) -> Result<Churned> {
    let mut cmd = ns.cmd(&[bin.to_str().context("churn path is not UTF-8")?]);
    cmd.args(args);
    let m = sys::run_measured(&mut cmd, true)?;
    sys::check_interrupted()?;
    if !m.status.success() {
        bail!("churn {args:?} failed ({}): {}", m.status, m.stderr.trim());
    }
    let mut c = parse(m.stdout.lines().last().unwrap_or(""))?;
    c.cpu_s = m.cpu_s;
    Ok(c)
}

/// Conn/s of each run, per client thread count.
pub type Rates = Vec<(usize, Vec<f64>)>;

/// The maximum churn this machine sustains: each candidate client thread count `reps` times,
/// interleaved, with no tracer. Returns the fastest by mean conn/s, and every candidate's rates.
/// (Too few threads leave a CPU idle while every thread waits on a handoff; too many spend it
/// switching.)
pub fn fastest(bin: &std::path::Path, candidates: &[usize], secs: f64, reps: usize) -> Result<(usize, Rates)> {
    let mut rates: Rates = candidates.iter().map(|&t| (t, Vec::new())).collect();
    let secs = secs.to_string();
    for _ in 0..reps {
        for (threads, v) in &mut rates {
            let ns = Ns::new("maxchurn")?;
            v.push(run(bin, &ns, &["--threads", &threads.to_string(), "--seconds", &secs])?.conn_per_s);
        }
    }
    let best = rates.iter().max_by(|a, b| mean(&a.1).total_cmp(&mean(&b.1))).map_or(4, |(t, _)| *t);
    let each: Vec<String> = rates.iter().map(|(t, v)| format!("{t} threads {:.0}", mean(v))).collect();
    eprintln!("bench: maximum churn: {} conn/s; using {best} threads", each.join(", "));
    Ok((best, rates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_line() {
        let c = parse(r#"{"connections":10,"client_close":4,"server_close":6,"listeners":8,"errors":0,"seconds":1.5,"conn_per_s":6.7,"threads":4}"#).unwrap();
        assert_eq!((c.connections, c.client_close, c.server_close, c.listeners), (10, 4, 6, 8));
        assert!(parse("garbage").is_err());
    }
}
