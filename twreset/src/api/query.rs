//! Query strings of `GET /v1/tw`: parsed strictly (an unknown key is a 400, as an unknown flag
//! is a usage error) and built back from `tw`/`top` arguments by the CLI.

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::table::{By, Sort};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("unknown query parameter {key:?}")]
    Unknown { key: String },
    #[error("{key}: {message}")]
    Value { key: &'static str, message: String },
    #[error("netns, all_netns and pod/container cannot be combined")]
    NetnsConflict,
}

/// Which namespaces a request covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// The caller's own network namespace (found from its pid), as a command run there sees it.
    #[default]
    Caller,
    Paths(Vec<String>),
    /// Kubernetes pods (`NAMESPACE/NAME`) and containers (name or ID), as `--pod`/`--container`.
    Selected {
        pods: Vec<String>,
        containers: Vec<String>,
    },
    All,
}

/// `GET /v1/tw` parameters; `format=text` asks for the human table instead of JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwParams {
    pub by: By,
    pub sort: Sort,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub scope: Scope,
    pub text: bool,
}

impl Default for TwParams {
    fn default() -> Self {
        Self { by: By::Peer, sort: Sort::Count, prefix_v4: 24, prefix_v6: 64, scope: Scope::Caller, text: false }
    }
}

/// `%XX` and `+` decoding of one query component.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of one query component (unreserved characters and `/` kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `a=1&b=2` into decoded pairs (a key without `=` has an empty value).
pub fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn flag(key: &'static str, v: &str) -> Result<bool, QueryError> {
    match v {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(QueryError::Value { key, message: format!("{v:?} is not a boolean (true or false)") }),
    }
}

fn choice<T: ValueEnum>(key: &'static str, v: &str) -> Result<T, QueryError> {
    T::from_str(v, true).map_err(|_| {
        let names: Vec<String> =
            T::value_variants().iter().filter_map(|x| x.to_possible_value()).map(|p| p.get_name().to_owned()).collect();
        QueryError::Value { key, message: format!("{v:?} is not one of {}", names.join(", ")) }
    })
}

fn prefix(key: &'static str, v: &str, max: u8) -> Result<u8, QueryError> {
    match v.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(QueryError::Value { key, message: format!("{v:?} is not a prefix length (0-{max})") }),
    }
}

impl TwParams {
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut p = Self::default();
        let (mut paths, mut all, mut pods, mut containers) = (Vec::new(), false, Vec::new(), Vec::new());
        for (k, v) in pairs(query) {
            match k.as_str() {
                "by" => p.by = choice("by", &v)?,
                "sort" => p.sort = choice("sort", &v)?,
                "prefix_v4" => p.prefix_v4 = prefix("prefix_v4", &v, 32)?,
                "prefix_v6" => p.prefix_v6 = prefix("prefix_v6", &v, 128)?,
                "netns" => paths.push(v),
                "pod" => pods.push(v),
                "container" => containers.push(v),
                "all_netns" => all = flag("all_netns", &v)?,
                "format" => {
                    p.text = match v.as_str() {
                        "json" => false,
                        "text" => true,
                        _ => return Err(QueryError::Value { key: "format", message: format!("{v:?}: json or text") }),
                    }
                }
                _ => return Err(QueryError::Unknown { key: k }),
            }
        }
        let selected = !pods.is_empty() || !containers.is_empty();
        p.scope = match (paths.is_empty(), all, selected) {
            (true, false, true) => Scope::Selected { pods, containers },
            (false, true, _) | (false, _, true) | (_, true, true) => return Err(QueryError::NetnsConflict),
            (true, true, false) => Scope::All,
            (false, false, false) => Scope::Paths(paths),
            (true, false, false) => Scope::Caller,
        };
        Ok(p)
    }

    /// The query string that [`Self::parse`] reads back as `self`.
    pub fn to_query(&self) -> String {
        let mut q = format!("by={}&sort={}", self.by.name(), self.sort.name());
        let _ = write!(q, "&prefix_v4={}&prefix_v6={}", self.prefix_v4, self.prefix_v6);
        match &self.scope {
            Scope::Caller => {}
            Scope::All => q.push_str("&all_netns=true"),
            Scope::Paths(ps) => ps.iter().for_each(|p| {
                let _ = write!(q, "&netns={}", encode(p));
            }),
            Scope::Selected { pods, containers } => {
                pods.iter().for_each(|p| {
                    let _ = write!(q, "&pod={}", encode(p));
                });
                containers.iter().for_each(|c| {
                    let _ = write!(q, "&container={}", encode(c));
                });
            }
        }
        if self.text {
            q.push_str("&format=text");
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_back() {
        assert_eq!(TwParams::parse(None).unwrap(), TwParams::default());
        let p =
            TwParams::parse(Some("by=dest&sort=pressure&prefix_v4=16&netns=%2Frun%2Fnetns%2Fa+b&netns=/x&format=text"))
                .unwrap();
        assert_eq!((p.by, p.sort, p.prefix_v4, p.text), (By::Dest, Sort::Pressure, 16, true));
        assert_eq!(p.scope, Scope::Paths(vec!["/run/netns/a b".into(), "/x".into()]));
        assert_eq!(TwParams::parse(Some(&p.to_query())).unwrap(), p);
        let all = TwParams { scope: Scope::All, ..TwParams::default() };
        assert_eq!(TwParams::parse(Some(&all.to_query())).unwrap(), all);
        assert_eq!(TwParams::parse(Some("all_netns")).unwrap().scope, Scope::All);
        let sel = TwParams {
            scope: Scope::Selected { pods: vec!["shop/web-1".into()], containers: vec!["db".into()] },
            ..TwParams::default()
        };
        assert_eq!(TwParams::parse(Some(&sel.to_query())).unwrap(), sel);
    }

    #[test]
    fn bad_queries() {
        let e = |q| TwParams::parse(Some(q)).unwrap_err().to_string();
        assert!(
            e("by=host").starts_with("by: \"host\" is not one of peer, prefix, port, local, dest"),
            "{}",
            e("by=host")
        );
        assert!(e("prefix_v4=33").contains("0-32"));
        assert!(e("prefix_v6=x").contains("0-128"));
        assert_eq!(e("bye=peer"), "unknown query parameter \"bye\"");
        assert!(e("netns=/a&all_netns=1").contains("cannot be combined"));
        assert!(e("netns=/a&pod=x/y").contains("cannot be combined"));
        assert!(e("all_netns=maybe").contains("boolean"));
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(encode("/run/netns/a b&c"), "/run/netns/a%20b%26c");
    }
}
