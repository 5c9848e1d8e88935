//! Allocation-free NDJSON lines for the hot `trace --json` path: integers with `itoa`, IPv4
//! addresses by hand, everything appended to one reusable buffer (core::fmt costs several times
//! more per event, see the bench's tracer CPU figures).

pub mod line;

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr},
};

/// One JSON object being appended to `buf`; keys and string values must need no escaping.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Line<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        push_u64(self.buf, v);
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.buf.extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    /// A string known to need no escaping (names, addresses, hex).
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.buf.push(b'"');
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(b'"');
        self
    }

    pub fn ip(&mut self, k: &str, ip: IpAddr) -> &mut Self {
        self.key(k);
        self.buf.push(b'"');
        push_ip(self.buf, ip);
        self.buf.push(b'"');
        self
    }

    /// `"0x..."`, as `{:#x}` writes it.
    pub fn hex(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.buf.push(b'"');
        push_hex(self.buf, v);
        self.buf.push(b'"');
        self
    }

    /// Close the object and end the line.
    pub fn end(&mut self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// Append `v` in decimal.
pub fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Append `ip` (IPv4 dotted, IPv6 in its canonical form), unquoted.
pub fn push_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_v4(buf, v4),
        // Display is the canonical RFC 5952 form; IPv6 is not the hot case.
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// Append `0x` and `v` in lowercase hex, as `{:#x}` writes it.
pub fn push_hex(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(b"0x");
    let digits = if v == 0 { 1 } else { (64 - v.leading_zeros()).div_ceil(4) };
    for i in (0..digits).rev() {
        buf.push(b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn push_v4(buf: &mut Vec<u8>, v4: Ipv4Addr) {
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        buf.extend_from_slice(itoa::Buffer::new().format(o).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_serde_json_reads() {
        let mut buf = Vec::new();
        Line::new(&mut buf)
            .u64("a", u64::MAX)
            .u64("z", 0)
            .bool("t", true)
            .bool("f", false)
            .str("s", "FIN_WAIT2")
            .ip("v4", "10.200.0.255".parse().unwrap())
            .ip("v6", "fd00::1".parse().unwrap())
            .hex("h0", 0)
            .hex("h", 0xffff_8881_0a2b_3c40)
            .end();
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": u64::MAX, "z": 0, "t": true, "f": false, "s": "FIN_WAIT2", "v4": "10.200.0.255",
                               "v6": "fd00::1", "h0": "0x0", "h": "0xffff88810a2b3c40"})
        );
        for ip in ["0.0.0.0", "255.255.255.255", "127.0.0.1", "1.22.123.4"] {
            let mut buf = Vec::new();
            push_v4(&mut buf, ip.parse().unwrap());
            assert_eq!(String::from_utf8(buf).unwrap(), ip);
        }
    }
}
