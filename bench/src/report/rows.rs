//! The summary rows: each figure for twreset beside its peer's, their ratio, the target and the
//! verdict.

use super::{Report, fmt::*};
use crate::{
    kill::Kill,
    trace::{Kind, Outcome},
};

impl Report<'_> {
    pub(super) fn rows(&self) -> Vec<Row> {
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
        // The kernel side of table keeping is the state tracepoint plus the TIME_WAIT lifecycle
        // hooks, which `trace --timewait` loads; its BPF time is that cost.
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
        rows.extend(self.agent_variant_rows());
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
        for a in self.agents.iter().filter(|a| a.na.as_deref() != Some("skipped")) {
            rows.extend(a.summary().into_iter().map(|[figure, twreset, peer, ratio, target, verdict]| Row {
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

    /// The whole agent under maximum churn, against bpftrace's in-kernel count in the same rounds
    /// (the goal: at least the rate that one leaves) and against the table mode.
    fn agent_variant_rows(&self) -> Vec<Row> {
        let ag = self.variant(Kind::TwresetAgent);
        let (bc, tb) = (self.variant(Kind::BpftraceCount), self.variant(Kind::TwresetTable));
        let na = |v: String| ag.na.as_deref().map_or(v, short);
        let (ag_pct, bc_pct) = (self.pct_of_base(Kind::TwresetAgent), self.pct_of_base(Kind::BpftraceCount));
        let goal = match (ag_pct, bc_pct) {
            (Some(a), Some(b)) if a >= b => format!("met ({:.1} points above)", a - b),
            (Some(a), Some(b)) => format!("{:.1} points below", b - a),
            _ => "n/a".into(),
        };
        let cpu = |o: &Outcome| num(o.cpu_per_m(), 3);
        let host = |o: &Outcome| num(o.host_per_m(), 3);
        vec![
            Row {
                figure: "agent: conn/s, % of no tracer".into(),
                twreset: na(self.pct_with_spread(Kind::TwresetAgent)),
                peer: format!(
                    "{} (bpftrace count), {} (table)",
                    self.pct_with_spread(Kind::BpftraceCount),
                    self.pct_with_spread(Kind::TwresetTable)
                ),
                ratio: times(ratio(ag_pct, bc_pct), 2, ""),
                target: ">= bpftrace count (issue)".into(),
                verdict: goal,
            },
            Row {
                figure: "agent: CPU s per M events (tracer + BPF)".into(),
                twreset: na(cpu(ag)),
                peer: format!("{} (bpftrace count), {} (table)", cpu(bc), cpu(tb)),
                ratio: times(ratio(ag.cpu_per_m(), bc.cpu_per_m()), 2, ""),
                target: "-".into(),
                verdict: "-".into(),
            },
            Row {
                figure: "agent: host CPU s per M events (sampled: process + hooks)".into(),
                twreset: na(host(ag)),
                peer: format!("{} (bpftrace count), {} (table)", host(bc), host(tb)),
                ratio: times(ratio(ag.host_per_m(), bc.host_per_m()), 2, ""),
                target: "-".into(),
                verdict: "-".into(),
            },
            Row {
                figure: "agent: events lost (own count, or tw creations missing from /metrics)".into(),
                twreset: na(count(ag.lost())),
                peer: format!("{} (bpftrace count)", count(bc.lost())),
                ratio: "-".into(),
                target: "0".into(),
                verdict: at_most(ag.lost(), 0.0, ""),
            },
        ]
    }
}
