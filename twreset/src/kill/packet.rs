//! Pure construction of bare TCP RST packets (IPv4 or IPv6 header included, checksums
//! computed) for raw-socket injection.

use std::net::{IpAddr, SocketAddr};

const TCP_LEN: usize = 20;
const RST: u8 = 0x04;
const IPPROTO_TCP: u8 = 6;

/// Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tcp_header(src: u16, dst: u16, seq: u32) -> [u8; TCP_LEN] {
    let mut t = [0u8; TCP_LEN];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4; // data offset: 5 words, no options (so no timestamp for PAWS to reject)
    t[13] = RST;
    t
}

/// A RST from `src` to `dst` with sequence number `seq`, as a full IP packet.
/// Returns None when the two addresses are of different families.
pub fn rst(src: SocketAddr, dst: SocketAddr, seq: u32) -> Option<Vec<u8>> {
    let mut tcp = tcp_header(src.port(), dst.port(), seq);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (s, d) = (s.octets(), d.octets());
            let pseudo = [0, IPPROTO_TCP, 0, TCP_LEN as u8];
            let c = checksum(&[&s, &d, &pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(40u16).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = IPPROTO_TCP;
            ip[12..16].copy_from_slice(&s);
            ip[16..20].copy_from_slice(&d);
            let c = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            Some([&ip[..], &tcp[..]].concat())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (s, d) = (s.octets(), d.octets());
            let pseudo = [0, 0, 0, TCP_LEN as u8, 0, 0, 0, IPPROTO_TCP];
            let c = checksum(&[&s, &d, &pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
            ip[6] = IPPROTO_TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s);
            ip[24..40].copy_from_slice(&d);
            Some([&ip[..], &tcp[..]].concat())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum its complement.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
        // Split across parts at an odd boundary gives the same result.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2], &[0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
    }

    #[test]
    fn v4_rst_verifies() {
        let p = rst(
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:40000".parse().unwrap(),
            0xdead_beef,
        )
        .unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(checksum(&[&p[..20]]), 0, "IP header checksum");
        let pseudo = [&p[12..20], &[0, 6, 0, 20][..], &p[20..]];
        assert_eq!(checksum(&pseudo), 0, "TCP checksum");
        assert_eq!(&p[20..22], &80u16.to_be_bytes());
        assert_eq!(&p[22..24], &40000u16.to_be_bytes());
        assert_eq!(&p[24..28], &0xdead_beefu32.to_be_bytes());
        assert_eq!(p[33], RST);
    }

    #[test]
    fn v6_rst_verifies() {
        let p = rst(
            "[fd00::2]:80".parse().unwrap(),
            "[fd00::1]:40000".parse().unwrap(),
            7,
        )
        .unwrap();
        assert_eq!(p.len(), 60);
        assert_eq!(p[0] >> 4, 6);
        let pseudo = [&p[8..40], &[0, 0, 0, 20, 0, 0, 0, 6][..], &p[40..]];
        assert_eq!(checksum(&pseudo), 0, "TCP checksum");
        assert!(
            rst(
                "[fd00::2]:80".parse().unwrap(),
                "10.0.0.1:1".parse().unwrap(),
                7
            )
            .is_none()
        );
    }
}
