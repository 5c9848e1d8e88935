//! The agent's configuration file (TOML, every key optional, unknown keys refused) and the
//! command-line overrides. A malformed file is reported with its path, line and key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::{duration::parse as parse_duration, policy::ReliefConfig};

/// Where the agent looks for its configuration when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/twreset/agent.toml";

/// Everything the agent reads from its file; the defaults are the documented ones.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `GET /metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: SocketAddr,
    /// The control API's unix socket.
    pub socket: PathBuf,
    pub socket_group: String,
    pub socket_readonly_group: String,
    pub audit_log: PathBuf,
    /// Rows per labelled metric family, plus one `other` row.
    pub top_n: usize,
    /// How often the table is compared with a fresh dump.
    #[serde(deserialize_with = "duration")]
    pub reconcile: Duration,
    pub proc_root: PathBuf,
    pub pods_log_dir: PathBuf,
    /// How often new and deleted network namespaces are looked for.
    #[serde(deserialize_with = "duration")]
    pub netns_scan: Duration,
    /// Auto-relief, as written (validated by [`crate::policy::parse_relief`] into `relief_policy`).
    pub relief: Option<toml::Table>,
    /// The `[relief]` table once validated.
    #[serde(skip)]
    pub relief_policy: ReliefConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9977)),
            socket: "/run/twreset/agent.sock".into(),
            socket_group: String::new(),
            socket_readonly_group: String::new(),
            audit_log: crate::kill::audit::DEFAULT_PATH.into(),
            top_n: 20,
            reconcile: Duration::from_secs(30),
            proc_root: "/proc".into(),
            pods_log_dir: "/var/log/pods".into(),
            netns_scan: Duration::from_secs(2),
            relief: None,
            relief_policy: ReliefConfig::default(),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, key: String, message: String },
    /// A bad `[relief]` table (file, line and reason).
    #[error(transparent)]
    Relief(#[from] crate::policy::ConfigError),
}

/// Command-line overrides (`None`: the file's value).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub metrics_listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, mut c: Config) -> Config {
        if let Some(a) = self.metrics_listen {
            c.metrics_listen = a;
        }
        if let Some(s) = &self.socket {
            c.socket = s.clone();
        }
        c
    }
}

/// Where the configuration comes from, kept so SIGHUP reads the same place again.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    /// Named with `--config`: a missing file is an error, not the defaults.
    pub explicit: bool,
    pub overrides: Overrides,
}

impl Source {
    /// Read and validate the file, then apply the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.explicit => String::new(),
            Err(source) => return Err(ConfigError::Read { path: self.path.clone(), source }),
        };
        parse(&self.path, &text).map(|c| self.overrides.apply(c))
    }
}

/// Parse and validate a configuration text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let invalid = |line: usize, key: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key: key.to_owned(),
        message,
    };
    let mut cfg: Config = toml::from_str(text).map_err(|e| {
        let (line, key) = e.span().map_or((1, String::new()), |s| key_at(text, s.start));
        let message = e.message().to_owned();
        // An unknown key's span covers the key itself; the message names it too.
        let key = unknown_key(&message).unwrap_or(key);
        invalid(line, &key, message)
    })?;
    let positive = |key: &str, zero: bool| -> Result<(), ConfigError> {
        if zero { Err(invalid(line_of_key(text, key), key, "must be greater than 0".into())) } else { Ok(()) }
    };
    positive("top_n", cfg.top_n == 0)?;
    positive("reconcile", cfg.reconcile.is_zero())?;
    positive("netns_scan", cfg.netns_scan.is_zero())?;
    cfg.relief_policy = crate::policy::parse_relief(path, text)?;
    Ok(cfg)
}

/// The 1-based line of byte `offset` and the key written on that line (`key = ...`, or the
/// `[table]` header), as well as a line can tell.
fn key_at(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let here = text[start..].lines().next().unwrap_or("").trim();
    let key = match here.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_owned(),
        None => here.trim_matches(|c| c == '[' || c == ']').trim().to_owned(),
    };
    (line, key)
}

/// serde's "unknown field `x`, expected ..." names the key.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The line a top-level `key = ...` is written on (1 when not written: a default).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('=')))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/twreset/agent.toml"), text)
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_is_the_defaults() {
        assert_eq!(p("").unwrap(), Config::default());
        assert_eq!(Config::default().metrics_listen.to_string(), "127.0.0.1:9977");
    }

    #[test]
    fn every_key_of_the_contract_loads() {
        let c = p(r#"
metrics_listen = "127.0.0.1:9100"
socket = "/tmp/a.sock"
socket_group = "twreset"
socket_readonly_group = "adm"
audit_log = "/tmp/audit.log"
top_n = 5
reconcile = "10s"
proc_root = "/host/proc"
pods_log_dir = "/var/log/pods"
netns_scan = "500ms"

[relief]
mode = "dry-run"
deny_remote = ["10.0.0.0/8"]

[[relief.rule]]
name = "backend"
remote_port = [443]
"#)
        .unwrap();
        assert_eq!((c.top_n, c.reconcile, c.netns_scan), (5, Duration::from_secs(10), Duration::from_millis(500)));
        assert_eq!(c.metrics_listen.port(), 9100);
        assert_eq!(c.proc_root, Path::new("/host/proc"));
        assert!(c.relief.unwrap().contains_key("rule"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            err("top_n = 3\nbogus = 1\n"),
            "/etc/twreset/agent.toml:2: key `bogus`: unknown field `bogus`, expected one of `metrics_listen`, \
             `socket`, `socket_group`, `socket_readonly_group`, `audit_log`, `top_n`, `reconcile`, `proc_root`, \
             `pods_log_dir`, `netns_scan`, `relief`"
        );
        let e = err("\n\ntop_n = \"many\"\n");
        assert!(e.starts_with("/etc/twreset/agent.toml:3: key `top_n`: invalid type"), "{e}");
        let e = err("reconcile = \"soon\"\n");
        assert!(e.starts_with("/etc/twreset/agent.toml:1: key `reconcile`: \"soon\" is not a duration"), "{e}");
        let e = err("metrics_listen = \"localhost\"\n");
        assert!(e.starts_with("/etc/twreset/agent.toml:1: key `metrics_listen`:"), "{e}");
        assert_eq!(err("# top\ntop_n = 0\n"), "/etc/twreset/agent.toml:2: key `top_n`: must be greater than 0");
        let e = err("top_n = 3\ntop_n = 4\n");
        assert!(e.starts_with("/etc/twreset/agent.toml:2: key `top_n`:"), "{e}");
    }

    #[test]
    fn missing_file_is_the_defaults_only_at_the_default_path() {
        let path = PathBuf::from("/nonexistent/twreset/agent.toml");
        let implicit = Source { path: path.clone(), explicit: false, overrides: Overrides::default() };
        assert_eq!(implicit.load().unwrap(), Config::default());
        let explicit = Source { explicit: true, ..implicit };
        assert!(matches!(explicit.load(), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides { metrics_listen: Some("127.0.0.1:1".parse().unwrap()), socket: Some("/tmp/s".into()) };
        let c = o.apply(p("metrics_listen = \"127.0.0.1:2\"\nsocket = \"/tmp/f\"\n").unwrap());
        assert_eq!((c.metrics_listen.port(), c.socket), (1, PathBuf::from("/tmp/s")));
    }
}
