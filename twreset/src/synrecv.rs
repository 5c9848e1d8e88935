//! A listener's child reported before it has its addresses: on older kernels (5.10)
//! `inet_csk_clone_lock()` sets `TCP_SYN_RECV` before it copies the request's addresses into the
//! child, so the tracepoint's `LISTEN -> SYN_RECV` shows the listener's tuple (remote `0.0.0.0:0`).
//! That event is held back until the child's next transition (which has the right tuple, a few
//! microseconds later) and given its addresses then. On kernels that set the state after the
//! addresses nothing is ever held.

use std::collections::HashMap;

use twreset_common::{Event, kind, tcp_state};

/// Held events beyond this many are let through unchanged (a bound, never reached in practice:
/// a child leaves SYN_RECV in the same softirq).
const MAX_HELD: usize = 4096;

/// Held `LISTEN -> SYN_RECV` events by socket address.
#[derive(Debug, Default)]
pub struct ChildAddrs {
    held: HashMap<u64, Event>,
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
    /// Pass `ev` on through `emit`, after the held event of the same socket (given `ev`'s
    /// addresses); a child's unaddressed `LISTEN -> SYN_RECV` is held instead.
    pub fn feed<E>(&mut self, ev: Event, emit: &mut impl FnMut(&Event) -> Result<(), E>) -> Result<(), E> {
        if ev.kind == kind::STATE
            && let Some(mut held) = self.held.remove(&ev.skaddr)
        {
            held.saddr = ev.saddr;
            held.daddr = ev.daddr;
            held.dport = ev.dport;
            held.sport = ev.sport;
            emit(&held)?;
        }
        if unaddressed(&ev) && self.held.len() < MAX_HELD {
            self.held.insert(ev.skaddr, ev);
            return Ok(());
        }
        emit(&ev)
    }

    /// Pass on whatever is still held, unchanged (at the end of a session), oldest first.
    pub fn flush<E>(&mut self, emit: &mut impl FnMut(&Event) -> Result<(), E>) -> Result<(), E> {
        let mut rest: Vec<Event> = self.held.drain().map(|(_, e)| e).collect();
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
}
