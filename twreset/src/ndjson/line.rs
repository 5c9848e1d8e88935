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

/// "00" to "ff".
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    t
};

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

/// `v < 10^8` as exactly eight digits, leading zeros included.
#[inline(always)]
fn eight(v: u32) -> [u8; 8] {
    let (hi, lo) = (v / 10_000, v % 10_000);
    let mut out = [0u8; 8];
    for (i, d) in [hi / 100, hi % 100, lo / 100, lo % 100].into_iter().enumerate() {
        out[2 * i] = PAIRS[d as usize * 2];
        out[2 * i + 1] = PAIRS[d as usize * 2 + 1];
    }
    out
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

    /// Write all `N` bytes of `src` but count only the first `len`: one fixed-size copy instead
    /// of a call for a variable one. What lies past `len` is overwritten by what follows, or is
    /// past the end of the line.
    #[inline(always)]
    pub fn padded<const N: usize>(&mut self, src: &[u8; N], len: usize) {
        debug_assert!(len <= N);
        self.out[self.n..self.n + N].write_copy_of_slice(src);
        self.n += len.min(N);
    }

    /// `v` in decimal, up to 8 digits at a time: a long number (a timestamp) is a few independent
    /// 32-bit steps rather than one chain of 64-bit divisions.
    #[inline]
    pub fn u64(&mut self, v: u64) {
        const E8: u64 = 100_000_000;
        if v < E8 {
            self.upto8(v as u32);
        } else if v < E8 * E8 {
            self.upto8((v / E8) as u32);
            self.padded(&eight((v % E8) as u32), 8);
        } else {
            let (hi, rest) = (v / (E8 * E8), v % (E8 * E8));
            self.upto8(hi as u32);
            self.padded(&eight((rest / E8) as u32), 8);
            self.padded(&eight((rest % E8) as u32), 8);
        }
    }

    /// `v < 10^8` in decimal without leading zeros.
    #[inline]
    fn upto8(&mut self, v: u32) {
        let len = dec_len(v.into());
        // Drop the leading zeros by a shift in a register (a load at an offset into the digits
        // just stored stalls the store forwarding).
        let digits = u64::from_le_bytes(eight(v)) >> ((8 - len) * 8);
        self.padded(&digits.to_le_bytes(), len);
    }

    /// `v` in lowercase hex without leading zeros (`0` for zero), no prefix: all 16 digits a byte
    /// at a time from a table, the significant ones copied.
    #[inline]
    pub fn hex(&mut self, v: u64) {
        let len = if v == 0 { 1 } else { (64 - v.leading_zeros() as usize).div_ceil(4) };
        let mut d = [0u8; 16];
        for (i, b) in v.to_be_bytes().into_iter().enumerate() {
            d[2 * i..2 * i + 2].copy_from_slice(&HEX_PAIRS[b as usize]);
        }
        let digits = u128::from_le_bytes(d) >> ((16 - len) * 8);
        self.padded(&digits.to_le_bytes(), len);
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
