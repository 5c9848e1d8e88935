//! Pure parsers for the text procfs, sysfs and sysctl configuration files hand us (doctor, the live
//! table's cross-checks, the kernel's version).

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{what}: expected {expected}, got {text:?}")]
    Format { what: &'static str, expected: &'static str, text: String },
    #[error("{file}: no {section} header/value line pair")]
    Section { file: &'static str, section: &'static str },
}

fn format(what: &'static str, expected: &'static str, text: &str) -> ParseError {
    ParseError::Format { what, expected, text: text.trim().to_owned() }
}

/// One unsigned sysctl value (`"60\n"`).
pub fn number(what: &'static str, text: &str) -> Result<u64, ParseError> {
    text.trim().parse().map_err(|_| format(what, "an unsigned number", text))
}

/// `ip_local_port_range`: two numbers separated by white space (`"32768\t60999\n"`).
pub fn port_range(text: &str) -> Result<(u16, u16), ParseError> {
    let bad = || format("ip_local_port_range", "two port numbers", text);
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => Ok((lo, hi)),
        _ => Err(bad()),
    }
}

/// `ip_local_reserved_ports`: comma-separated ports and inclusive ranges (`"8080,9000-9010"`), or empty.
pub fn reserved_ports(text: &str) -> Result<Vec<(u16, u16)>, ParseError> {
    let bad = || format("ip_local_reserved_ports", "ports and ranges like 8080,9000-9010", text);
    text.trim()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let item = item.trim();
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) if a <= b => Ok((a, b)),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The `TcpExt:` counters of /proc/net/netstat (a header line of names, then a line of values).
pub fn tcp_ext(text: &str) -> Result<HashMap<String, u64>, ParseError> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(ParseError::Section { file: "/proc/net/netstat", section: "TcpExt" });
    };
    Ok(names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The `tw` field of the `TCP:` line of /proc/net/sockstat
/// (`TCP: inuse 5 orphan 0 tw 95 alloc 7 mem 1`): every TIME_WAIT socket of the namespace.
pub fn sockstat_tw(text: &str) -> Result<u64, ParseError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .ok_or(ParseError::Section { file: "/proc/net/sockstat", section: "TCP" })?;
    let f: Vec<&str> = line.split_whitespace().collect();
    f.windows(2)
        .find(|w| w[0] == "tw")
        .and_then(|w| w[1].parse().ok())
        .ok_or_else(|| format("/proc/net/sockstat TCP line", "a `tw N` field", line))
}

/// Lines of a sysctl.conf / sysctl.d file that set `key` (dotted form, e.g.
/// `net.ipv4.tcp_tw_recycle`), as (1-based line number, value). Follows sysctl.d(5): `#` and `;`
/// start comments, keys may use `/` instead of `.`, a leading `-` means "ignore failure".
pub fn sysctl_conf_sets(text: &str, key: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let k = k.trim().trim_start_matches('-').trim().replace('/', ".");
            (k == key).then(|| (i + 1, v.trim().to_owned()))
        })
        .collect()
}

/// (major, minor) of the running kernel (`/proc/sys/kernel/osrelease`), None if unreadable.
pub fn running_version() -> Option<(u32, u32)> {
    kernel_version(std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?.trim())
}

/// (major, minor) of a kernel release string (`"6.18.44-fc-v445"` -> (6, 18)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("x", "60\n"), Ok(60));
        assert_eq!(number("x", " 0 "), Ok(0));
        assert!(number("x", "-1").is_err());
        assert!(number("x", "").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("32768\t60999\n"), Ok((32768, 60999)));
        assert_eq!(port_range("40000 40099"), Ok((40000, 40099)));
        assert!(port_range("40000").is_err());
        assert!(port_range("1 2 3").is_err());
        assert!(port_range("1 70000").is_err());
    }

    #[test]
    fn reserved() {
        assert_eq!(reserved_ports("\n"), Ok(vec![]));
        assert_eq!(reserved_ports("8080,9000-9010\n"), Ok(vec![(8080, 8080), (9000, 9010)]));
        assert!(reserved_ports("9010-9000").is_err());
        assert!(reserved_ports("x").is_err());
    }

    #[test]
    fn netstat() {
        let t = "TcpExt: SyncookiesSent TWRecycled TCPTimeWaitOverflow\nTcpExt: 0 7 3\n\
                 IpExt: InNoRoutes\nIpExt: 0\n";
        let m = tcp_ext(t).unwrap();
        assert_eq!(m["TWRecycled"], 7);
        assert_eq!(m["TCPTimeWaitOverflow"], 3);
        assert!(tcp_ext("IpExt: a\nIpExt: 1\n").is_err());
        assert!(tcp_ext("TcpExt: a\n").is_err());
    }

    #[test]
    fn sockstat() {
        let t = "sockets: used 5\nTCP: inuse 1 orphan 0 tw 95 alloc 2 mem 0\nUDP: inuse 0 mem 0\n";
        assert_eq!(sockstat_tw(t), Ok(95));
        assert!(sockstat_tw("UDP: inuse 0\n").is_err());
        assert!(sockstat_tw("TCP: inuse 1 orphan 0\n").is_err());
    }

    #[test]
    fn sysctl_conf() {
        let t = "# net.ipv4.tcp_tw_recycle = 1\n\
                 ; net.ipv4.tcp_tw_recycle = 1\n\
                 net.ipv4.tcp_tw_reuse = 1\n\
                 net.ipv4.tcp_tw_recycle = 1\n\
                 \n\
                 -net/ipv4/tcp_tw_recycle=0\n\
                 net.ipv4.tcp_tw_recycle_x = 1\n";
        assert_eq!(sysctl_conf_sets(t, "net.ipv4.tcp_tw_recycle"), vec![(4, "1".to_owned()), (6, "0".to_owned())]);
        assert!(sysctl_conf_sets("", "net.ipv4.tcp_tw_recycle").is_empty());
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v445"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.0"), Some((6, 0)));
        assert_eq!(kernel_version("weird"), None);
    }
}
