//! One output line written straight into a `Vec<u8>`'s spare capacity: literals, decimal and hex
//! integers and IPv4 addresses with no allocation, no `core::fmt` and no copy call per field.
//! The hot path of `trace --json`, where formatting used to cost more than reading the event.

use std::{
    fmt,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr},
};

/// Most bytes one line may take; writing more panics.
pub const CAP: usize = 512;

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// 10^i for i in 0..20.
const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// "0." to "255.", each padded to 4 bytes, and the digit count: an IPv4 octet is one fixed-size
/// copy.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, te, o) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + te, b'0' + o, b'.'], 3)
        } else if i >= 10 {
            ([b'0' + te, b'0' + o, b'.', 0], 2)
        } else {
            ([b'0' + o, b'.', 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// Decimal digits of `v`.
#[inline]
fn dec_len(v: u64) -> usize {
    // floor(log10(v)) is within one of floor(log2(v)) * 1233 / 4096.
    let log2 = 63 - (v | 1).leading_zeros() as usize;
    let guess = (log2 * 1233) >> 12;
    guess + 1 + usize::from(guess + 1 < 20 && v >= POW10[guess + 1])
}

/// Append one line to `buf` through `f`; at most [`CAP`] bytes.
#[inline]
pub fn push_line(buf: &mut Vec<u8>, f: impl FnOnce(&mut Writer<'_>)) {
    buf.reserve(CAP);
    let old = buf.len();
    let mut w = Writer { out: &mut buf.spare_capacity_mut()[..CAP], n: 0 };
    f(&mut w);
    let n = w.n;
    // SAFETY: `Writer` only moves `n` past bytes it has written, so the first `n` spare bytes are
    // initialised, and `n <= CAP <= spare capacity`.
    unsafe { buf.set_len(old + n) };
}

/// Writes forward into spare capacity; `n` bytes are written.
pub struct Writer<'a> {
    out: &'a mut [MaybeUninit<u8>],
    n: usize,
}

impl Writer<'_> {
    #[inline(always)]
    pub fn bytes(&mut self, s: &[u8]) {
        self.out[self.n..self.n + s.len()].write_copy_of_slice(s);
        self.n += s.len();
    }

    /// `v` in decimal, digits written from the last one back, two at a time.
    #[inline]
    pub fn u64(&mut self, mut v: u64) {
        let len = dec_len(v);
        let out = &mut self.out[self.n..self.n + len];
        let mut i = len;
        while v >= 100 {
            let d = (v % 100) as usize * 2;
            v /= 100;
            i -= 2;
            out[i].write(PAIRS[d]);
            out[i + 1].write(PAIRS[d + 1]);
        }
        if v >= 10 {
            let d = v as usize * 2;
            out[i - 2].write(PAIRS[d]);
            out[i - 1].write(PAIRS[d + 1]);
        } else {
            out[i - 1].write(b'0' + v as u8);
        }
        self.n += len;
    }

    /// `v` in lowercase hex without leading zeros (`0` for zero), no prefix.
    #[inline]
    pub fn hex(&mut self, v: u64) {
        let len = if v == 0 { 1 } else { (64 - v.leading_zeros() as usize).div_ceil(4) };
        let out = &mut self.out[self.n..self.n + len];
        for (i, o) in out.iter_mut().enumerate() {
            o.write(b"0123456789abcdef"[((v >> ((len - 1 - i) * 4)) & 0xf) as usize]);
        }
        self.n += len;
    }

    /// IPv4 dotted ([`Writer::ipv4`]), IPv6 in its canonical form (core::fmt: not the hot case).
    #[inline]
    pub fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.ipv4(v4),
            IpAddr::V6(v6) => {
                let _ = fmt::Write::write_fmt(self, format_args!("{v6}"));
            }
        }
    }

    /// Dotted quad: four fixed-size copies, each octet's dot included (the last one's dot is
    /// written past the end and not counted).
    #[inline]
    pub fn ipv4(&mut self, ip: Ipv4Addr) {
        for o in ip.octets() {
            let (text, len) = &OCTETS[o as usize];
            self.out[self.n..self.n + 4].write_copy_of_slice(text);
            self.n += *len as usize + 1;
        }
        self.n -= 1;
    }
}

/// For what is not hot (IPv6 addresses): `write!` through `core::fmt`.
impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    fn line(f: impl FnOnce(&mut Writer<'_>)) -> String {
        let mut buf = b"prefix:".to_vec();
        push_line(&mut buf, f);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn integers_match_std_at_every_length_and_edge() {
        let mut values = vec![0, 1, 9, 10, 11, 99, 100, 101, 65535, u64::MAX, u64::MAX - 1];
        for p in POW10 {
            values.extend([p - 1, p, p + 1]);
        }
        values.extend((0..2000).map(|i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 64)));
        for v in values {
            assert_eq!(line(|w| w.u64(v)), format!("prefix:{v}"), "decimal {v}");
            assert_eq!(line(|w| w.hex(v)), format!("prefix:{v:x}"), "hex {v}");
            assert_eq!(dec_len(v), v.to_string().len());
        }
    }

    #[test]
    fn addresses_literals_and_fmt_compose() {
        for ip in ["0.0.0.0", "255.255.255.255", "127.0.0.1", "1.22.123.4", "10.0.100.9"] {
            assert_eq!(line(|w| w.ipv4(ip.parse().unwrap())), format!("prefix:{ip}"));
        }
        for o in 0..=255u8 {
            for ip in [Ipv4Addr::new(o, 1, o, 9), Ipv4Addr::new(9, o, 100, o)] {
                assert_eq!(line(|w| w.ipv4(ip)), format!("prefix:{ip}"));
                assert_eq!(
                    line(|w| {
                        w.ipv4(ip);
                        w.bytes(b"\"")
                    }),
                    format!("prefix:{ip}\"")
                );
            }
        }
        let s = line(|w| {
            w.bytes(b"{\"a\":");
            w.u64(42);
            w.bytes(b",\"v6\":\"");
            write!(w, "{}", "fd00::1".parse::<std::net::Ipv6Addr>().unwrap()).unwrap();
            w.bytes(b"\"}");
        });
        assert_eq!(s, "prefix:{\"a\":42,\"v6\":\"fd00::1\"}");
    }

    #[test]
    #[should_panic]
    fn a_line_longer_than_cap_panics_instead_of_overflowing() {
        line(|w| (0..=CAP).for_each(|_| w.bytes(b"x")));
    }
}
