//! Compact table keys: namespace cookies and local addresses interned to u32, remote address packed.
//!
//! A [`SockKey`] is 48 bytes (two `IpAddr`s and a u64); a [`Key`] is 28, and the table stores an
//! IPv4 socket's in 16 (`store.rs`). A local address's id carries its family ([`LOCAL_V6`]).

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::sock::SockKey;

/// Values seen so far, each given a stable small id. Never shrinks: namespaces and local
/// addresses are few, so the ids stay small and the table keys stay compact.
#[derive(Debug, Clone)]
pub(crate) struct Interner<T> {
    ids: HashMap<T, u32, super::FastHash>,
    vals: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self { ids: HashMap::default(), vals: Vec::new() }
    }
}

impl<T: Hash + Eq + Copy> Interner<T> {
    pub fn intern(&mut self, v: T) -> u32 {
        if let Some(id) = self.ids.get(&v) {
            return *id;
        }
        let id = self.vals.len() as u32;
        self.vals.push(v);
        self.ids.insert(v, id);
        id
    }

    pub fn get(&self, v: &T) -> Option<u32> {
        self.ids.get(v).copied()
    }

    pub fn len(&self) -> usize {
        self.vals.len()
    }

    pub fn value(&self, id: u32) -> T {
        self.vals[id as usize]
    }
}

/// IPv4 addresses are stored IPv4-mapped; the family comes back from the interned local address
/// (both ends of a socket share a family), so `10.0.0.1` and `::ffff:10.0.0.1` stay distinct.
pub(crate) fn pack(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(crate) fn unpack(raw: [u8; 16], v4: bool) -> IpAddr {
    if v4 { IpAddr::V4(Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15])) } else { IpAddr::V6(Ipv6Addr::from(raw)) }
}

/// The bit of a local address id that says it is an IPv6 address (the socket's family: both ends
/// of a socket share one). Ids below it are dense.
pub(crate) const LOCAL_V6: u32 = 1 << 31;

/// A tracked socket's identity inside the table (28 bytes, alignment 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub ns: u32,
    pub laddr: u32,
    pub raddr: [u8; 16],
    pub lport: u16,
    pub rport: u16,
}

/// A destination inside the table: the tuple whose ephemeral ports run out together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DestKey {
    pub ns: u32,
    pub laddr: u32,
    pub raddr: [u8; 16],
    pub rport: u16,
}

impl Key {
    /// An IPv4 socket (its remote address is stored IPv4-mapped)?
    pub fn is_v4(&self) -> bool {
        self.laddr & LOCAL_V6 == 0
    }

    pub fn dest(&self) -> DestKey {
        DestKey { ns: self.ns, laddr: self.laddr, raddr: self.raddr, rport: self.rport }
    }
}

/// The interners that turn [`SockKey`]s into [`Key`]s and back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keys {
    ns: Interner<u64>,
    local: Interner<IpAddr>,
}

impl Keys {
    /// The compact key, interning new namespaces and local addresses.
    pub fn intern(&mut self, k: &SockKey) -> Key {
        let laddr = self.local.intern(k.laddr);
        assert!(laddr < LOCAL_V6, "2^31 local addresses");
        Key {
            ns: self.ns.intern(k.netns_cookie),
            laddr: laddr | family_bit(k.laddr),
            raddr: pack(k.raddr),
            lport: k.lport,
            rport: k.rport,
        }
    }

    /// The compact key if it can be in the table at all (no interning: lookups must not grow it).
    pub fn lookup(&self, k: &SockKey) -> Option<Key> {
        Some(Key {
            ns: self.ns.get(&k.netns_cookie)?,
            laddr: self.local.get(&k.laddr)? | family_bit(k.laddr),
            raddr: pack(k.raddr),
            lport: k.lport,
            rport: k.rport,
        })
    }

    /// Namespaces interned so far; their ids are `0..ns_count()`.
    pub fn ns_count(&self) -> u32 {
        self.ns.len() as u32
    }

    pub fn netns(&self, id: u32) -> u64 {
        self.ns.value(id)
    }

    pub fn local(&self, id: u32) -> IpAddr {
        self.local.value(id & !LOCAL_V6)
    }

    pub fn remote(&self, laddr: u32, raddr: [u8; 16]) -> IpAddr {
        unpack(raddr, laddr & LOCAL_V6 == 0)
    }

    pub fn sock_key(&self, k: &Key) -> SockKey {
        SockKey {
            netns_cookie: self.netns(k.ns),
            laddr: self.local(k.laddr),
            lport: k.lport,
            raddr: self.remote(k.laddr, k.raddr),
            rport: k.rport,
        }
    }
}

fn family_bit(laddr: IpAddr) -> u32 {
    if laddr.is_ipv4() { 0 } else { LOCAL_V6 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sk(ns: u64, l: &str, lp: u16, r: &str, rp: u16) -> SockKey {
        SockKey { netns_cookie: ns, laddr: l.parse().unwrap(), lport: lp, raddr: r.parse().unwrap(), rport: rp }
    }

    #[test]
    fn key_is_compact() {
        assert_eq!(size_of::<Key>(), 28);
        assert_eq!(align_of::<Key>(), 4);
    }

    #[test]
    fn round_trips_every_family_form() {
        let mut keys = Keys::default();
        for k in [
            sk(1, "10.0.0.1", 40000, "10.0.0.2", 80),
            sk(2, "fd00::1", 1, "fd00::2", 65535),
            sk(1, "::ffff:10.0.0.1", 40000, "::ffff:10.0.0.2", 80),
            sk(u64::MAX, "0.0.0.0", 0, "255.255.255.255", 0),
        ] {
            let c = keys.intern(&k);
            assert_eq!(keys.sock_key(&c), k);
            assert_eq!(keys.lookup(&k), Some(c));
        }
        // Mapped and plain IPv4 are different sockets (as `ss` shows them).
        assert_ne!(
            keys.lookup(&sk(1, "10.0.0.1", 40000, "10.0.0.2", 80)),
            keys.lookup(&sk(1, "::ffff:10.0.0.1", 40000, "::ffff:10.0.0.2", 80))
        );
    }

    #[test]
    fn lookup_does_not_intern() {
        let mut keys = Keys::default();
        assert_eq!(keys.lookup(&sk(7, "10.0.0.1", 1, "10.0.0.2", 2)), None);
        keys.intern(&sk(7, "10.0.0.1", 1, "10.0.0.2", 2));
        assert_eq!(keys.lookup(&sk(8, "10.0.0.1", 1, "10.0.0.2", 2)), None);
        assert_eq!(keys.lookup(&sk(7, "10.0.0.9", 1, "10.0.0.2", 2)), None);
        assert!(keys.lookup(&sk(7, "10.0.0.1", 9, "10.9.9.9", 9)).is_some());
    }

    #[test]
    fn interner_ids_are_dense_and_stable() {
        let mut i = Interner::default();
        assert_eq!(i.intern(5u64), 0);
        assert_eq!(i.intern(9u64), 1);
        assert_eq!(i.intern(5u64), 0);
        assert_eq!(i.value(1), 9);
        assert_eq!(i.get(&3), None);
    }
}
