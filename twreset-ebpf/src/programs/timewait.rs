//! TIME_WAIT lifecycle from the timer tracepoints, filtered in BPF on `tw_timer_handler`:
//! `timer_start` = created or re-armed, `timer_expire_entry` = expired, `timer_cancel` from
//! `inet_twsk_deschedule_put` = removed early (the caller address tells why).
//!
//! The tracepoint `sock:inet_sock_set_state` never sees TIME_WAIT sockets, and fentry is refused
//! on the kernels we must support, so this is the exact path (KERNEL.md).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_stack, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use twreset_common::{AF_INET, AF_INET6, Event, KernelOffsets, LastTw, filter, kind, stat, tp_timer};

use crate::{
    maps::{CONFIG, EVENTS, LAST_TW, NETNS_FILTER, count},
    offsets::{netns_cookie, offsets, read},
};

/// Stack frames examined at `timer_cancel` (detach_if_pending, timer_shutdown_sync,
/// inet_twsk_deschedule_put, then the cause).
const FRAMES: usize = 8;

#[inline(always)]
fn tp<T>(ctx: &TracePointContext, off: usize) -> Result<T, u32> {
    // SAFETY: offsets pinned in twreset_common::tp_timer, checked against tracefs by a test.
    unsafe { ctx.read_at::<T>(off) }.map_err(|_| {
        count(stat::READ_ERROR);
        0u32
    })
}

/// The 4-tuple, namespace and substate of the TIME_WAIT socket that owns `timer`.
struct Tw {
    cookie: u64,
    tw: u64,
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    substate: u32,
}

#[inline(always)]
fn read_tw(o: &KernelOffsets, timer: u64) -> Result<Tw, u32> {
    let tw = timer - o.tw_timer as u64;
    let family: u16 = read(tw, o.skc_family)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(tw, o.skc_rcv_saddr)?;
        let d: [u8; 4] = read(tw, o.skc_daddr)?;
        saddr[10] = 0xff;
        saddr[11] = 0xff;
        daddr[10] = 0xff;
        daddr[11] = 0xff;
        saddr[12..16].copy_from_slice(&s);
        daddr[12..16].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = read(tw, o.skc_v6_rcv_saddr)?;
        daddr = read(tw, o.skc_v6_daddr)?;
    } else {
        return Err(0);
    }
    let dport_be: u16 = read(tw, o.skc_dport)?;
    let sport: u16 = read(tw, o.skc_num)?;
    let substate: u8 = read(tw, o.tw_substate)?;
    let cookie = netns_cookie(o, tw)?;
    Ok(Tw { cookie, tw, family, saddr, daddr, sport, dport: u16::from_be(dport_be), substate: substate as u32 })
}

/// Namespace filter only: the TIME_WAIT table covers whole namespaces.
#[inline(always)]
fn wanted(cookie: u64) -> bool {
    let flags = match CONFIG.get(0) {
        Some(c) => c.flags,
        None => 0,
    };
    // SAFETY: read-only lookup of a plain integer.
    flags & filter::NETNS == 0 || unsafe { NETNS_FILTER.get(&cookie) }.is_some()
}

#[inline(always)]
fn emit(t: &Tw, event_kind: u16, aux: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::RINGBUF_FULL);
        return;
    };
    entry.write(Event {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie: t.cookie,
        skaddr: t.tw,
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        family: t.family,
        kind: event_kind,
        oldstate: 0,
        newstate: t.substate,
        aux,
    });
    entry.submit(0);
    count(stat::SENT);
}

#[tracepoint]
pub fn timer_start(ctx: TracePointContext) -> u32 {
    try_timer_start(&ctx).unwrap_or_else(|e| e)
}

fn try_timer_start(ctx: &TracePointContext) -> Result<u32, u32> {
    let o = offsets();
    let function: u64 = tp(ctx, tp_timer::START_FUNCTION)?;
    if o.tw_timer_fn == 0 || function != o.tw_timer_fn {
        return Ok(0);
    }
    let timer: u64 = tp(ctx, tp_timer::START_TIMER)?;
    let expires: u64 = tp(ctx, tp_timer::START_EXPIRES)?;
    let now: u64 = tp(ctx, tp_timer::START_NOW)?;
    let t = read_tw(&o, timer).inspect_err(|_| count(stat::READ_ERROR))?;
    if let Some(slot) = LAST_TW.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, see programs::state::active_close.
        unsafe {
            *slot = LastTw {
                netns_cookie: t.cookie,
                saddr: t.saddr,
                daddr: t.daddr,
                sport: t.sport,
                dport: t.dport,
                _pad: 0,
            };
        }
    }
    if wanted(t.cookie) {
        emit(&t, kind::TW_START, expires.wrapping_sub(now));
    }
    Ok(0)
}

#[tracepoint]
pub fn timer_expire_entry(ctx: TracePointContext) -> u32 {
    try_timer_expire_entry(&ctx).unwrap_or_else(|e| e)
}

fn try_timer_expire_entry(ctx: &TracePointContext) -> Result<u32, u32> {
    let o = offsets();
    let function: u64 = tp(ctx, tp_timer::EXPIRE_FUNCTION)?;
    if o.tw_timer_fn == 0 || function != o.tw_timer_fn {
        return Ok(0);
    }
    let timer: u64 = tp(ctx, tp_timer::EXPIRE_TIMER)?;
    let t = read_tw(&o, timer).inspect_err(|_| count(stat::READ_ERROR))?;
    if wanted(t.cookie) {
        emit(&t, kind::TW_EXPIRE, 0);
    }
    Ok(0)
}

#[tracepoint]
pub fn timer_cancel(ctx: TracePointContext) -> u32 {
    try_timer_cancel(&ctx).unwrap_or_else(|e| e)
}

fn try_timer_cancel(ctx: &TracePointContext) -> Result<u32, u32> {
    let o = offsets();
    if o.tw_timer_fn == 0 {
        return Ok(0);
    }
    let timer: u64 = tp(ctx, tp_timer::CANCEL_TIMER)?;
    // Only the timer itself says whose it is: cancel carries no function field.
    let function: u64 = match read(timer, o.timer_function) {
        Ok(f) => f,
        Err(_) => return Ok(0),
    };
    if function != o.tw_timer_fn {
        return Ok(0);
    }
    let mut frames = [0u64; FRAMES];
    // SAFETY: the buffer is FRAMES u64s long, as passed.
    let n = unsafe { bpf_get_stack(ctx.as_ptr(), frames.as_mut_ptr().cast(), (FRAMES * 8) as u32, 0) };
    if n <= 0 {
        count(stat::READ_ERROR);
        return Ok(0);
    }
    // Re-arms (__mod_timer) and expiries (expire_timers) also detach the timer: only a cancel
    // from inet_twsk_deschedule_put (or, if that is inlined, timer_shutdown_sync) is a kill.
    let mut caller = 0u64;
    let mut i = 0;
    while i + 1 < FRAMES {
        let f = frames[i];
        if f >= o.desched_start && f < o.desched_end {
            caller = frames[i + 1];
            break;
        }
        if caller == 0 && f >= o.shutdown_start && f < o.shutdown_end {
            caller = frames[i + 1];
        }
        i += 1;
    }
    if caller == 0 {
        return Ok(0);
    }
    let t = read_tw(&o, timer).inspect_err(|_| count(stat::READ_ERROR))?;
    if wanted(t.cookie) {
        emit(&t, kind::TW_KILL, caller);
    }
    Ok(0)
}
