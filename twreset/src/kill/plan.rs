//! Pure planning: from one dump (a consistent snapshot) to the exact, ordered list of sockets a
//! kill will touch. Nothing that appears after the dump can enter the plan.

use crate::{diag::Entry, kill::select::Selector};

/// The sockets of `snapshot` that `sel` selects, oldest TIME_WAIT first (smallest remaining
/// timer), then full sockets in address order; at most `limit` of them.
pub fn plan(snapshot: Vec<Entry>, sel: &Selector, limit: Option<usize>) -> Vec<Entry> {
    let mut chosen: Vec<Entry> = snapshot
        .into_iter()
        .filter(|e| sel.matches(&e.sock))
        .collect();
    // A dump can list a socket twice when it moves between hash buckets mid-walk; kill it once.
    chosen.sort_by_key(|e| e.sock.key);
    chosen.dedup_by(|a, b| a.sock.key == b.sock.key);
    // Stable: equal ranks stay in address order.
    chosen.sort_by_key(|e| {
        (
            !e.sock.timewait,
            if e.sock.timewait {
                e.sock.expires_ms
            } else {
                0
            },
        )
    });
    if let Some(n) = limit {
        chosen.truncate(n);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kill::select::tests::sock,
        kill::select::{Endpoint, States, parse_endpoint},
        state::TcpState,
    };

    fn entry(l: &str, r: &str, state: TcpState, tw: bool, expires: u32) -> Entry {
        Entry {
            sock: sock(l, r, state, tw, expires),
            ifindex: 0,
        }
    }

    fn peers(p: &[&str]) -> Vec<Endpoint> {
        p.iter()
            .map(|s| parse_endpoint(s, false).unwrap())
            .collect()
    }

    #[test]
    fn filters_orders_and_limits() {
        let snap = vec![
            entry(
                "10.0.0.1:1",
                "10.0.0.2:80",
                TcpState::TimeWait,
                true,
                50_000,
            ),
            entry(
                "10.0.0.1:2",
                "10.0.0.2:80",
                TcpState::TimeWait,
                true,
                10_000,
            ),
            entry("10.0.0.1:3", "10.0.0.9:80", TcpState::TimeWait, true, 1_000),
            entry("10.0.0.1:4", "10.0.0.2:80", TcpState::Established, false, 0),
            entry(
                "10.0.0.1:5",
                "10.0.0.2:80",
                TcpState::FinWait2,
                true,
                30_000,
            ),
        ];
        let sel = Selector::new(
            peers(&["10.0.0.2"]),
            vec![],
            vec![],
            States::TimeWait,
            None,
            false,
        )
        .unwrap();
        let p = plan(snap.clone(), &sel, None);
        let ports: Vec<u16> = p.iter().map(|e| e.sock.key.lport).collect();
        assert_eq!(
            ports,
            vec![2, 5, 1],
            "oldest (least time left) first, FIN_WAIT2-substate included"
        );
        let p = plan(snap.clone(), &sel, Some(2));
        assert_eq!(
            p.iter().map(|e| e.sock.key.lport).collect::<Vec<_>>(),
            vec![2, 5]
        );
        assert!(plan(snap.clone(), &sel, Some(0)).is_empty());
        let any = Selector::new(
            peers(&["10.0.0.2"]),
            vec![],
            vec![],
            States::Any,
            None,
            false,
        )
        .unwrap();
        let p = plan(snap, &any, None);
        assert_eq!(
            p.iter().map(|e| e.sock.key.lport).collect::<Vec<_>>(),
            vec![2, 5, 1, 4],
            "full sockets after tw"
        );
    }

    #[test]
    fn duplicates_from_the_dump_are_killed_once() {
        let e = entry(
            "10.0.0.1:1",
            "10.0.0.2:80",
            TcpState::TimeWait,
            true,
            50_000,
        );
        let sel = Selector::new(vec![], vec![80], vec![], States::TimeWait, None, false).unwrap();
        assert_eq!(plan(vec![e.clone(), e], &sel, None).len(), 1);
    }
}
