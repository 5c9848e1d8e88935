//! Every map of the kernel side: the event ring buffer, runtime filters and loss counters.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use twreset_common::{Event, FilterConfig, LastTw, PeerKey, handled::Handled, stat};

/// Events to userspace. 8 MiB absorbs a few hundred thousand events of burst.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Element 0: the active [`FilterConfig`].
#[map]
pub static CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);

/// Namespace cookies to keep when `filter::NETNS` is set.
#[map]
pub static NETNS_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Remote prefixes to keep when `filter::PEER` is set (IPv4 as `::ffff:0:0/96` + prefix).
#[map]
pub static PEER_FILTER: LpmTrie<PeerKey, u8> = LpmTrie::with_max_entries(1024, 0);

/// Ports (local or remote) to keep when `filter::PORT` is set.
#[map]
pub static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Last TIME_WAIT timer armed on each CPU (see `programs::state::active_close`).
#[map]
pub static LAST_TW: PerCpuArray<LastTw> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the TIME_WAIT timer a non-kill `timer_cancel` just detached (0: none). The
/// `timer_start` right after it on this CPU is then a re-arm, not a new socket; the
/// `timer_expire_entry` right after an expiry's detach clears it (see `programs::timewait`).
#[map]
pub static DETACHED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the state programs' notes of what the primary took (`twreset_common::handled`).
#[map]
pub static HANDLED: PerCpuArray<Handled> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the transition the `sock_ops` program just reported (socket address, `handled::key`;
/// 0: none). `tcp_set_state()` calls the tracepoint right after it on this CPU, and the primary
/// state program, finding its own transition here, leaves it without reading the socket's flags
/// (`programs::state::noted_by_sock_ops`). Not written once those programs are detached
/// (`filter::STATE_DETACHED`).
#[map]
pub static SOCK_OPS_NOTE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Sockets whose first transition the tracepoint reported (`filter::OWN`): a listener's
/// `CLOSE -> LISTEN` by socket cookie, a child's `LISTEN -> SYN_RECV` by address
/// (`programs::state::child_key` says why). The `sock_ops` program, called
/// after it (`TCP_LISTEN_CB`, `PASSIVE_ESTABLISHED_CB`) and otherwise making that transition up,
/// takes the entry out and does not report it again; a move to CLOSE before that callback
/// clears it. LRU: an entry whose callback or close never comes through here (the tracepoint
/// programs were detached in between) is dropped by eviction, not kept for good.
#[map]
pub static TP_FIRST: LruHashMap<u64, u8> = LruHashMap::with_max_entries(8192, 0);

/// Element 0: how many entries the programs put in `TP_FIRST` and have not taken out, updated
/// atomically. At 0 `sock_ops` skips the lookup (and the socket cookie it needs): the usual case
/// once the tracepoint programs are detached. An entry the LRU evicted is never taken out, so
/// the count stays above 0 and every lookup is made: the safe side.
#[map]
pub static TP_FIRST_LIVE: Array<u64> = Array::with_max_entries(1, 0);

/// Note `cookie` in `TP_FIRST`, counting it in `TP_FIRST_LIVE` when it is new.
#[inline(always)]
pub fn tp_first_note(cookie: u64) {
    if TP_FIRST.insert(&cookie, &1, BPF_NOEXIST.into()).is_ok() {
        tp_first_live_add(1);
    }
}

/// Take the note of `cookie` out of `TP_FIRST`: `true` when there was one. With no note live
/// (`TP_FIRST_LIVE`) there is nothing to look up; otherwise a read-only lookup first, and only
/// then the (locking) delete.
#[inline(always)]
pub fn tp_first_take(cookie: impl FnOnce() -> u64) -> bool {
    if !tp_first_live() {
        return false;
    }
    let cookie = cookie();
    // SAFETY: read-only lookup of a plain integer.
    let taken = unsafe { TP_FIRST.get(&cookie) }.is_some() && TP_FIRST.remove(&cookie).is_ok();
    if taken {
        tp_first_live_add(u64::MAX);
    }
    taken
}

/// Add `delta` (wrapping) to `TP_FIRST_LIVE`.
#[inline(always)]
fn tp_first_live_add(delta: u64) {
    if let Some(p) = TP_FIRST_LIVE.get_ptr_mut(0) {
        // SAFETY: an aligned map value that lives as long as the program. The target has no
        // `AtomicU64::fetch_add`; this is the BPF atomic add it would be.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// Are there entries in `TP_FIRST` (see `TP_FIRST_LIVE`)?
#[inline(always)]
fn tp_first_live() -> bool {
    match TP_FIRST_LIVE.get_ptr_mut(0) {
        // SAFETY: as above; an aligned 8-byte load is atomic.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// Per-CPU counters, indexed by `twreset_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The active filter (element 0 of `CONFIG`).
#[inline(always)]
pub fn config() -> FilterConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => FilterConfig::default(),
    }
}

/// Does the namespace filter of `cfg` keep `cookie` (looking up `NETNS_FILTER` when several are
/// kept)?
#[inline(always)]
pub fn netns_kept(cfg: &FilterConfig, cookie: u64) -> bool {
    // SAFETY: read-only lookup of a plain integer.
    cfg.keeps_netns(cookie, |c| unsafe { NETNS_FILTER.get(&c) }.is_some())
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// Pending bytes at which a producer wakes the reader. Below that nobody is woken: the reader
/// drains on its own short timer (`probe::DRAIN_EVERY` in userspace). The ring buffer's default
/// wakes the reader on nearly every event while it keeps up, and each wakeup is an irq_work
/// self-IPI, several microseconds in a VM, paid inside every TCP state change.
const WAKE_AT: u64 = 256 << 10;
/// Only submits that land in this band past `WAKE_AT` wake: one fill, one wakeup or a few.
const WAKE_BAND: u64 = 16 << 10;

/// Send `event` to userspace, counting it, or counting the loss when the ring buffer is full.
#[inline(always)]
pub fn send(event: Event) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::RINGBUF_FULL);
        return;
    };
    entry.write(event);
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if (WAKE_AT..WAKE_AT + WAKE_BAND).contains(&pending) { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(flags as u64);
    count(stat::SENT);
}
