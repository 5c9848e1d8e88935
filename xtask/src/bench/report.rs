//! The printed report (markdown tables: details, then one summary with twreset and its peer side
//! by side, their ratio and the distance to each target) and the JSON written next to it.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    Plan, agent,
    kill::{self, Kill},
    table,
    trace::{self, Kind, Mode, PerConn},
};

pub struct Report<'a> {
    pub plan: &'a Plan,
    pub per: PerConn,
    pub traces: &'a [trace::Outcome],
    pub kills: &'a [kill::Outcome],
    pub table: &'a table::Outcome,
    pub agent: &'a agent::Outcome,
    pub load_start: String,
    pub load_end: String,
}

/// One summary line.
struct Row {
    figure: String,
    twreset: String,
    peer: String,
    ratio: String,
    target: String,
    verdict: String,
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// A ratio with its suffix, or just `n/a`.
fn times(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}x{suffix}"))
}

/// The short form of why a side could not run (the full reason is in the JSON).
fn short(reason: &str) -> String {
    if reason.starts_with("n/a (not built)") { "n/a (not built)".into() } else { reason.chars().take(60).collect() }
}

fn mib(kib: Option<f64>) -> Option<f64> {
    kib.map(|k| k / 1024.0)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn at_least(v: Option<f64>, target: f64, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v >= target => format!("met ({}{unit} >= {target}{unit})", trim(v)),
        Some(v) => format!("missed by {}{unit}", trim(target - v)),
    }
}

/// A verdict on a median, saying so when the target lies between the rounds' quartiles: the
/// next run may well come out on the other side.
fn within_spread(verdict: String, quartiles: Option<(f64, f64)>, target: f64) -> String {
    match quartiles {
        Some((q1, q3)) if q1 <= target && target <= q3 => format!("{verdict}; {target} is within the quartiles"),
        _ => verdict,
    }
}

/// A median count: whole, or halfway between two runs' counts (shown as such, not rounded to 0).
fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), trim)
}

/// Whole numbers without decimals (lost events), others with two.
fn trim(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Verdict of "less than the peer".
fn below(v: Option<f64>, peer: Option<f64>) -> String {
    match (v, peer) {
        (Some(a), Some(b)) if a < b => format!("met ({:.0}% below)", (1.0 - a / b) * 100.0),
        (Some(a), Some(b)) => format!("missed by {:.3} s/M", a - b),
        _ => "n/a".into(),
    }
}

fn at_most(v: Option<f64>, target: f64, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v <= target => format!("met ({}{unit} <= {target}{unit})", trim(v)),
        Some(v) => format!("missed by {}{unit}", trim(v - target)),
    }
}

fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, " {c:<width$} |", width = w[i]);
        }
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(w.iter().map(|&n| "-".repeat(n)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

impl Report<'_> {
    fn variant(&self, k: Kind) -> &trace::Outcome {
        self.traces.iter().find(|o| o.kind == k).expect("every variant has an outcome")
    }

    /// Median over rounds of the variant's rate against its own round's no-tracer runs.
    fn pct_of_base(&self, k: Kind) -> Option<f64> {
        let none = self.variant(Kind::NoTracer);
        if k == Kind::NoTracer {
            return none.conn_per_s().map(|_| 100.0);
        }
        self.variant(k).pct_of_none(none)
    }

    /// The median percentage with its interquartile range over rounds, e.g. `91.5 (88.0-93.2)`.
    fn pct_with_spread(&self, k: Kind) -> String {
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
                    num(o.med(|r| r.seen.map(|s| s as f64)), 0),
                    {
                        let own = num(o.med(|r| r.lost.map(|l| l as f64)), 0);
                        match o.med(|r| r.recovered.map(|n| n as f64)) {
                            _ if o.kind == Kind::BpftracePrint => format!("{own} records"),
                            Some(n) => format!("{own} ({n:.0} nested, recovered)"),
                            None => own,
                        }
                    },
                    num(o.med(|r| r.distinct().map(|s| r.expected.saturating_sub(s) as f64)), 0),
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

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let tr = self.variant(Kind::TwresetTrace);
        let bp = self.variant(Kind::BpftracePrint);
        let tb = self.variant(Kind::TwresetTable);
        let bc = self.variant(Kind::BpftraceCount);
        let (tw_pct, bp_pct) = (self.pct_of_base(Kind::TwresetTrace), self.pct_of_base(Kind::BpftracePrint));
        rows.push(Row {
            figure: "trace: conn/s, % of no tracer".into(),
            twreset: self.pct_with_spread(Kind::TwresetTrace),
            peer: format!("{} (bpftrace print)", self.pct_with_spread(Kind::BpftracePrint)),
            ratio: times(ratio(tw_pct, bp_pct), 2, ""),
            target: ">= 90%".into(),
            verdict: within_spread(
                at_least(tw_pct, 90.0, "%"),
                self.variant(Kind::TwresetTrace).pct_quartiles(self.variant(Kind::NoTracer)),
                90.0,
            ),
        });
        // What the cheapest tracer gets in the same rounds: how much of the gap is the machine.
        let bc_pct = self.pct_of_base(Kind::BpftraceCount);
        rows.push(Row {
            figure: "trace: conn/s, % of no tracer (reference: in-kernel count)".into(),
            twreset: self.pct_with_spread(Kind::TwresetTrace),
            peer: format!("{} (bpftrace count)", self.pct_with_spread(Kind::BpftraceCount)),
            ratio: times(ratio(tw_pct, bc_pct), 2, ""),
            target: "-".into(),
            verdict: "-".into(),
        });
        rows.push(Row {
            figure: "trace: events lost".into(),
            twreset: count(tr.lost()),
            peer: format!("{} (bpftrace print)", count(bp.lost())),
            ratio: "-".into(),
            target: "0".into(),
            verdict: at_most(tr.lost(), 0.0, ""),
        });
        rows.push(Row {
            figure: "trace: CPU s per M events (tracer + BPF)".into(),
            twreset: num(tr.cpu_per_m(), 3),
            peer: format!("{} (bpftrace print)", num(bp.cpu_per_m(), 3)),
            ratio: times(ratio(tr.cpu_per_m(), bp.cpu_per_m()), 2, ""),
            target: "-".into(),
            verdict: "-".into(),
        });
        rows.push(Row {
            figure: "trace: tracer peak RSS MiB".into(),
            twreset: num(mib(tr.hwm_kib()), 1),
            peer: format!("{} (bpftrace print)", num(mib(bp.hwm_kib()), 1)),
            ratio: times(ratio(tr.hwm_kib(), bp.hwm_kib()), 2, ""),
            target: "-".into(),
            verdict: "-".into(),
        });
        // Until the agent exists: the kernel side of table keeping is the state tracepoint plus
        // the TIME_WAIT lifecycle hooks, which `trace --timewait` loads; its BPF time is that cost.
        let lc = self.variant(Kind::TwresetLifecycle);
        let lc_bpf = lc.bpf_per_m();
        rows.push(Row {
            figure: "lifecycle hooks (trace --timewait): BPF s per M events".into(),
            twreset: lc.na.as_deref().map_or_else(|| num(lc_bpf, 3), short),
            peer: format!("{} (bpftrace count, total)", num(bc.cpu_per_m(), 3)),
            ratio: times(ratio(lc_bpf, bc.cpu_per_m()), 2, ""),
            target: "- (kernel share of the table target)".into(),
            verdict: "-".into(),
        });
        let (tb_cpu, bc_cpu) = (tb.cpu_per_m(), bc.cpu_per_m());
        rows.push(Row {
            figure: "table: CPU s per M events (tracer + BPF)".into(),
            twreset: tb.na.as_deref().map_or_else(|| num(tb_cpu, 3), short),
            peer: format!("{} (bpftrace count)", num(bc_cpu, 3)),
            ratio: times(ratio(tb_cpu, bc_cpu), 2, ""),
            target: "< bpftrace count".into(),
            verdict: below(tb_cpu, bc_cpu),
        });
        let (tb_host, bc_host) = (tb.host_per_m(), bc.host_per_m());
        rows.push(Row {
            figure: "table: host CPU s per M events (sampled: process + hooks)".into(),
            twreset: tb.na.as_deref().map_or_else(|| num(tb_host, 3), short),
            peer: format!("{} (bpftrace count)", num(bc_host, 3)),
            ratio: times(ratio(tb_host, bc_host), 2, ""),
            target: "< bpftrace count".into(),
            verdict: below(tb_host, bc_host),
        });
        let (tr_host, bp_host) = (tr.host_per_m(), bp.host_per_m());
        rows.push(Row {
            figure: "trace: host CPU s per M events (sampled: process + hooks)".into(),
            twreset: num(tr_host, 3),
            peer: format!("{} (bpftrace print), {} (bpftrace count)", num(bp_host, 3), num(bc_host, 3)),
            ratio: times(ratio(tr_host, bp_host), 2, ""),
            target: "-".into(),
            verdict: "-".into(),
        });
        rows.push(Row {
            figure: "table: events lost".into(),
            twreset: tb.na.as_deref().map_or_else(|| count(tb.lost()), short),
            peer: format!("{} (bpftrace count)", count(bc.lost())),
            ratio: "-".into(),
            target: "0".into(),
            verdict: at_most(tb.lost(), 0.0, ""),
        });
        for o in self.kills {
            let big = o.n >= 50_000;
            let side = |r: &Result<Kill, String>, f: &dyn Fn(&Kill) -> f64| r.as_ref().ok().map(f);
            let (tw_s, ss_s) = (side(&o.twreset, &|k| k.wall_s), side(&o.ss, &|k| k.wall_s));
            let faster = ratio(ss_s, tw_s);
            let na = o.twreset.as_ref().err().map(|e| short(e));
            rows.push(Row {
                figure: format!("kill {}k: wall s", o.n / 1000),
                twreset: na.clone().unwrap_or_else(|| num(tw_s, 3)),
                peer: format!("{} (ss -K)", num(ss_s, 3)),
                ratio: times(faster, 2, " faster"),
                target: if big { ">= 5x faster".into() } else { "-".into() },
                verdict: if big { at_least(faster, 5.0, "x") } else { "-".into() },
            });
            let rss = |r: &Result<Kill, String>| side(r, &|k| k.maxrss_kib as f64 / 1024.0);
            let frac = ratio(rss(&o.twreset), rss(&o.ss));
            rows.push(Row {
                figure: format!("kill {}k: peak RSS MiB", o.n / 1000),
                twreset: na.clone().unwrap_or_else(|| num(rss(&o.twreset), 1)),
                peer: format!("{} (ss -K)", num(rss(&o.ss), 1)),
                ratio: times(frac, 3, ""),
                target: if big { "<= 0.2x".into() } else { "-".into() },
                verdict: if big { at_most(frac, 0.2, "x") } else { "-".into() },
            });
            let clean = |r: &Result<Kill, String>| match r {
                Ok(k) => format!("{} left, {}/{} kept", k.left, k.bystanders_after, k.bystanders_before),
                Err(e) => short(e),
            };
            rows.push(Row {
                figure: format!("kill {}k: left behind / bystanders", o.n / 1000),
                twreset: clean(&o.twreset),
                peer: format!("{} (ss -K)", clean(&o.ss)),
                ratio: "-".into(),
                target: "0 left, all kept".into(),
                verdict: match &o.twreset {
                    Ok(k) if k.ok() => "met".into(),
                    Ok(_) => "missed".into(),
                    Err(_) => "n/a".into(),
                },
            });
        }
        let t = self.table;
        let note = if t.n == 200_000 { String::new() } else { format!(" (at {}k; target is for 200k)", t.n / 1000) };
        let kib = |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        rows.push(Row {
            figure: "table: RSS bytes per tracked socket, while tracking".into(),
            twreset: t.na.as_deref().map_or_else(
                || {
                    format!(
                        "{} (RSS {} -> {} MiB; anon only: {} B)",
                        num(t.tracking_bytes_per_socket(), 1),
                        kib(t.empty.tracking_rss_kib),
                        kib(t.full.tracking_rss_kib),
                        num(t.tracking_anon_bytes_per_socket(), 1)
                    )
                },
                short,
            ),
            peer: "-".into(),
            ratio: "-".into(),
            target: "<= 100".into(),
            verdict: at_most(t.tracking_bytes_per_socket(), 100.0, " B"),
        });
        rows.push(Row {
            figure: "table: peak RSS bytes per tracked socket".into(),
            twreset: t.na.as_deref().map_or_else(
                || {
                    // The peaks show how much of the figure is the process's own base.
                    format!(
                        "{} after attach ({} -> {} MiB); whole run {} ({:.1} -> {:.1} MiB)",
                        num(t.after_attach_peak_bytes_per_socket(), 1),
                        kib(t.empty.after_attach_peak_kib),
                        kib(t.full.after_attach_peak_kib),
                        num(t.bytes_per_socket(), 1),
                        t.empty.maxrss_kib as f64 / 1024.0,
                        t.full.maxrss_kib as f64 / 1024.0
                    )
                },
                short,
            ),
            peer: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            verdict: "-".into(),
        });
        rows.push(Row {
            figure: format!("table: seed {}k sockets, s{note}", t.n / 1000),
            twreset: t.na.as_deref().map_or_else(
                || {
                    format!(
                        "{} (twreset's own: {}; spawn to seeded: {}; whole snapshot: {})",
                        num(t.seed_s(), 3),
                        num(t.full.seed_reported_s, 3),
                        num(t.spawn_to_seeded_s(), 3),
                        num(t.snapshot_wall_diff_s(), 3)
                    )
                },
                short,
            ),
            peer: "-".into(),
            ratio: "-".into(),
            target: "< 0.5 s".into(),
            verdict: at_most(t.seed_s(), 0.5, " s"),
        });
        if self.agent.na.as_deref() != Some("skipped") {
            rows.extend(self.agent.summary().into_iter().map(|[figure, twreset, peer, ratio, target, verdict]| Row {
                figure,
                twreset,
                peer,
                ratio,
                target,
                verdict,
            }));
        }
        rows
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
        if self.agent.na.as_deref() != Some("skipped") {
            s += &markdown(&agent::Outcome::DETAILS_HEADER, &self.agent.details());
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
            "agent": self.agent.json(),
            "summary": self.rows().into_iter().map(|r| json!({ "figure": r.figure, "twreset": r.twreset, "peer": r.peer,
                "ratio": r.ratio, "target": r.target, "verdict": r.verdict })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_inside_the_quartiles_is_flagged() {
        assert_eq!(within_spread("met".into(), Some((88.0, 93.0)), 90.0), "met; 90 is within the quartiles");
        assert_eq!(within_spread("met".into(), Some((91.0, 93.0)), 90.0), "met");
        assert_eq!(within_spread("missed".into(), None, 90.0), "missed");
        assert_eq!(at_least(Some(84.7), 90.0, "%"), "missed by 5.30%");
    }
}
