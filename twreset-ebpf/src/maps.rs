//! Every map of the kernel side: the event ring buffer, runtime filters and loss counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use twreset_common::{FilterConfig, LastTw, PeerKey, stat};

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

/// Per-CPU counters, indexed by `twreset_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}
