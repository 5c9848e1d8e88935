//! The printed report (markdown tables: details, then one summary with twreset and its peer side
//! by side, their ratio and the distance to each target) and the JSON written next to it.

mod fmt;
mod rows;

use std::fmt::Write as _;

use fmt::{markdown, mib, num, short};
use serde_json::{Value, json};

use super::{
    Plan, agent, kill, table,
    trace::{self, Kind, Mode, PerConn},
};

pub struct Report<'a> {
    pub plan: &'a Plan,
    pub per: PerConn,
    pub traces: &'a [trace::Outcome],
    pub kills: &'a [kill::Outcome],
    pub table: &'a table::Outcome,
    /// The agent section, one outcome per size.
    pub agents: &'a [agent::Outcome],
    pub load_start: String,
    pub load_end: String,
}

impl Report<'_> {
    pub(super) fn variant(&self, k: Kind) -> &trace::Outcome {
        self.traces.iter().find(|o| o.kind == k).expect("every variant has an outcome")
    }

    /// Median over rounds of the variant's rate against its own round's no-tracer runs.
    pub(super) fn pct_of_base(&self, k: Kind) -> Option<f64> {
        let none = self.variant(Kind::NoTracer);
        if k == Kind::NoTracer {
            return none.conn_per_s().map(|_| 100.0);
        }
        self.variant(k).pct_of_none(none)
    }

    /// The median percentage with its interquartile range over rounds, e.g. `91.5 (88.0-93.2)`.
    pub(super) fn pct_with_spread(&self, k: Kind) -> String {
        let med = num(self.pct_of_base(k), 1);
        match self.variant(k).pct_quartiles(self.variant(Kind::NoTracer)) {
            Some((q1, q3)) if k != Kind::NoTracer => format!("{med} ({q1:.1}-{q3:.1})"),
            _ => med,
        }
    }

    fn trace_details(&self) -> String {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let rows: Vec<Vec<String>> = self
            .traces
            .iter()
            .map(|o| {
                if let Some(na) = &o.na {
                    let mut r = vec![o.kind.label().to_owned(), short(na)];
                    r.resize(16, String::new());
                    return r;
                }
                vec![
                    o.kind.label().to_owned(),
                    num(o.conn_per_s(), 0),
                    self.pct_with_spread(o.kind),
                    {
                        let v = o.pct_each_round(self.variant(Kind::NoTracer));
                        if o.kind == Kind::NoTracer {
                            "-".to_owned()
                        } else {
                            v.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(" ")
                        }
                    },
                    num(o.med(|r| Some(r.expected as f64)), 0),
                    if o.kind == Kind::TwresetAgent {
                        // Not transitions: TIME_WAIT creations in the bench namespace, one per connection.
                        format!(
                            "{} tw of {} conn",
                            num(o.med(|r| r.agent.as_ref()?.created.map(|c| c as f64)), 0),
                            num(o.med(|r| r.agent.as_ref().map(|_| r.churn.connections as f64)), 0)
                        )
                    } else {
                        num(o.med(|r| r.seen.map(|s| s as f64)), 0)
                    },
                    {
                        let own = num(o.med(|r| r.own_lost().map(|l| l as f64)), 0);
                        match o.med(|r| r.recovered.map(|n| n as f64)) {
                            _ if o.kind == Kind::BpftracePrint => format!("{own} records"),
                            Some(n) => format!("{own} ({n:.0} nested, recovered)"),
                            None => own,
                        }
                    },
                    match num(o.med(|r| r.missing().map(|m| m as f64)), 0) {
                        m if o.kind == Kind::TwresetAgent => format!("{m} tw"),
                        m => m,
                    },
                    match (o.med(|r| r.chains.map(|c| c.repeated as f64)), o.med(|r| r.chains.map(|c| c.gaps as f64))) {
                        (Some(rep), Some(gaps)) => format!("{rep:.0} / {gaps:.0}"),
                        _ => "n/a".into(),
                    },
                    num(o.tracer_per_m(), 3),
                    num(o.bpf_per_m(), 3),
                    num(o.cpu_per_m(), 3),
                    num(o.host_per_m(), 3),
                    num(mib(o.hwm_kib()), 1),
                    {
                        let each = |mode: Mode| {
                            let v: Vec<String> = o
                                .runs
                                .iter()
                                .filter(|r| r.mode == mode)
                                .map(|r| format!("{:.0}", r.churn.conn_per_s))
                                .collect();
                            v.join(" ")
                        };
                        match each(Mode::Timed) {
                            t if t.is_empty() => each(Mode::Rate),
                            t => format!("{} (bpf_stats on: {t})", each(Mode::Rate)),
                        }
                    },
                    num(o.med(|r| r.others_cpu_s.map(|s| 100.0 * s / r.churn.seconds.max(0.001) / ncpu)), 0),
                ]
            })
            .collect();
        markdown(
            &[
                "variant",
                "conn/s",
                "% of none (quartiles)",
                "% of none, each round",
                "transitions",
                "seen",
                "lost (own count)",
                "missing",
                "repeated / chain gaps",
                "tracer CPU s/M",
                "BPF s/M",
                "total s/M",
                "host s/M (sampled)",
                "peak RSS MiB",
                "conn/s of each run",
                "others' CPU %",
            ],
            &rows,
        )
    }

    fn kill_details(&self) -> String {
        let mut rows = Vec::new();
        for o in self.kills {
            for (tool, r) in [("ss -K", &o.ss), ("twreset kill", &o.twreset)] {
                rows.push(match r {
                    Ok(k) => vec![
                        o.n.to_string(),
                        tool.into(),
                        k.before.to_string(),
                        format!("{:.3}", k.wall_s),
                        format!("{:.1}", k.maxrss_kib as f64 / 1024.0),
                        k.left.to_string(),
                        format!("{} -> {}", k.bystanders_before, k.bystanders_after),
                        k.exit.map_or("signal".into(), |c| c.to_string()),
                    ],
                    Err(e) => {
                        let mut v = vec![o.n.to_string(), tool.into(), short(e)];
                        v.resize(8, String::new());
                        v
                    }
                });
            }
        }
        markdown(
            &["N", "tool", "TIME_WAIT to peer", "wall s", "peak RSS MiB", "left", "bystanders before -> after", "exit"],
            &rows,
        )
    }

    pub fn text(&self) -> String {
        let p = self.plan;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n## twreset bench ({}): {} CPUs, load average {} at start, {} at end\n",
            if p.quick { "--quick" } else { "full" },
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.load_start,
            self.load_end
        );
        let _ = writeln!(
            s,
            "Churn: {} client threads ({}), {} s per run, {} round(s) (medians; \"% of none\" compares each run \
             with the no-tracer runs just before and after it; quartiles over rounds in brackets), BPF time \
             and bpftrace print from the first {} and {}. Transitions per connection (bpftrace count): \
             client-close {:.2}, server-close {:.2}.\n",
            p.trace.threads,
            if p.trace.picked_from.is_empty() {
                "not calibrated".to_owned()
            } else {
                let each: Vec<String> =
                    p.trace.picked_from.iter().map(|(t, v)| format!("{t}: {:.0}", super::mean(v))).collect();
                format!("the fastest with no tracer, conn/s {}", each.join(", "))
            },
            p.trace.seconds,
            p.trace.runs,
            p.trace.timed_runs.min(p.trace.runs),
            p.trace.print_runs.min(p.trace.runs),
            self.per.client_close,
            self.per.server_close
        );
        s += &self.trace_details();
        s += "\n";
        s += &self.kill_details();
        s += "\n";
        let agents: Vec<&agent::Outcome> = self.agents.iter().filter(|a| a.na.as_deref() != Some("skipped")).collect();
        if !agents.is_empty() {
            let rows: Vec<Vec<String>> = agents.iter().flat_map(|a| a.details()).collect();
            s += &markdown(&agent::Outcome::DETAILS_HEADER, &rows);
            s += "\n";
        }
        let rows: Vec<Vec<String>> =
            self.rows().into_iter().map(|r| vec![r.figure, r.twreset, r.peer, r.ratio, r.target, r.verdict]).collect();
        s += &markdown(&["figure", "twreset", "peer", "ratio twreset/peer", "target", "verdict"], &rows);
        s
    }

    pub fn json(&self) -> Value {
        let date = std::process::Command::new("date")
            .args(["-u", "+%FT%TZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        json!({
            "when": date,
            "quick": self.plan.quick,
            "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()), "kernel": kernel,
                         "loadavg_start": self.load_start, "loadavg_end": self.load_end },
            "churn": { "threads": self.plan.trace.threads, "seconds": self.plan.trace.seconds, "runs": self.plan.trace.runs,
                       "timed_runs": self.plan.trace.timed_runs, "print_runs": self.plan.trace.print_runs,
                       "threads_conn_per_s": self.plan.trace.picked_from.iter().map(|(t, v)| json!({ "threads": t, "conn_per_s": v })).collect::<Vec<_>>() },
            "transitions_per_connection": { "client_close": self.per.client_close, "server_close": self.per.server_close },
            "trace": self.traces.iter().map(trace::Outcome::json).collect::<Vec<_>>(),
            "kill": kill::json(self.kills),
            "table": self.table.json(),
            "agent": self.agents.iter().map(agent::Outcome::json).collect::<Vec<_>>(),
            "summary": self.rows().into_iter().map(|r| json!({ "figure": r.figure, "twreset": r.twreset, "peer": r.peer,
                "ratio": r.ratio, "target": r.target, "verdict": r.verdict })).collect::<Vec<_>>(),
        })
    }
}
