//! Allocation-free NDJSON lines appended to one reusable buffer: [`transition`] for `trace`'s
//! transitions, [`Line`] for other objects built key by key, values written by [`line::Writer`]
//! (core::fmt costs several times more per event, see the bench's tracer CPU figures).

pub mod line;
pub mod transition;

use std::net::IpAddr;

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
        line::push_line(self.buf, |w| w.u64(v));
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.buf.extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    /// Fields already written as JSON, each starting with `,` (nothing for an empty slice).
    pub fn raw(&mut self, fields: &[u8]) -> &mut Self {
        debug_assert!(fields.is_empty() || (!self.first && fields[0] == b','));
        self.buf.extend_from_slice(fields);
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
        line::push_line(self.buf, |w| {
            w.bytes(b"\"");
            w.ip(ip);
            w.bytes(b"\"");
        });
        self
    }

    /// `"0x..."`, as `{:#x}` writes it.
    pub fn hex(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        line::push_line(self.buf, |w| {
            w.bytes(b"\"0x");
            w.hex(v);
            w.bytes(b"\"");
        });
        self
    }

    /// Close the object and end the line.
    pub fn end(&mut self) {
        self.buf.extend_from_slice(b"}\n");
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
            Line::new(&mut buf).ip("a", ip.parse().unwrap());
            assert_eq!(String::from_utf8(buf).unwrap(), format!("{{\"a\":\"{ip}\""));
        }
    }
}
