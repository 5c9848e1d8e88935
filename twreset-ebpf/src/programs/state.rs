//! `sock:inet_sock_set_state`: one filtered [`Event`] per TCP state transition.
//!
//! Field offsets are pinned in `twreset_common::tp_state` and checked against the running
//! kernel's tracefs format file by a test.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use twreset_common::{
    AF_INET, AF_INET6, Event, FilterConfig, IPPROTO_TCP, filter, kind, stat, tcp_state, tp_state,
};

use crate::maps::{CONFIG, EVENTS, NETNS_FILTER, PEER_FILTER, PORT_FILTER, count};

/// `offsetof(struct sock_common, skc_net)`, set by userspace from the running kernel's BTF.
#[unsafe(no_mangle)]
static OFF_SKC_NET: u32 = 48;
/// `offsetof(struct net, net_cookie)`, set by userspace from the running kernel's BTF.
#[unsafe(no_mangle)]
static OFF_NET_COOKIE: u32 = 4160;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: usize) -> Result<T, u32> {
    // SAFETY: offsets come from the tracepoint format, checked against the kernel by a test.
    unsafe { ctx.read_at::<T>(off) }.map_err(|_| {
        count(stat::READ_ERROR);
        0u32
    })
}

/// Namespace cookie of the socket at `skaddr`: `sk->__sk_common.skc_net.net->net_cookie`.
#[inline(always)]
pub fn netns_cookie(skaddr: u64) -> Result<u64, u32> {
    // SAFETY: volatile reads of loader-set constants; probe reads are fault-safe.
    let off_net = unsafe { core::ptr::read_volatile(&OFF_SKC_NET) } as u64;
    let off_cookie = unsafe { core::ptr::read_volatile(&OFF_NET_COOKIE) } as u64;
    let net: u64 = unsafe { bpf_probe_read_kernel((skaddr + off_net) as *const u64) }
        .map_err(|_| 0u32)?;
    unsafe { bpf_probe_read_kernel((net + off_cookie) as *const u64) }.map_err(|_| 0u32)
}

#[inline(always)]
fn state_bit(mask: u32, s: u32) -> bool {
    s < 32 && mask & (1 << s) != 0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<u32, u32> {
    let protocol: u16 = read(ctx, tp_state::PROTOCOL)?;
    if protocol != IPPROTO_TCP {
        return Ok(0);
    }
    let cfg: FilterConfig = match CONFIG.get(0) {
        Some(c) => *c,
        None => FilterConfig::default(),
    };
    let oldstate: i32 = read(ctx, tp_state::OLDSTATE)?;
    let newstate: i32 = read(ctx, tp_state::NEWSTATE)?;
    let (oldstate, newstate) = (oldstate as u32, newstate as u32);
    if cfg.flags & filter::STATE != 0 {
        let into_tw = newstate == tcp_state::CLOSE
            && (oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING);
        let hit = state_bit(cfg.state_mask, oldstate)
            || state_bit(cfg.state_mask, newstate)
            || (into_tw && state_bit(cfg.state_mask, tcp_state::TIME_WAIT));
        if !hit {
            return Ok(0);
        }
    }
    let sport: u16 = read(ctx, tp_state::SPORT)?;
    let dport: u16 = read(ctx, tp_state::DPORT)?;
    if cfg.flags & filter::PORT != 0 {
        // SAFETY: read-only lookups of plain integers.
        let hit = unsafe { PORT_FILTER.get(&sport).is_some() || PORT_FILTER.get(&dport).is_some() };
        if !hit {
            return Ok(0);
        }
    }
    let family: u16 = read(ctx, tp_state::FAMILY)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(ctx, tp_state::SADDR)?;
        let d: [u8; 4] = read(ctx, tp_state::DADDR)?;
        saddr[10] = 0xff;
        saddr[11] = 0xff;
        daddr[10] = 0xff;
        daddr[11] = 0xff;
        saddr[12..16].copy_from_slice(&s);
        daddr[12..16].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = read(ctx, tp_state::SADDR_V6)?;
        daddr = read(ctx, tp_state::DADDR_V6)?;
    } else {
        return Ok(0);
    }
    if cfg.flags & filter::PEER != 0 && PEER_FILTER.get(&Key::new(128, daddr)).is_none() {
        return Ok(0);
    }
    let skaddr: u64 = read(ctx, tp_state::SKADDR)?;
    let cookie = match netns_cookie(skaddr) {
        Ok(c) => c,
        Err(_) => {
            count(stat::READ_ERROR);
            0
        }
    };
    // SAFETY: read-only lookup of a plain integer.
    if cfg.flags & filter::NETNS != 0 && unsafe { NETNS_FILTER.get(&cookie) }.is_none() {
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::RINGBUF_FULL);
        return Ok(0);
    };
    entry.write(Event {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie: cookie,
        skaddr,
        saddr,
        daddr,
        sport,
        dport,
        family,
        kind: kind::STATE,
        oldstate,
        newstate,
        aux: 0,
        _pad: 0,
    });
    entry.submit(0);
    count(stat::SENT);
    Ok(0)
}
