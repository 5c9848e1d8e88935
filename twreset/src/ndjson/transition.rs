//! `trace --json`'s hot path: a transition's NDJSON line written straight from the kernel's
//! [`Event`], the object [`crate::output::json`] describes. What repeats from line to line is
//! copied whole: the states and `time_wait` (one literal per state pair, built once) and the
//! namespace and family (kept from the previous line), the namespace's identity included.

use std::{collections::HashMap, net::Ipv6Addr};

use twreset_common::{AF_INET, AF_INET6, Event, kind};

use super::line::{self, Writer};
use crate::{
    decode::DecodeError,
    state::{self, StateError, TcpState},
};

/// State numbers below this index the pair table (the kernel's are 1 to 13).
const STATES: usize = 16;

/// A head at most this long (no identity fields) is copied within the line's one bounded write.
const HEAD_INLINE: usize = 64;

/// Writes transition lines; keeps the tables and the previous line's namespace.
pub struct TransitionLines {
    /// `,"old":"A","new":"B","time_wait":..,"sk":"0x` at `A * STATES + B` (state numbers); empty
    /// for numbers that are no state.
    pairs: Vec<Box<[u8]>>,
    /// `(netns_cookie, family)` of `head`.
    head_of: Option<(u64, u16)>,
    /// `,"netns_cookie":N<identity>,"family":"F","laddr":"`.
    head: Vec<u8>,
    /// Identity fields of non-host namespaces by cookie, each `,"netns":"..",...`.
    identities: HashMap<u64, Box<[u8]>>,
}

impl Default for TransitionLines {
    fn default() -> Self {
        Self::new()
    }
}

impl TransitionLines {
    pub fn new() -> Self {
        let mut pairs = vec![Box::default(); STATES * STATES];
        for old in state::ALL {
            for new in state::ALL {
                let text = format!(
                    ",\"old\":\"{}\",\"new\":\"{}\",\"time_wait\":{},\"sk\":\"0x",
                    old.name(),
                    new.name(),
                    state::is_active_close(old, new)
                );
                pairs[old.number() as usize * STATES + new.number() as usize] = text.into_bytes().into();
            }
        }
        Self { pairs, head_of: None, head: Vec::new(), identities: HashMap::new() }
    }

    /// Replace the identity fields spliced into lines after `netns_cookie` (from
    /// [`crate::kernel::identity::NetnsIdentity::json_fragment`]).
    pub fn set_identities(&mut self, identities: HashMap<u64, Box<[u8]>>) {
        self.identities = identities;
        self.head_of = None;
    }

    /// The identity fields of a namespace; empty when it has none.
    pub fn identity(&self, netns_cookie: u64) -> &[u8] {
        self.identities.get(&netns_cookie).map_or(&[], |f| f)
    }

    /// Where the literal for these states is in `pairs`, or which number is no state.
    fn pair(&self, old: u32, new: u32) -> Result<usize, DecodeError> {
        let i = (old as usize).saturating_mul(STATES).saturating_add(new as usize);
        if (old as usize) < STATES && (new as usize) < STATES && !self.pairs[i].is_empty() {
            return Ok(i);
        }
        let value = if TcpState::try_from(old).is_err() { old } else { new };
        Err(DecodeError::State(StateError::UnknownNumber { value }))
    }

    /// Append the line of the state event `ev` to `out`; nothing is appended on error.
    pub fn push(&mut self, out: &mut Vec<u8>, ev: &Event) -> Result<(), DecodeError> {
        if ev.kind != kind::STATE {
            return Err(DecodeError::Kind { kind: ev.kind });
        }
        let family = match ev.family {
            AF_INET => "inet",
            AF_INET6 => "inet6",
            family => return Err(DecodeError::Family { family }),
        };
        let pair = self.pair(ev.oldstate, ev.newstate)?;
        if self.head_of != Some((ev.netns_cookie, ev.family)) {
            self.head.clear();
            let identity = self.identities.get(&ev.netns_cookie).map_or(&[][..], |f| f);
            self.head.extend_from_slice(b",\"netns_cookie\":");
            line::push_line(&mut self.head, |w| {
                w.u64(ev.netns_cookie);
            });
            self.head.extend_from_slice(identity);
            line::push_line(&mut self.head, |w| {
                w.bytes(b",\"family\":\"");
                w.bytes(family.as_bytes());
                w.bytes(b"\",\"laddr\":\"");
            });
            self.head_of = Some((ev.netns_cookie, ev.family));
        }
        let (head, pair) = (&self.head[..], &self.pairs[pair][..]);
        let v4 = ev.family == AF_INET;
        let rest = |w: &mut Writer<'_>| {
            addr(w, v4, &ev.saddr);
            w.bytes(b"\",\"lport\":");
            w.u64(ev.sport.into());
            w.bytes(b",\"raddr\":\"");
            addr(w, v4, &ev.daddr);
            w.bytes(b"\",\"rport\":");
            w.u64(ev.dport.into());
            w.bytes(pair);
            w.hex(ev.skaddr);
            w.bytes(b"\"}\n");
        };
        if head.len() <= HEAD_INLINE {
            line::push_line(out, |w| {
                w.bytes(b"{\"ts_ns\":");
                w.u64(ev.ts_ns);
                w.bytes(head);
                rest(w);
            });
        } else {
            // A namespace with an identity: its fields may be long, the line is written in parts.
            line::push_line(out, |w| {
                w.bytes(b"{\"ts_ns\":");
                w.u64(ev.ts_ns);
            });
            out.extend_from_slice(head);
            line::push_line(out, rest);
        }
        Ok(())
    }
}

/// An address in the event's IPv4-mapped form, as `IpAddr` displays it.
#[inline(always)]
fn addr(w: &mut Writer<'_>, v4: bool, raw: &[u8; 16]) {
    if v4 {
        w.ipv4([raw[12], raw[13], raw[14], raw[15]].into());
    } else {
        w.ip(Ipv6Addr::from(*raw).into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use twreset_common::tcp_state;

    use super::*;
    use crate::{decode, output};

    fn event(i: u64) -> Event {
        let family = if i.is_multiple_of(3) { AF_INET6 } else { AF_INET };
        let addr = |x: u64| -> [u8; 16] {
            if family == AF_INET {
                decode::mapped(std::net::Ipv4Addr::from((x as u32).wrapping_mul(0x9e37_79b9)).into())
            } else {
                decode::mapped(
                    Ipv6Addr::from((x as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).into(),
                )
            }
        };
        let s = state::ALL;
        Event {
            ts_ns: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 64),
            netns_cookie: [4096, 4097, 1, u64::MAX][(i / 7 % 4) as usize],
            skaddr: [0, 0xffff_8881_0a2b_3c40, u64::MAX][(i / 3 % 3) as usize],
            saddr: addr(i),
            daddr: addr(i * 31 + 7),
            sport: (i * 7919) as u16,
            dport: ((i * 104_729) >> 3) as u16,
            family,
            kind: kind::STATE,
            oldstate: s[(i % 13) as usize].number(),
            newstate: s[(i / 13 % 13) as usize].number(),
            aux: 0,
        }
    }

    const KEYS: [&str; 11] =
        ["ts_ns", "netns_cookie", "family", "laddr", "lport", "raddr", "rport", "old", "new", "time_wait", "sk"];

    #[test]
    fn every_line_is_the_object_output_json_describes() {
        let mut lines = TransitionLines::new();
        let mut buf = Vec::new();
        for i in 0..20_000 {
            let ev = event(i);
            buf.clear();
            lines.push(&mut buf, &ev).unwrap();
            assert_eq!(buf.last(), Some(&b'\n'));
            assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
            let parsed: Value = serde_json::from_slice(&buf).unwrap();
            let t = decode::transition(&ev).unwrap();
            assert_eq!(parsed, output::json(&t), "event {i}: {}", String::from_utf8_lossy(&buf));
            // Keys in the documented order.
            let text = std::str::from_utf8(&buf).unwrap();
            let at: Vec<usize> = KEYS.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
            assert!(at.is_sorted(), "event {i}: {text}");
        }
    }

    #[test]
    fn bad_events_are_refused_and_write_nothing() {
        let mut lines = TransitionLines::new();
        let mut buf = b"kept".to_vec();
        let good = event(1);
        for (bad, what) in [
            (Event { kind: kind::TW_START, ..good }, "kind"),
            (Event { family: 3, ..good }, "family"),
            (Event { oldstate: 0, ..good }, "old 0"),
            (Event { newstate: 14, ..good }, "new 14"),
            (Event { oldstate: 16, ..good }, "old 16"),
            (Event { newstate: u32::MAX, ..good }, "new max"),
        ] {
            assert!(lines.push(&mut buf, &bad).is_err(), "{what}");
            assert_eq!(buf, b"kept", "{what}");
        }
        assert_eq!(tcp_state::BOUND_INACTIVE, 13);
        lines.push(&mut buf, &good).unwrap();
        assert!(buf.starts_with(b"kept{\"ts_ns\":"));
    }

    #[test]
    fn identity_fields_follow_the_cookie_however_long() {
        use crate::kernel::identity::{Container, Kind, NetnsIdentity, Runtime};
        let long = "p".repeat(253);
        let id = NetnsIdentity {
            cookie: 4097,
            kind: Kind::Pod {
                namespace: Some("shop".into()),
                name: Some(long.clone()),
                uid: "0b4c2d1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".into(),
                containers: vec![Container { runtime: Runtime::Containerd, id: "a".repeat(64), name: Some(long) }],
            },
        };
        let mut lines = TransitionLines::new();
        lines.set_identities([(4097, id.json_fragment().into())].into());
        let mut buf = Vec::new();
        for i in 0..200 {
            let ev = event(i);
            buf.clear();
            lines.push(&mut buf, &ev).unwrap();
            let parsed: Value = serde_json::from_slice(&buf).unwrap();
            let mut want = output::json(&decode::transition(&ev).unwrap());
            if ev.netns_cookie == 4097 {
                id.insert_into(want.as_object_mut().unwrap());
                let text = std::str::from_utf8(&buf).unwrap();
                let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
                assert!(at("netns_cookie") < at("netns") && at("container_id") < at("family"), "{text}");
            }
            assert_eq!(parsed, want, "event {i}: {}", String::from_utf8_lossy(&buf));
        }
        assert!(lines.identity(4097).starts_with(b",\"netns\":\"pod:shop/"));
        assert!(lines.identity(4096).is_empty());
    }
}
