//! The `[relief]` table of the agent's config: TOML parsing (spans kept for errors that name file,
//! line and reason) and validation into a [`ReliefConfig`] that [`super::decide`] can trust.

use std::{
    collections::HashSet,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::rule::{NetnsPattern, Ratio, Rule};
use crate::{duration::parse as parse_duration, scope::parse_peer, state::TW_LEN_NS};

/// A config refused at load or reload. Displays as `agent.toml:12: reason`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{}:{line}: {reason}", file.display())]
    Invalid { file: PathBuf, line: usize, reason: String },
    /// The TOML parser gave no position (rare).
    #[error("{}: {reason}", file.display())]
    Unlocated { file: PathBuf, reason: String },
}

/// `mode`: what the relief does with a triggered destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decide and report "would kill"; kill nothing (the default).
    #[default]
    DryRun,
    /// Emit kill intents for the agent to execute.
    Enforce,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::DryRun => "dry-run",
            Self::Enforce => "enforce",
        }
    }
}

/// The validated `[relief]` table. `Default` is what a config without `[relief]` means.
#[derive(Clone, Debug, PartialEq)]
pub struct ReliefConfig {
    pub mode: Mode,
    pub max_kills_per_minute: u64,
    pub max_kills_per_cycle: u64,
    /// Per destination: no new action on it for this long after one.
    pub cooldown_ns: u64,
    /// The agent's relief cycle (the policy itself does not use it).
    pub interval_ns: u64,
    pub deny_remote: Vec<IpNet>,
    pub deny_netns: Vec<NetnsPattern>,
    /// In file order: the first rule covering a destination owns it.
    pub rules: Vec<Rule>,
}

pub const DEFAULT_MAX_KILLS_PER_MINUTE: u64 = 60_000;
pub const DEFAULT_MAX_KILLS_PER_CYCLE: u64 = 10_000;
pub const DEFAULT_COOLDOWN_NS: u64 = 5_000_000_000;
pub const DEFAULT_INTERVAL_NS: u64 = 250_000_000;
pub const DEFAULT_TRIGGER_PRESSURE: f64 = 0.9;
pub const DEFAULT_TARGET_PRESSURE: f64 = 0.5;
pub const DEFAULT_MIN_AGE_NS: u64 = 5_000_000_000;

impl Default for ReliefConfig {
    fn default() -> Self {
        Self {
            mode: Mode::DryRun,
            max_kills_per_minute: DEFAULT_MAX_KILLS_PER_MINUTE,
            max_kills_per_cycle: DEFAULT_MAX_KILLS_PER_CYCLE,
            cooldown_ns: DEFAULT_COOLDOWN_NS,
            interval_ns: DEFAULT_INTERVAL_NS,
            deny_remote: Vec::new(),
            deny_netns: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl ReliefConfig {
    /// The distinct `min_age`s of the rules, ascending: the ages the agent counts per destination
    /// for [`super::OldEnough`].
    pub fn min_ages_ns(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.rules.iter().map(|r| r.min_age_ns).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The first rule covering the destination (rules never overlap in effect).
    pub fn rule_for(&self, netns: &str, laddr: IpAddr, raddr: IpAddr, rport: u16) -> Option<&Rule> {
        self.rules.iter().find(|r| r.covers(netns, laddr, raddr, rport))
    }
}

// Raw TOML shapes. Only `[relief]` is read; other top-level keys belong to the agent.
#[derive(Deserialize)]
struct AgentFile {
    relief: Option<RawRelief>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelief {
    mode: Option<Mode>,
    max_kills_per_minute: Option<Spanned<u64>>,
    max_kills_per_cycle: Option<Spanned<u64>>,
    cooldown: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    deny_remote: Option<Vec<Spanned<String>>>,
    deny_netns: Option<Vec<Spanned<String>>>,
    rule: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    remote: Option<Vec<Spanned<String>>>,
    remote_port: Option<Vec<Spanned<i64>>>,
    local: Option<Vec<Spanned<String>>>,
    netns: Option<Vec<Spanned<String>>>,
    trigger_pressure: Option<Spanned<f64>>,
    trigger_peer_sockets: Option<u64>,
    target_pressure: Option<Spanned<f64>>,
    min_age: Option<Spanned<String>>,
    max_kills_per_minute: Option<u64>,
    max_kills_per_cycle: Option<u64>,
}

/// Parse the `[relief]` table of a full agent config. `file` is only used in messages.
pub fn parse_relief(file: &Path, text: &str) -> Result<ReliefConfig, ConfigError> {
    let at = |span: Range<usize>, reason: String| ConfigError::Invalid {
        file: file.to_path_buf(),
        line: line_of(text, span.start),
        reason,
    };
    let raw: AgentFile = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => {
            let msg = e.message().trim();
            let reason = key_at(text, span.start).map_or_else(|| msg.to_owned(), |k| format!("{k}: {msg}"));
            at(span, reason)
        }
        None => ConfigError::Unlocated { file: file.to_path_buf(), reason: e.message().trim().to_owned() },
    })?;
    let Some(raw) = raw.relief else { return Ok(ReliefConfig::default()) };
    validate(raw).map_err(|(span, reason)| at(span, reason))
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `table.key` of the `key = value` line holding `offset` (serde's messages do not name it).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset.min(text.len()))?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return None;
    }
    let header = text[..start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    let table = header.and_then(|h| h.rsplit_once(']')).map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

type Invalid = (Range<usize>, String);

fn validate(raw: RawRelief) -> Result<ReliefConfig, Invalid> {
    let d = ReliefConfig::default();
    let max_kills_per_minute = budget("relief.max_kills_per_minute", raw.max_kills_per_minute)?;
    let max_kills_per_cycle = budget("relief.max_kills_per_cycle", raw.max_kills_per_cycle)?;
    let interval_ns = match raw.interval {
        Some(s) => {
            let span = s.span();
            match duration("relief.interval", s)? {
                0 => return Err((span, "relief.interval must be above 0".into())),
                ns => ns,
            }
        }
        None => d.interval_ns,
    };
    let mode = raw.mode.unwrap_or_default();
    let mut rules: Vec<Rule> = Vec::new();
    let mut names = HashSet::new();
    for r in raw.rule.unwrap_or_default() {
        let span = r.name.span();
        let rule = validate_rule(r)?;
        if !names.insert(rule.name.clone()) {
            return Err((span, format!("relief.rule {:?}: duplicate rule name", rule.name)));
        }
        if mode == Mode::Enforce && rule.match_is_empty() {
            return Err((
                span,
                format!(
                    "relief.rule {:?}: empty match in enforce mode (give remote, remote_port, local or netns; a rule covering every destination is allowed in dry-run only)",
                    rule.name
                ),
            ));
        }
        rules.push(rule);
    }
    Ok(ReliefConfig {
        mode,
        max_kills_per_minute: max_kills_per_minute.unwrap_or(d.max_kills_per_minute),
        max_kills_per_cycle: max_kills_per_cycle.unwrap_or(d.max_kills_per_cycle),
        cooldown_ns: raw.cooldown.map(|s| duration("relief.cooldown", s)).transpose()?.unwrap_or(d.cooldown_ns),
        interval_ns,
        deny_remote: cidrs("relief.deny_remote", raw.deny_remote)?,
        deny_netns: netns_patterns("relief.deny_netns", raw.deny_netns)?,
        rules,
    })
}

fn validate_rule(r: RawRule) -> Result<Rule, Invalid> {
    let name = r.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err((r.name.span(), "relief.rule: name must not be empty".into()));
    }
    let ctx = format!("relief.rule {name:?}");
    let trigger_peer_sockets = r.trigger_peer_sockets.filter(|&n| n > 0);
    let trigger_pressure = match r.trigger_pressure {
        Some(t) => {
            let v = *t.get_ref();
            if !(v > 0.0 && v <= 1.0) || Ratio::new(v).ppm == 0 {
                let why = "is outside (0, 1] (resolution 0.000001)";
                return Err((t.span(), format!("{ctx}: trigger_pressure {v} {why}")));
            }
            Some((Ratio::new(v), t.span()))
        }
        // A rule with no trigger at all acts at the default pressure.
        None if trigger_peer_sockets.is_none() => Some((Ratio::new(DEFAULT_TRIGGER_PRESSURE), r.name.span())),
        None => None,
    };
    let (target_pressure, target_span) = match r.target_pressure {
        Some(t) => {
            let v = *t.get_ref();
            if !(0.0..1.0).contains(&v) {
                return Err((t.span(), format!("{ctx}: target_pressure {v} is outside [0, 1)")));
            }
            (Ratio::new(v), t.span())
        }
        None => (Ratio::new(DEFAULT_TARGET_PRESSURE), r.name.span()),
    };
    if let Some((trigger, _)) = trigger_pressure
        && target_pressure.ppm >= trigger.ppm
    {
        return Err((
            target_span,
            format!(
                "{ctx}: target_pressure {} must be below trigger_pressure {}",
                target_pressure.value, trigger.value
            ),
        ));
    }
    let min_age_ns = match r.min_age {
        Some(s) => {
            let span = s.span();
            let ns = duration(&format!("{ctx}: min_age"), s)?;
            if ns > TW_LEN_NS {
                return Err((span, format!("{ctx}: min_age is above TIME_WAIT's 60 s: the rule could never kill")));
            }
            ns
        }
        None => DEFAULT_MIN_AGE_NS,
    };
    let mut remote_port = Vec::new();
    for p in r.remote_port.unwrap_or_default() {
        match u16::try_from(*p.get_ref()) {
            Ok(v) if v > 0 => remote_port.push(v),
            _ => return Err((p.span(), format!("{ctx}: remote_port {} is out of range (1-65535)", p.get_ref()))),
        }
    }
    Ok(Rule {
        remote: cidrs(&format!("{ctx}: remote"), r.remote)?,
        remote_port,
        local: cidrs(&format!("{ctx}: local"), r.local)?,
        netns: netns_patterns(&format!("{ctx}: netns"), r.netns)?,
        trigger_pressure: trigger_pressure.map(|(t, _)| t),
        trigger_peer_sockets,
        target_pressure,
        min_age_ns,
        max_kills_per_minute: r.max_kills_per_minute.filter(|&n| n > 0),
        max_kills_per_cycle: r.max_kills_per_cycle.filter(|&n| n > 0),
        name,
    })
}

/// An overall budget: 0 would block every kill, which is what dry run is for.
fn budget(key: &str, v: Option<Spanned<u64>>) -> Result<Option<u64>, Invalid> {
    match v {
        Some(m) if *m.get_ref() == 0 => {
            Err((m.span(), format!("{key} must be at least 1 (to kill nothing, use mode = \"dry-run\")")))
        }
        other => Ok(other.map(Spanned::into_inner)),
    }
}

/// The project's one duration grammar ([`parse_duration`]), in ns. Long strings are refused before
/// parsing so that no sum of terms can overflow.
fn duration(ctx: &str, s: Spanned<String>) -> Result<u64, Invalid> {
    let span = s.span();
    let text = s.into_inner();
    let bad = |why: String| (span.clone(), format!("{ctx}: {why}"));
    if text.len() > 24 {
        return Err(bad(format!("{text:?} is not a duration (too long; examples: 30s, 500ms, 2m, 1m30s)")));
    }
    let d: Duration = parse_duration(&text).map_err(bad)?;
    Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn cidrs(ctx: &str, list: Option<Vec<Spanned<String>>>) -> Result<Vec<IpNet>, Invalid> {
    list.unwrap_or_default()
        .into_iter()
        .map(|s| parse_peer(s.get_ref().trim()).map_err(|why| (s.span(), format!("{ctx}: {why}"))))
        .collect()
}

fn netns_patterns(ctx: &str, list: Option<Vec<Spanned<String>>>) -> Result<Vec<NetnsPattern>, Invalid> {
    list.unwrap_or_default()
        .into_iter()
        .map(|s| {
            let label = s.get_ref().trim();
            let star = label.find('*');
            if label.is_empty() || label == "*" || star.is_some_and(|i| i + 1 != label.len()) {
                let why = "a namespace label (host, an ip-netns name, pod:<ns>/<pod>, container:<name>), optionally ending with * to match a prefix";
                return Err((s.span(), format!("{ctx}: {label:?} is not {why}")));
            }
            Ok(NetnsPattern(label.to_owned()))
        })
        .collect()
}
