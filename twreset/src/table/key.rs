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

/// Values seen so far, each given a small id that stays the value's until it is released. Ids are
/// dense: a released id goes to the next new value, so the ids, and the table keys that hold them,
/// stay small however many namespaces and addresses come and go.
#[derive(Debug, Clone)]
pub(crate) struct Interner<T> {
    ids: HashMap<T, u32, super::FastHash>,
    vals: Vec<T>,
    /// Released ids, reused first.
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self { ids: HashMap::default(), vals: Vec::new(), free: Vec::new() }
    }
}

impl<T: Hash + Eq + Copy> Interner<T> {
    pub fn intern(&mut self, v: T) -> u32 {
        if let Some(id) = self.ids.get(&v) {
            return *id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.vals[id as usize] = v;
                id
            }
            None => {
                self.vals.push(v);
                (self.vals.len() - 1) as u32
            }
        };
        self.ids.insert(v, id);
        id
    }

    pub fn get(&self, v: &T) -> Option<u32> {
        self.ids.get(v).copied()
    }

    /// The bound of the ids given so far: every live id is below it (some below may be free).
    pub fn len(&self) -> usize {
        self.vals.len()
    }

    /// Values interned and not released.
    pub fn live_len(&self) -> usize {
        self.ids.len()
    }

    /// Whether `id` names a value now (not released, not beyond [`Interner::len`]).
    pub fn is_live(&self, id: u32) -> bool {
        self.vals.get(id as usize).is_some_and(|v| self.ids.get(v) == Some(&id))
    }

    /// The value of a live id (of a released one: the value it last had).
    pub fn value(&self, id: u32) -> T {
        self.vals[id as usize]
    }

    /// Release every live id for which `keep` is false; returns how many. The caller must hold
    /// no key with such an id: the next new value gets it.
    pub fn release_unless(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        let before = self.ids.len();
        let free = &mut self.free;
        self.ids.retain(|_, id| {
            let k = keep(*id);
            if !k {
                free.push(*id);
            }
            k
        });
        // Lowest ids first: the ids in use stay dense.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        before - self.ids.len()
    }
}

/// Which ids of an interner are held by keys: one bit per id, set while walking the keys.
#[derive(Debug, Default)]
pub(crate) struct Marks(Vec<u64>);

impl Marks {
    pub fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    pub fn set(&mut self, id: u32) {
        if let Some(w) = self.0.get_mut(id as usize / 64) {
            *w |= 1 << (id % 64);
        }
    }

    pub fn get(&self, id: u32) -> bool {
        self.0.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
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

    /// The bound of the namespace ids: every live one is below it ([`Keys::ns_live`]).
    pub fn ns_count(&self) -> u32 {
        self.ns.len() as u32
    }

    /// Whether namespace id `id` names a namespace now (ids below [`Keys::ns_count`] may have been
    /// released).
    pub fn ns_live(&self, id: u32) -> bool {
        self.ns.is_live(id)
    }

    /// The id of a namespace, if interned.
    pub fn ns_id(&self, cookie: u64) -> Option<u32> {
        self.ns.get(&cookie)
    }

    /// The bound of the local address ids (their family bit cleared).
    pub fn local_count(&self) -> usize {
        self.local.len()
    }

    /// Namespaces and local addresses interned now (not released).
    pub fn live_counts(&self) -> (usize, usize) {
        (self.ns.live_len(), self.local.live_len())
    }

    /// Release the namespaces `ns_keep` refuses and the local addresses (id without the family
    /// bit) no key holds. Returns how many of each.
    pub fn release(&mut self, ns_keep: impl Fn(u32) -> bool, local_held: &Marks) -> (usize, usize) {
        (self.ns.release_unless(ns_keep), self.local.release_unless(|id| local_held.get(id)))
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

    #[test]
    fn released_ids_go_to_new_values_lowest_first() {
        let mut i = Interner::default();
        for v in 10u64..15 {
            i.intern(v);
        }
        assert_eq!(i.release_unless(|id| id == 2), 4);
        assert_eq!((i.live_len(), i.len()), (1, 5));
        assert!(i.is_live(2) && !i.is_live(0) && !i.is_live(4) && !i.is_live(9));
        assert_eq!(i.get(&10), None);
        assert_eq!(i.intern(12), 2, "a live value keeps its id");
        assert_eq!(i.intern(20), 0);
        assert_eq!(i.intern(21), 1);
        assert_eq!(i.intern(22), 3);
        assert_eq!((i.value(0), i.get(&20), i.len()), (20, Some(0), 5));
        assert_eq!(i.release_unless(|_| true), 0);
    }

    #[test]
    fn marks() {
        let mut m = Marks::new(130);
        m.set(0);
        m.set(129);
        m.set(500); // beyond: ignored
        assert!(m.get(0) && m.get(129) && !m.get(1) && !m.get(128) && !m.get(500));
    }
}
