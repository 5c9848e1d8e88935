//! `twreset tw`: a one-shot snapshot of the live TIME_WAIT table (seed, settle, print).

use std::{io::Write, time::Duration};

use clap::Args;

use crate::{
    api::{
        client::{Agent, AgentArgs, ClientError},
        query::{Scope, TwParams},
    },
    cmd::{NetnsArgs, UsageError},
    live::{Feed, Live, LiveError},
    output::NsNames,
    scope::NetnsScope,
    table::{By, Snapshot, Sort, ViewConfig},
};

#[derive(Args, Debug)]
pub struct TwArgs {
    /// Group rows by remote IP, remote prefix, remote port, local IP or destination.
    #[arg(long, value_enum, default_value_t = By::Peer)]
    pub by: By,
    /// Row order (largest first).
    #[arg(long, value_enum, default_value_t = Sort::Count)]
    pub sort: Sort,
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// One JSON document (schema in docs/guide/tw.md).
    #[arg(long)]
    pub json: bool,
    /// Prefix length of IPv4 rows with --by prefix.
    #[arg(long = "prefix-v4", value_name = "LEN", default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub prefix_v4: u8,
    /// Prefix length of IPv6 rows with --by prefix.
    #[arg(long = "prefix-v6", value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub prefix_v6: u8,
    /// How long to follow kernel events after the seeding dump before printing (e.g. 200ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = crate::duration::parse)]
    pub settle: Duration,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The same table from the agent's live one (`GET /v1/tw`, rendered there by the same code).
pub async fn via_agent(agent: &Agent, a: &TwArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let params = TwParams {
        by: a.by,
        sort: a.sort,
        prefix_v4: a.prefix_v4,
        prefix_v6: a.prefix_v6,
        scope: Scope::from(&a.netns),
        text: !a.json,
    };
    let body = agent.get(&format!("/v1/tw?{}", params.to_query())).await?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(())
}

/// Identities of namespaces (pods, containers, `ip netns` names), to label destinations.
pub fn ns_names() -> NsNames {
    NsNames::resolve()
}

#[derive(Debug)]
pub struct TwConfig {
    pub scope: NetnsScope,
    pub by: By,
    pub sort: Sort,
    pub json: bool,
    pub view: ViewConfig,
    pub settle: Duration,
}

impl TryFrom<TwArgs> for TwConfig {
    type Error = UsageError;
    fn try_from(a: TwArgs) -> Result<Self, UsageError> {
        Ok(Self {
            scope: NetnsScope::try_from(&a.netns)?,
            by: a.by,
            sort: a.sort,
            json: a.json,
            view: ViewConfig { prefix_v4: a.prefix_v4, prefix_v6: a.prefix_v6, ..ViewConfig::default() },
            settle: a.settle,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TwError {
    #[error("building the TIME_WAIT table")]
    Live(#[source] LiveError),
    #[error("writing the table")]
    Write(#[source] std::io::Error),
}

/// How long the final reconcile lets in-flight events land after its dump: the default settle,
/// or a shorter `--settle`.
const INFLIGHT: Duration = Duration::from_millis(200);

/// Seed the table from `feed`, follow its events for `settle` or until `stop` resolves (Ctrl-C,
/// SIGTERM: the table is printed as it is then), then print one snapshot to `out`.
pub async fn run(
    cfg: &TwConfig,
    feed: Feed,
    names: &NsNames,
    out: &mut dyn Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Snapshot, TwError> {
    let mut live = Live::seed(feed, cfg.view, cfg.settle.min(INFLIGHT)).map_err(TwError::Live)?;
    live.follow_until(cfg.settle, stop).await;
    // A resync if events were lost, else a reconcile: either way the printed table was just
    // compared with the kernel's own dump, and `drift` says how far the events had left it.
    if live.tick().await.map_err(TwError::Live)?.is_none() {
        live.reconcile(false).await.map_err(TwError::Live)?;
    }
    let snap = live.snapshot(cfg.by, cfg.sort);
    let text = if cfg.json {
        let mut doc = crate::output::tw::render_json(&snap, names);
        // What the table did to be exact, for machines rather than log readers (`LiveStats`).
        doc["live"] = serde_json::to_value(live.stats()).unwrap_or_default();
        format!("{doc}\n")
    } else {
        crate::output::tw::render_human(&snap, names)
    };
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(TwError::Write)?;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        ports::PortSpaces,
        sock::{DiagSocket, SockKey},
        state::TcpState,
        tw_event::{TwEvent, TwEventKind},
    };

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: TwArgs,
    }

    fn parse(args: &[&str]) -> Result<TwArgs, clap::Error> {
        T::try_parse_from(std::iter::once("tw").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn args_and_defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.by, a.json, a.prefix_v4, a.prefix_v6, a.settle),
            (By::Peer, false, 24, 64, Duration::from_millis(200))
        );
        assert_eq!(parse(&["--sort", "pressure"]).unwrap().sort, Sort::Pressure);
        let a = parse(&["--by", "dest", "--json", "--prefix-v4", "16", "--prefix-v6", "48", "--settle", "2s"]).unwrap();
        assert_eq!(
            (a.by, a.json, a.prefix_v4, a.prefix_v6, a.settle),
            (By::Dest, true, 16, 48, Duration::from_secs(2))
        );
        let a = parse(&["--pod", "shop/web-0", "--pod", "batch/job-7", "--container", "db"]).unwrap();
        assert_eq!(a.netns.pods, [("shop".into(), "web-0".into()), ("batch".into(), "job-7".into())]);
        assert_eq!(a.netns.containers, ["db"]);
        for by in ["peer", "prefix", "port", "local", "dest"] {
            assert_eq!(parse(&["--by", by]).unwrap().by.name(), by);
        }
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--by", "host"][..],
            &["--prefix-v4", "33"],
            &["--prefix-v6", "129"],
            &["--settle", "fast"],
            &["--sort", "size"],
            &["--netns", "a", "--all-netns"],
            &["--pod", "web-0"],
            &["--pod", "shop/web/0"],
            &["--pod", "shop/web-0", "--all-netns"],
            &["--container", "db", "--netns", "a"],
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    fn key(n: u16, r: &str) -> SockKey {
        SockKey {
            netns_cookie: 1,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 40000 + n,
            raddr: r.parse().unwrap(),
            rport: 443,
        }
    }

    #[tokio::test]
    async fn prints_seed_plus_events() {
        let (tx, rx) = mpsc::channel(16);
        let dump = vec![
            DiagSocket {
                key: key(0, "10.0.0.2"),
                state: TcpState::TimeWait,
                timewait: true,
                expires_ms: 30_000,
                cookie: 0,
                inode: 0,
                uid: 0,
            },
            DiagSocket {
                key: key(1, "10.0.0.3"),
                state: TcpState::Established,
                timewait: false,
                expires_ms: 0,
                cookie: 0,
                inode: 0,
                uid: 0,
            },
        ];
        // The kernel as the final reconcile sees it: the seed plus the socket the event created.
        let mut later = dump.clone();
        later.push(DiagSocket { key: key(2, "10.0.0.2"), ..dump[0].clone() });
        let mut calls = 0;
        let feed = Feed {
            events: rx,
            dump: Box::new(move |sink| {
                calls += 1;
                crate::live::replay(if calls == 1 { &dump } else { &later }, sink);
                Ok(())
            }),
            lost: Box::new(|| 0),
            attached_counts: Vec::new(),
            tw_counts: Box::new(Vec::new),
            ranges: PortSpaces::default(),
            clock: crate::live::monotonic_ns,
        };
        let ev = TwEvent {
            ts_ns: crate::live::monotonic_ns(),
            key: key(2, "10.0.0.2"),
            kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
        };
        tx.send(vec![ev]).await.unwrap();
        drop(tx);
        let cfg = TwConfig {
            scope: NetnsScope::Current,
            by: By::Peer,
            sort: Sort::Count,
            json: true,
            view: ViewConfig::default(),
            settle: Duration::from_millis(5),
        };
        let mut out = Vec::new();
        run(&cfg, feed, &NsNames::default(), &mut out, std::future::pending()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 1);
        assert_eq!(v["rows"][0]["raddr"], "10.0.0.2");
        assert_eq!(v["rows"][0]["count"], 2);
        assert_eq!(v["totals"]["count"], 2);
        assert_eq!(v["totals"]["drift"], 0);
        assert_eq!(v["totals"]["reconciles"], 1, "tw compares its table with a final dump");
    }
}
