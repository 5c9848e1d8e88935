//! The `tw --json` document read back into a [`Snapshot`] (what `top` draws when the agent
//! keeps the table): the inverse of [`super::tw::render_json`].

use serde_json::Value;

use crate::{
    ports::{Dest, Pressure},
    table::{By, Counters, Group, Row, Snapshot, Totals},
    tw_event::TwCause,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the table document has no valid {field:?}")]
pub struct ParseError {
    pub field: &'static str,
}

fn field<'a>(v: &'a Value, field: &'static str) -> Result<&'a Value, ParseError> {
    v.get(field).ok_or(ParseError { field })
}

fn u64_of(v: &Value, f: &'static str) -> Result<u64, ParseError> {
    field(v, f)?.as_u64().ok_or(ParseError { field: f })
}

fn f64_or_null(v: &Value, f: &'static str) -> Result<Option<f64>, ParseError> {
    match field(v, f)? {
        Value::Null => Ok(None),
        x => x.as_f64().map(Some).ok_or(ParseError { field: f }),
    }
}

fn parsed<T: std::str::FromStr>(v: &Value, f: &'static str) -> Result<T, ParseError> {
    field(v, f)?.as_str().and_then(|s| s.parse().ok()).ok_or(ParseError { field: f })
}

fn kills(v: &Value, f: &'static str) -> Result<[u64; 6], ParseError> {
    let o = field(v, f)?;
    let mut out = [0; 6];
    for c in TwCause::ALL {
        out[c.index()] = o.get(c.name()).and_then(Value::as_u64).ok_or(ParseError { field: f })?;
    }
    Ok(out)
}

fn group(by: By, r: &Value) -> Result<Group, ParseError> {
    Ok(match by {
        By::Peer => Group::Peer(parsed(r, "raddr")?),
        By::Prefix => Group::Prefix(parsed(r, "prefix")?),
        By::Port => Group::Port(u64_of(r, "rport")?.try_into().map_err(|_| ParseError { field: "rport" })?),
        By::Local => Group::Local(parsed(r, "laddr")?),
        By::Dest => Group::Dest(Dest {
            netns: u64_of(r, "netns_cookie")?,
            laddr: parsed(r, "laddr")?,
            raddr: parsed(r, "raddr")?,
            rport: u64_of(r, "rport")?.try_into().map_err(|_| ParseError { field: "rport" })?,
        }),
    })
}

fn row(by: By, r: &Value) -> Result<Row, ParseError> {
    let pressure = match r.get("pressure") {
        None => None,
        Some(p) => Some(Pressure {
            connected: u64_of(r, "connected")?,
            holding: u64_of(r, "holding")?,
            range: u64_of(r, "port_range")?.try_into().map_err(|_| ParseError { field: "port_range" })?,
            ratio: p.as_f64().ok_or(ParseError { field: "pressure" })?,
            rate_per_s: field(r, "rate_per_s")?.as_f64().ok_or(ParseError { field: "rate_per_s" })?,
            exhaustion_s: f64_or_null(r, "exhaustion_s")?,
        }),
    };
    Ok(Row {
        group: group(by, r)?,
        count: u64_of(r, "count")?,
        fin_wait2: u64_of(r, "fin_wait2")?,
        oldest_s: f64_or_null(r, "oldest_s")?,
        newest_s: f64_or_null(r, "newest_s")?,
        kills: kills(r, "kills")?,
        pressure,
    })
}

fn totals(t: &Value) -> Result<Totals, ParseError> {
    let counters = Counters {
        created: u64_of(t, "created")?,
        rearmed: u64_of(t, "rearmed")?,
        expired: u64_of(t, "expired")?,
        killed: kills(t, "killed")?,
        overflow: u64_of(t, "overflow")?,
        lost: u64_of(t, "lost")?,
        born: u64_of(t, "born")?,
        drift: u64_of(t, "drift")?,
        unseen: u64_of(t, "unseen")?,
        resyncs: u64_of(t, "resyncs")?,
        reconciles: u64_of(t, "reconciles")?,
        overdue: u64_of(t, "overdue")?,
        stray: u64_of(t, "stray")?,
    };
    Ok(Totals { count: u64_of(t, "count")?, fin_wait2: u64_of(t, "fin_wait2")?, counters })
}

/// Parse one `tw --json` document.
pub fn parse_json(v: &Value) -> Result<Snapshot, ParseError> {
    let by_name = field(v, "by")?.as_str().ok_or(ParseError { field: "by" })?;
    let by = By::ALL.into_iter().find(|b| b.name() == by_name).ok_or(ParseError { field: "by" })?;
    let rows = field(v, "rows")?.as_array().ok_or(ParseError { field: "rows" })?;
    Ok(Snapshot {
        by,
        rows: rows.iter().map(|r| row(by, r)).collect::<Result<_, _>>()?,
        totals: totals(field(v, "totals")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tw::render_json;

    fn row(group: Group, pressure: Option<Pressure>) -> Row {
        Row { group, count: 3, fin_wait2: 1, oldest_s: Some(20.5), newest_s: None, kills: [1, 0, 0, 0, 2, 0], pressure }
    }

    /// Rendered, parsed and rendered again: the same document, for every grouping.
    #[test]
    fn round_trip() {
        let dest = Dest { netns: 9, laddr: "10.0.0.1".parse().unwrap(), raddr: "fd00::2".parse().unwrap(), rport: 443 };
        let groups = [
            (By::Peer, Group::Peer("10.0.0.2".parse().unwrap()), None),
            (By::Prefix, Group::Prefix("fd00::/64".parse().unwrap()), None),
            (By::Port, Group::Port(443), None),
            (By::Local, Group::Local("10.0.0.1".parse().unwrap()), None),
            (By::Dest, Group::Dest(dest), Some(Pressure::compute(3, 7, 100, 2.0))),
            (By::Dest, Group::Dest(dest), Some(Pressure::compute(0, 1, 100, 0.0))),
        ];
        for (by, g, p) in groups {
            let counters = Counters { created: 5, drift: 1, killed: [0, 1, 0, 0, 0, 0], ..Counters::default() };
            let snap = Snapshot { by, rows: vec![row(g, p)], totals: Totals { count: 3, fin_wait2: 1, counters } };
            let doc = render_json(&snap, &crate::output::NsNames::default());
            let back = parse_json(&doc).unwrap();
            assert_eq!(render_json(&back, &crate::output::NsNames::default()), doc, "{by:?}");
        }
        assert_eq!(parse_json(&serde_json::json!({"by": "host"})).unwrap_err().field, "by");
    }
}
