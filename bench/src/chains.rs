//! Each socket's transitions in `twreset trace --json` output, followed in order: a count of events
//! the tool repeated and of gaps in a socket's life. Totals alone cannot show a transition printed
//! twice where another is missing; the chains do.

use std::collections::HashMap;

/// What the chains of one output showed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chains {
    /// Events whose socket had just made the same transition: printed twice.
    pub repeated: u64,
    /// Events whose old state is not where the socket's previous event left it: something in
    /// between was not printed (by the tool, or never reported by the kernel).
    pub gaps: u64,
}

/// Follows sockets (by kernel address; an address is reused once its socket is gone).
#[derive(Default)]
pub struct Follow {
    last: HashMap<u64, (u8, u8)>,
    pub chains: Chains,
}

const CLOSE: u8 = 7;
const LISTEN: u8 = 10;

fn state(name: &str) -> Option<u8> {
    Some(match name {
        "ESTABLISHED" => 1,
        "SYN_SENT" => 2,
        "SYN_RECV" => 3,
        "FIN_WAIT1" => 4,
        "FIN_WAIT2" => 5,
        "TIME_WAIT" => 6,
        "CLOSE" => CLOSE,
        "CLOSE_WAIT" => 8,
        "LAST_ACK" => 9,
        "LISTEN" => LISTEN,
        "CLOSING" => 11,
        "NEW_SYN_RECV" => 12,
        _ => return None,
    })
}

/// The string value of `"key":"..."` in a flat JSON line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let rest = line.get(at..)?.strip_prefix("\":\"")?;
    rest.get(..rest.find('"')?)
}

impl Follow {
    /// One NDJSON transition line; other lines are ignored.
    pub fn line(&mut self, line: &str) {
        let (Some(sk), Some(old), Some(new)) = (field(line, "\"sk"), field(line, "\"old"), field(line, "\"new")) else {
            return;
        };
        let (Ok(sk), Some(old), Some(new)) =
            (u64::from_str_radix(sk.trim_start_matches("0x"), 16), state(old), state(new))
        else {
            return;
        };
        if let Some(&(p_old, p_new)) = self.last.get(&sk) {
            // A new socket at a reused address starts from CLOSE (connect, listen) or from its
            // listener's LISTEN (a passive open).
            let starts = p_new == CLOSE && (old == CLOSE || old == LISTEN);
            if (p_old, p_new) == (old, new) {
                self.chains.repeated += 1;
            } else if p_new != old && !starts {
                self.chains.gaps += 1;
            }
        }
        self.last.insert(sk, (old, new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sk: &str, old: &str, new: &str) -> String {
        format!("{{\"ts_ns\":1,\"old\":\"{old}\",\"new\":\"{new}\",\"time_wait\":false,\"sk\":\"{sk}\"}}")
    }

    #[test]
    fn repeats_and_gaps() {
        let mut f = Follow::default();
        for (sk, o, n) in [
            ("0xa", "CLOSE", "SYN_SENT"),
            ("0xa", "SYN_SENT", "ESTABLISHED"),
            ("0xa", "ESTABLISHED", "FIN_WAIT1"),
            ("0xa", "ESTABLISHED", "FIN_WAIT1"), // repeated
            ("0xa", "FIN_WAIT2", "CLOSE"),       // FIN_WAIT1 -> FIN_WAIT2 missing
            ("0xa", "LISTEN", "SYN_RECV"),       // the address reused by a passive open
            ("0xa", "SYN_RECV", "ESTABLISHED"),
            ("0xb", "FIN_WAIT1", "FIN_WAIT2"), // first sight of 0xb: nothing to compare
        ] {
            f.line(&line(sk, o, n));
        }
        f.line("{\"event\":\"tw_start\",\"sk\":\"0xa\"}");
        assert_eq!(f.chains, Chains { repeated: 1, gaps: 1 });
    }
}
