//! A listener's child reported before it has its addresses: on older kernels (5.10)
//! `inet_csk_clone_lock()` sets `TCP_SYN_RECV` before it copies the request's addresses into the
//! child, so the tracepoint's `LISTEN -> SYN_RECV` shows the listener's tuple (remote `0.0.0.0:0`).
//! That event is held back until the child's next transition (which has the right tuple, a few
//! microseconds later) and given its addresses then. On kernels that set the state after the
//! addresses nothing is ever held.
//!
//! With peer or port filters on, the kernel passes such an event without checking them (it cannot
//! yet) and filters the child's later transitions: a held event whose next transition never comes
//! belonged to a child the filters drop, so it is dropped too ([`ChildAddrs::filtered`]).

use std::collections::HashMap;

use twreset_common::{Event, kind, tcp_state};

/// Held events beyond this many are let through unchanged (a bound, never reached in practice:
/// a child leaves SYN_RECV in the same softirq).
const MAX_HELD: usize = 4096;

/// A held event older than this (kernel time) when its socket's next event comes belongs to an
/// earlier child at the same address (filtered mode only: otherwise every next event arrives).
const STALE_NS: u64 = 1_000_000_000;

/// Held `LISTEN -> SYN_RECV` events by socket address.
#[derive(Debug, Default)]
pub struct ChildAddrs {
    held: HashMap<u64, Event>,
    /// The kernel's peer or port filter is on: a held event is only ever emitted with its
    /// child's next transition (which passed the filters), never unchanged.
    filtered: bool,
}

fn unaddressed(ev: &Event) -> bool {
    ev.kind == kind::STATE
        && ev.oldstate == tcp_state::LISTEN
        && ev.newstate == tcp_state::SYN_RECV
        && ev.dport == 0
        && (ev.daddr.iter().all(|&b| b == 0) || is_mapped_zero(&ev.daddr))
}

fn is_mapped_zero(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff && a[12..].iter().all(|&b| b == 0)
}

impl ChildAddrs {
    /// For a session whose kernel side filters by peer or port (see the module doc).
    pub fn filtered() -> Self {
        Self { held: HashMap::new(), filtered: true }
    }

    /// Pass `ev` on through `emit`, after the held event of the same socket (given `ev`'s
    /// addresses); a child's unaddressed `LISTEN -> SYN_RECV` is held instead.
    pub fn feed<E>(&mut self, ev: Event, emit: &mut impl FnMut(&Event) -> Result<(), E>) -> Result<(), E> {
        if ev.kind == kind::STATE
            && let Some(mut held) = self.held.remove(&ev.skaddr)
        {
            // The child's own next transition leaves SYN_RECV. Anything else at its address
            // (another unaddressed child, a client socket) is a newer socket there: the held one
            // was an earlier child whose later transitions never came (filtered out).
            let stale = self.filtered && ev.ts_ns.saturating_sub(held.ts_ns) > STALE_NS;
            if ev.oldstate == tcp_state::SYN_RECV && !stale {
                held.saddr = ev.saddr;
                held.daddr = ev.daddr;
                held.dport = ev.dport;
                held.sport = ev.sport;
                emit(&held)?;
            } else if !self.filtered {
                emit(&held)?;
            }
        }
        if unaddressed(&ev) {
            if self.filtered && self.held.len() >= MAX_HELD {
                self.held.retain(|_, h| ev.ts_ns.saturating_sub(h.ts_ns) <= STALE_NS);
            }
            if self.held.len() < MAX_HELD {
                self.held.insert(ev.skaddr, ev);
                return Ok(());
            }
            if self.filtered {
                // Cannot tell whether it matches the filters: never shown unchecked.
                return Ok(());
            }
        }
        emit(&ev)
    }

    /// Pass on whatever is still held, unchanged (at the end of a session), oldest first; in
    /// filtered mode drop it (those children never passed the filters).
    pub fn flush<E>(&mut self, emit: &mut impl FnMut(&Event) -> Result<(), E>) -> Result<(), E> {
        let mut rest: Vec<Event> = self.held.drain().map(|(_, e)| e).collect();
        if self.filtered {
            return Ok(());
        }
        rest.sort_by_key(|e| e.ts_ns);
        rest.iter().try_for_each(emit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sk: u64, old: u32, new: u32, daddr: u8, dport: u16) -> Event {
        let mut e = Event {
            ts_ns: sk,
            netns_cookie: 1,
            skaddr: sk,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 80,
            dport,
            family: twreset_common::AF_INET,
            kind: kind::STATE,
            oldstate: old,
            newstate: new,
            aux: 0,
        };
        e.daddr[10] = 0xff;
        e.daddr[11] = 0xff;
        e.daddr[15] = daddr;
        e
    }

    #[test]
    fn child_gets_its_addresses_from_its_next_transition() {
        let mut f = ChildAddrs::default();
        let mut out = Vec::new();
        let mut emit = |e: &Event| -> Result<(), ()> {
            out.push(*e);
            Ok(())
        };
        f.feed(ev(1, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0), &mut emit).unwrap();
        f.feed(ev(2, tcp_state::CLOSE, tcp_state::SYN_SENT, 9, 80), &mut emit).unwrap();
        f.feed(ev(1, tcp_state::SYN_RECV, tcp_state::ESTABLISHED, 7, 4000), &mut emit).unwrap();
        // An already addressed child passes at once.
        f.feed(ev(3, tcp_state::LISTEN, tcp_state::SYN_RECV, 8, 5000), &mut emit).unwrap();
        f.feed(ev(4, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0), &mut emit).unwrap();
        f.flush(&mut emit).unwrap();
        let got: Vec<(u64, u32, u8, u16)> = out.iter().map(|e| (e.skaddr, e.newstate, e.daddr[15], e.dport)).collect();
        assert_eq!(
            got,
            [
                (2, tcp_state::SYN_SENT, 9, 80),
                (1, tcp_state::SYN_RECV, 7, 4000),
                (1, tcp_state::ESTABLISHED, 7, 4000),
                (3, tcp_state::SYN_RECV, 8, 5000),
                (4, tcp_state::SYN_RECV, 0, 0),
            ]
        );
    }

    #[test]
    fn filtered_mode_drops_children_whose_next_transition_never_comes() {
        let mut f = ChildAddrs::filtered();
        let mut out = Vec::new();
        let mut emit = |e: &Event| -> Result<(), ()> {
            out.push(*e);
            Ok(())
        };
        // Child 1 matches: its next transition passed the kernel's filters.
        f.feed(ev(1, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0), &mut emit).unwrap();
        let mut next = ev(1, tcp_state::SYN_RECV, tcp_state::ESTABLISHED, 7, 4000);
        next.ts_ns = 2;
        f.feed(next, &mut emit).unwrap();
        // Child 5 does not (its next transition never arrives); child 6 reuses its address
        // after more than a second: 5's held event is not given 6's addresses.
        let mut old = ev(5, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0);
        old.skaddr = 9;
        f.feed(old, &mut emit).unwrap();
        let mut late = ev(5 + STALE_NS + 1, tcp_state::CLOSE, tcp_state::SYN_SENT, 8, 5000);
        late.skaddr = 9;
        f.feed(late, &mut emit).unwrap();
        // Child 7's transitions are filtered out; child 8 gets its address at once: neither shows.
        let mut first = ev(10, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0);
        first.skaddr = 7;
        f.feed(first, &mut emit).unwrap();
        let mut second = ev(11, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0);
        second.skaddr = 7;
        f.feed(second, &mut emit).unwrap();
        // Child 12 is filtered out; a client socket then gets its address and passes: the
        // held event is not given the client's tuple.
        let mut child = ev(20, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0);
        child.skaddr = 12;
        f.feed(child, &mut emit).unwrap();
        let mut client = ev(21, tcp_state::CLOSE, tcp_state::SYN_SENT, 6, 7004);
        client.skaddr = 12;
        f.feed(client, &mut emit).unwrap();
        // Child 3 never shows again: dropped at the end, not shown with the listener's tuple.
        f.feed(ev(3, tcp_state::LISTEN, tcp_state::SYN_RECV, 0, 0), &mut emit).unwrap();
        f.flush(&mut emit).unwrap();
        let got: Vec<(u64, u32, u8, u16)> = out.iter().map(|e| (e.skaddr, e.newstate, e.daddr[15], e.dport)).collect();
        assert_eq!(
            got,
            [
                (1, tcp_state::SYN_RECV, 7, 4000),
                (1, tcp_state::ESTABLISHED, 7, 4000),
                (9, tcp_state::SYN_SENT, 8, 5000),
                (12, tcp_state::SYN_SENT, 6, 7004)
            ],
            "{out:?}"
        );
    }
}
