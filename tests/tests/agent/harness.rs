//! The agent tests' harness: a running agent, a real Prometheus server scraping it, and HTTP.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use twreset_tests::Running;

/// A port nobody listens on now (the kernel's pick, released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// (status, body) of a GET.
pub fn get(url: &str) -> (u16, String) {
    let mut r = http().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

/// Poll `f` until it returns Some, up to `timeout`; panics with `what` and the last value seen.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub use twreset_tests::TempDir;

/// A running agent on its own metrics port, with its own config file and socket path.
pub struct Agent {
    pub run: Running,
    pub port: u16,
    pub config: PathBuf,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl Agent {
    pub fn start(tag: &str, config: &str) -> Self {
        let dir = TempDir::new(tag);
        let port = free_port();
        let path = dir.0.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let socket = dir.0.join("agent.sock");
        let listen = format!("127.0.0.1:{port}");
        let run = twreset_tests::run_agent(&path, &listen, &socket);
        Self { run, port, config: path, socket, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = get(&self.url("/metrics"));
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// `name{labels} value` series of one family in an exposition, labels parsed.
pub fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The Debian `prometheus` server on 127.0.0.1, scraping one agent every second.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(tag: &str, target_port: u16) -> Self {
        let dir = TempDir::new(&format!("prom-{tag}"));
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: twreset\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (Debian package `prometheus`; `cargo xtask` installs it)");
        let p = Self { child, port, _dir: dir };
        eventually("prometheus ready", Duration::from_secs(30), || {
            match http().get(&format!("http://127.0.0.1:{port}/-/ready")).call() {
                Ok(r) if r.status() == 200 => Ok(()),
                other => Err(format!("{:?}", other.map(|r| r.status()))),
            }
        });
        p
    }

    /// An instant query's result: each series' labels and value.
    pub fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut r = http()
            .get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", q)
            .call()
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                (labels, s["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// Values of `q` by the label `by` (one series per value expected).
    pub fn by(&self, q: &str, by: &str) -> BTreeMap<String, u64> {
        self.query(q).into_iter().map(|(l, v)| (l[by].clone(), v as u64)).collect()
    }

    /// The scrape of the agent is up (the OpenMetrics exposition parsed).
    pub fn scrape_ok(&self) -> Result<(), String> {
        let up = self.query("up{job=\"twreset\"}");
        match up.first() {
            Some((_, v)) if *v == 1.0 => Ok(()),
            other => Err(format!("up = {other:?}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}
