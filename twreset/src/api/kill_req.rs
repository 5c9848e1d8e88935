//! The body of `POST /v1/kill`: the selectors of `twreset kill` as JSON, checked with the very
//! parsers the command line uses (so a bad selector gets the same message); `cmd::kill` builds it
//! back from parsed arguments when the CLI goes through the agent.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    kill::{
        Method, Options,
        select::{self, Selector, States},
    },
    scope::parse_port,
};

/// Wire form: strings (or numbers) as typed on a command line; every key optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KillRequest {
    pub peers: Vec<String>,
    pub port: Vec<Value>,
    pub local: Vec<String>,
    pub state: Vec<String>,
    pub older_than: Option<Value>,
    pub limit: Option<usize>,
    pub all: bool,
    pub netns: Vec<String>,
    pub all_netns: bool,
    /// Kubernetes pods, `NAMESPACE/NAME` (as `--pod`).
    pub pods: Vec<String>,
    /// Containers by name or ID (as `--container`).
    pub containers: Vec<String>,
    pub dry_run: bool,
    pub method: Option<String>,
}

/// A request that cannot be run; the message is the command line's for the same mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KillRequestError {
    #[error("{field}: {message}")]
    Value { field: &'static str, message: String },
    #[error("{0}")]
    Selector(#[from] select::SelectorError),
    #[error("netns, all_netns and pods/containers cannot be combined")]
    NetnsConflict,
}

/// Where a request kills, as its keys say (opened by [`crate::api::scope::kill_scope`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub paths: Vec<PathBuf>,
    pub all: bool,
    pub pods: Vec<(String, String)>,
    pub containers: Vec<String>,
}

/// A validated request: what to kill and where (namespaces are opened by the caller).
#[derive(Debug)]
pub struct KillPlan {
    pub opts: Options,
    pub netns: Namespaces,
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn each<T>(
    field: &'static str,
    items: impl IntoIterator<Item = String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, KillRequestError> {
    items.into_iter().map(|s| parse(&s).map_err(|message| KillRequestError::Value { field, message })).collect()
}

impl TryFrom<KillRequest> for KillPlan {
    type Error = KillRequestError;
    fn try_from(r: KillRequest) -> Result<Self, KillRequestError> {
        let peers = each("peers", r.peers, |s| select::parse_endpoint(s, false))?;
        let ports = each("port", r.port.iter().map(text), parse_port)?;
        let locals = each("local", r.local, |s| select::parse_endpoint(s, true))?;
        let words = each("state", r.state, select::parse_state_word)?;
        let older_than = each("older_than", r.older_than.as_ref().map(text), crate::duration::parse)?.pop();
        let method = match r.method.as_deref() {
            None | Some("auto") => Method::Auto,
            Some("destroy") => Method::Destroy,
            Some("rst") => Method::Rst,
            Some(m) => {
                let message = format!("{m:?} is not a kill method (auto, destroy or rst)");
                return Err(KillRequestError::Value { field: "method", message });
            }
        };
        let pods = each("pods", r.pods, crate::kernel::identity::parse::pod_selector)?;
        if (r.all_netns || !pods.is_empty() || !r.containers.is_empty()) && !r.netns.is_empty()
            || r.all_netns && (!pods.is_empty() || !r.containers.is_empty())
        {
            return Err(KillRequestError::NetnsConflict);
        }
        let selector = Selector::new(peers, ports, locals, States::from_words(&words), older_than, r.all)?;
        Ok(Self {
            opts: Options { selector, limit: r.limit, method, dry_run: r.dry_run, progress: false },
            netns: Namespaces {
                paths: r.netns.into_iter().map(PathBuf::from).collect(),
                all: r.all_netns,
                pods,
                containers: r.containers,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    fn plan(v: Value) -> Result<KillPlan, KillRequestError> {
        KillPlan::try_from(serde_json::from_value::<KillRequest>(v).unwrap())
    }

    #[test]
    fn parses_like_the_cli() {
        let p = plan(json!({"peers": ["10.0.0.0/8", "[fd00::1]:80"], "port": [443, "80"], "older_than": "1m30s",
            "limit": 5, "dry_run": true}))
        .unwrap();
        assert_eq!(
            p.opts.selector.describe(),
            "state time-wait peer 10.0.0.0/8|[fd00::1]:80 dport 443|80 older-than 90000ms"
        );
        assert_eq!((p.opts.limit, p.opts.dry_run, p.opts.method), (Some(5), true, Method::Auto));
        assert!(plan(json!({"all": true, "state": ["established"], "all_netns": true})).unwrap().netns.all);
        assert_eq!(
            plan(json!({"all": true, "older_than": 30})).unwrap().opts.selector.older_than.unwrap().as_secs(),
            30
        );
    }

    #[test]
    fn same_messages_as_the_cli() {
        let msg = |v| plan(v).unwrap_err().to_string();
        assert_eq!(
            msg(json!({"peers": ["300.1.1.1"]})),
            format!("peers: {}", select::parse_endpoint("300.1.1.1", false).unwrap_err())
        );
        assert_eq!(msg(json!({"port": [0]})), format!("port: {}", parse_port("0").unwrap_err()));
        assert_eq!(msg(json!({})), select::SelectorError::Empty.to_string());
        assert!(msg(json!({"all": true, "peers": ["10.0.0.1"]})).contains("--all cannot be combined"));
        assert!(msg(json!({"all": true, "state": ["bogus"]})).starts_with("state: "));
        assert!(msg(json!({"all": true, "method": "nuke"})).contains("auto, destroy or rst"));
        assert!(msg(json!({"all": true, "netns": ["/x"], "all_netns": true})).contains("cannot be combined"));
        assert!(msg(json!({"all": true, "netns": ["/x"], "pods": ["a/b"]})).contains("cannot be combined"));
        assert!(msg(json!({"all": true, "pods": ["nope"]})).starts_with("pods: "));
        assert!(serde_json::from_value::<KillRequest>(json!({"peer": []})).is_err(), "unknown keys are refused");
    }

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: crate::cmd::kill::KillArgs,
    }

    /// Arguments parsed by clap, sent as a request and parsed again, select the same sockets.
    #[test]
    fn from_args_round_trip() {
        let args = [
            "kill",
            "10.1.2.3/16:443",
            "[fd00::1]",
            "--port",
            "80",
            "--local",
            ":8080",
            "--state",
            "time-wait",
            "--older-than",
            "1m30s",
            "--limit",
            "3",
            "--dry-run",
            "--method",
            "rst",
            "--netns",
            "/run/netns/a",
        ];
        let a = T::try_parse_from(args).unwrap().a;
        let want = Selector::new(
            a.peers.clone(),
            a.ports.clone(),
            a.locals.clone(),
            States::from_words(&a.states),
            a.older_than,
            a.all,
        )
        .unwrap();
        let p = KillPlan::try_from(KillRequest::from(&a)).unwrap();
        assert_eq!(p.opts.selector, want);
        assert_eq!((p.opts.limit, p.opts.dry_run, p.opts.method), (Some(3), true, Method::Rst));
        assert_eq!(p.netns.paths, vec![PathBuf::from("/run/netns/a")]);
        let a = T::try_parse_from(["kill", "--all", "--state", "any"]).unwrap().a;
        assert_eq!(KillPlan::try_from(KillRequest::from(&a)).unwrap().opts.selector.states, States::Any);
    }
}
