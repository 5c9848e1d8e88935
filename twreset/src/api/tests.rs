//! Server tests against a fake owner: real HTTP over a real unix socket, no kernel programs.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream as StdStream,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{broadcast, oneshot};

use super::*;
use crate::{
    api::{
        client::{Agent, ClientError, for_each_line},
        server::{self, Server},
    },
    kill::{report::Totals as KillTotals, select::SelectorError},
    output::tw::render_json,
    sock::SockKey,
    table::{Group, Row, Totals},
    tw_event::TwEventKind,
};

#[derive(Clone)]
struct Fake {
    events: broadcast::Sender<EventBatch>,
    queries: Arc<Mutex<Vec<TwQuery>>>,
    kills: Arc<Mutex<Vec<KillTotals>>>,
}

fn snapshot(by: By) -> Snapshot {
    let row = Row {
        group: Group::Peer("10.9.0.2".parse().unwrap()),
        count: 2,
        fin_wait2: 0,
        oldest_s: Some(1.5),
        newest_s: Some(0.5),
        kills: [0; 6],
        pressure: None,
    };
    Snapshot { by, rows: vec![row], totals: Totals { count: 2, ..Totals::default() } }
}

impl Owner for Fake {
    async fn tw(&self, q: TwQuery) -> Result<Snapshot, OwnerGone> {
        let by = q.by;
        self.queries.lock().unwrap().push(q);
        Ok(snapshot(by))
    }
    async fn subscribe(&self) -> Result<broadcast::Receiver<EventBatch>, OwnerGone> {
        Ok(self.events.subscribe())
    }
    async fn health(&self) -> Result<Health, OwnerGone> {
        Ok(Health { seeded: true, attached: false })
    }
    fn kills_done(&self, _trigger: &'static str, totals: &KillTotals) {
        self.kills.lock().unwrap().push(totals.clone());
    }
}

struct Running {
    fake: Fake,
    handle: server::ApiHandle,
    agent: Agent,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str, limits: Limits) -> Running {
    let dir = std::env::temp_dir().join(format!("twreset-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = ApiConfig::new(dir.join("agent.sock"), dir.join("audit.log"));
    cfg.limits = limits;
    let (events, _) = broadcast::channel(64);
    let fake = Fake { events, queries: Arc::default(), kills: Arc::default() };
    let server = Server::bind(&cfg, fake.clone()).unwrap();
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running { fake, handle, agent: Agent { path: cfg.socket }, dir, stop: Some(stop) }
}

fn status_of(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status { status, message } => (status.as_u16(), message),
        e => panic!("expected an error status, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints() {
    let r = start("endpoints", Limits::default());
    let body = r.agent.get("/v1/tw?by=peer&all_netns=1").await.unwrap();
    assert_eq!(body, format!("{}\n", render_json(&snapshot(By::Peer), &crate::output::NsNames::default())).as_bytes());
    let body = r.agent.get("/v1/tw?by=prefix&format=text&prefix_v4=16").await.unwrap();
    assert!(String::from_utf8_lossy(&body).starts_with("PREFIX"), "{body:?}");
    {
        let q = r.fake.queries.lock().unwrap();
        assert_eq!((q[0].netns.as_ref(), q[1].view.prefix_v4), (None, 16));
        let me = crate::kernel::netns::current_cookie().unwrap();
        assert_eq!(q[1].netns, Some(vec![me]), "the caller's own namespace by default");
    }
    assert_eq!(r.agent.get("/healthz").await.unwrap(), "{\"status\":\"ok\"}\n".as_bytes());
    let (code, _) = status_of(r.agent.get("/readyz").await.unwrap_err());
    assert_eq!(code, 503, "seeded but not attached");
    assert_eq!(status_of(r.agent.get("/nope").await.unwrap_err()), (404, "no such endpoint: /nope".into()));
    let (code, msg) = status_of(r.agent.get("/v1/tw?by=host").await.unwrap_err());
    assert!(code == 400 && msg.starts_with("by: "), "{code} {msg}");
    let (code, _) = status_of(r.agent.request(http::Method::POST, "/v1/tw", None).await.unwrap_err());
    assert_eq!(code, 405);
    let (code, _) = status_of(r.agent.get("/v1/kill").await.unwrap_err());
    assert_eq!(code, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_requests() {
    let r = start("kill", Limits { max_body: 1024, ..Limits::default() });
    let post = |body: &str| r.agent.request(http::Method::POST, "/v1/kill", Some(body.as_bytes().to_vec()));
    let (code, msg) = status_of(post("{\"peers\": [").await.unwrap_err());
    assert!(code == 400 && msg.starts_with("invalid JSON body"), "{msg}");
    assert_eq!(status_of(post("{}").await.unwrap_err()), (400, SelectorError::Empty.to_string()));
    let (code, msg) = status_of(post(&format!("{{\"peers\": [\"{}\"]}}", "1".repeat(2000))).await.unwrap_err());
    assert_eq!(code, 413, "{msg}");
    // A dry run in the caller's (this test's) namespace, listed with the same lines as kill --json.
    let body = post("{\"peers\": [\"192.0.2.1\"], \"dry_run\": true}").await.unwrap();
    let mut lines = Vec::new();
    for_each_line::<ClientError>(r.agent.path(), body, |l| {
        lines.push(serde_json::from_slice::<serde_json::Value>(l).unwrap());
        Ok(())
    })
    .await
    .unwrap();
    let last = lines.last().unwrap();
    assert_eq!((last["type"].as_str(), last["dry_run"].as_bool()), (Some("summary"), Some(true)), "{lines:?}");
    assert_eq!(r.fake.kills.lock().unwrap().len(), 1, "the owner hears of the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_and_hang_up() {
    let r = start("events", Limits::default());
    let body = r.agent.request(http::Method::GET, "/v1/events", None).await.unwrap();
    let key = SockKey {
        netns_cookie: 1,
        laddr: "10.0.0.1".parse().unwrap(),
        lport: 1,
        raddr: "10.0.0.2".parse().unwrap(),
        rport: 2,
    };
    r.fake
        .events
        .send(Arc::from(vec![crate::tw_event::TwEvent { ts_ns: 5, key, kind: TwEventKind::Expired }]))
        .unwrap();
    let mut first = None;
    let _ = for_each_line::<ClientError>(r.agent.path(), body, |l| {
        first = Some(serde_json::from_slice::<serde_json::Value>(l).unwrap());
        // Hang up mid-stream.
        Err(ClientError::Answer("enough".into()))
    })
    .await;
    assert_eq!(first.unwrap()["event"], "tw_expire");
    for _ in 0..500 {
        if r.fake.events.receiver_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.fake.events.receiver_count(), 0, "the stream of a client that hung up is gone");
    assert!(r.agent.get("/healthz").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_excess_clients_cost_nothing() {
    let limits = Limits { max_connections: 8, header_timeout: Duration::from_secs(1), ..Limits::default() };
    let r = start("limits", limits);
    let path = r.agent.path().to_owned();
    // Connected, silent: closed after the head timeout, without an answer.
    let mut silent = StdStream::connect(&path).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = std::time::Instant::now();
    let _held: Vec<StdStream> = (0..7).map(|_| StdStream::connect(&path).unwrap()).collect();
    // The ninth connection is over the cap: closed at once, unanswered.
    let mut over = StdStream::connect(&path).unwrap();
    let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    over.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = over.read_to_end(&mut buf);
    assert!(buf.is_empty(), "over the cap: closed unanswered");
    assert_eq!(silent.read(&mut [0u8; 64]).unwrap(), 0, "a silent client is closed");
    assert!(t0.elapsed() >= Duration::from_millis(900), "not before the head timeout");
    // The silent ones gone, requests are answered again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.agent.get("/healthz").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `tw` through the agent prints what the agent rendered, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tw_through_the_agent() {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: crate::cmd::tw::TwArgs,
    }
    let r = start("cli", Limits::default());
    let args = |extra: &[&str]| T::try_parse_from([&["tw"][..], extra].concat()).unwrap().a;
    let mut out = Vec::new();
    crate::cmd::tw::via_agent(&r.agent, &args(&["--json", "--by", "port", "--all-netns"]), &mut out).await.unwrap();
    assert_eq!(out, format!("{}\n", render_json(&snapshot(By::Port), &crate::output::NsNames::default())).into_bytes());
    let mut out = Vec::new();
    crate::cmd::tw::via_agent(&r.agent, &args(&[]), &mut out).await.unwrap();
    let want = crate::output::tw::render_human(&snapshot(By::Peer), &crate::output::NsNames::default());
    assert_eq!(String::from_utf8(out).unwrap(), want);
    let q = r.fake.queries.lock().unwrap();
    assert_eq!((q[0].by, q[0].netns.is_none(), q[1].netns.is_some()), (By::Port, true, true));
}

/// A socket file nobody answers on is "unavailable" (the CLI then runs directly).
#[tokio::test]
async fn dead_socket_is_unavailable() {
    let dir = std::env::temp_dir().join(format!("twreset-api-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let e = Agent { path }.get("/healthz").await.unwrap_err();
    assert!(e.unavailable(), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `top` through the agent reads the table documents back (the agent answers before the screen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_top_source_through_the_agent() {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: crate::cmd::top::TopArgs,
    }
    let r = start("top", Limits::default());
    let cfg = crate::cmd::top::TopConfig::try_from(T::try_parse_from(["top", "--all-netns"]).unwrap().a).unwrap();
    let (_, names) = crate::cmd::top::via_agent(&cfg, &r.agent).await.unwrap();
    assert_eq!(names.0, crate::cmd::tw::ns_names().0, "the agent's namespace names");
    let q = r.fake.queries.lock().unwrap();
    assert_eq!((q.len(), q[0].netns.is_none()), (1, true));
}

/// A reload changes the socket file's group and ACL; an unknown group is refused before anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_groups() {
    use std::os::unix::fs::MetadataExt;
    let r = start("reload", Limits::default());
    let mut cfg = ApiConfig::new(r.agent.path.clone(), r.dir.join("other-audit.log"));
    cfg.group = Some("4242".into());
    cfg.readonly_group = Some("4343".into());
    r.handle.apply(r.handle.check(&cfg).unwrap()).unwrap();
    let m = std::fs::metadata(&r.agent.path).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o777 & !0o006), (4242, 0o660));
    cfg.group = Some("no-such-group-twreset".into());
    assert!(r.handle.check(&cfg).is_err());
    assert!(r.agent.get("/healthz").await.is_ok());
}
