//! `sock:inet_sock_set_state`: one filtered [`Event`] per TCP state transition.
//!
//! Field offsets are pinned in `twreset_common::tp_state` and checked against the running
//! kernel's tracefs format file by a test.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, maps::lpm_trie::Key, programs::TracePointContext};
use twreset_common::{
    AF_INET, AF_INET6, Event, FilterConfig, IPPROTO_TCP, LastTw, filter, kind, stat, state_aux, tcp_state, tp_state,
};

use crate::{
    maps::{CONFIG, EVENTS, LAST_TW, NETNS_FILTER, PEER_FILTER, PORT_FILTER, count},
    offsets::{netns_cookie, offsets, read as kread},
};

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
        let into_tw =
            newstate == tcp_state::CLOSE && (oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING);
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
    let off = offsets();
    let cookie = match netns_cookie(&off, skaddr) {
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
    let mut aux = 0;
    if newstate == tcp_state::CLOSE && (oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING) {
        aux = active_close(&off, skaddr, cookie, &saddr, &daddr, sport, dport);
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
        aux,
    });
    entry.submit(0);
    count(stat::SENT);
    Ok(0)
}

/// Did this active close create a TIME_WAIT socket? `tcp_time_wait()` arms the TIME_WAIT timer
/// (recorded in `LAST_TW` by the timer program on this CPU) before `tcp_done()` moves the full
/// socket to CLOSE, in the same call. No timer and no socket error means the kernel found
/// `tcp_max_tw_buckets` full.
#[inline(always)]
fn active_close(
    off: &twreset_common::KernelOffsets,
    skaddr: u64,
    cookie: u64,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) -> u64 {
    if off.tw_timer_fn == 0 {
        return 0;
    }
    let Some(slot) = LAST_TW.get_ptr_mut(0) else { return 0 };
    // SAFETY: per-CPU slot; this program and the timer program on this CPU never run concurrently.
    let last: &mut LastTw = unsafe { &mut *slot };
    if last.netns_cookie == cookie
        && last.sport == sport
        && last.dport == dport
        && last.saddr == *saddr
        && last.daddr == *daddr
    {
        *last = LastTw::default();
        return state_aux::TW_CREATED;
    }
    let err: i32 = kread(skaddr, off.sk_err).unwrap_or(1);
    if err == 0 { state_aux::OVERFLOW } else { 0 }
}
