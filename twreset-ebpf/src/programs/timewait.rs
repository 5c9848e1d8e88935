//! TIME_WAIT lifecycle from the timer tracepoints, filtered in BPF on `tw_timer_handler`:
//! `timer_start` = created (or re-armed, when a non-kill `timer_cancel` of the same timer just
//! preceded it on this CPU), `timer_expire_entry` = expired, `timer_cancel` from
//! `inet_twsk_deschedule_put` = removed early (the caller address tells why).
//!
//! The tracepoint `sock:inet_sock_set_state` never sees TIME_WAIT sockets, and fentry is refused
//! on the kernels we must support, so this is the exact path (docs/internals/timewait.md). These attach as raw
//! tracepoints (`TP_PROTO` arguments: the `struct timer_list *` first): raw tracepoints guard
//! recursion per program, while classic tracepoint programs share one per-CPU guard with every
//! other tracing program, so the busy timer hooks would make the state program miss events.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_stack, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use twreset_common::{Event, KernelOffsets, LastTw, kind, stat};

use crate::{
    maps::{DETACHED, LAST_TW, config, count, netns_kept, send},
    offsets::{common, load, net_cookie, netns_cookie, off, offsets, read},
};

/// Stack frames examined at `timer_cancel` (detach_if_pending, timer_shutdown_sync,
/// inet_twsk_deschedule_put, then the cause). Measured on 6.18: with 12 the program stopped
/// seeing any kill, so keep this at 8 and let the kill tests guard it.
const FRAMES: usize = 8;

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
    let c = common(o, tw)?;
    let substate: u8 = read(tw, o.tw_substate)?;
    let cookie = net_cookie(o, c.net)?;
    Ok(Tw {
        cookie,
        tw,
        family: c.family,
        saddr: c.saddr,
        daddr: c.daddr,
        sport: c.num,
        dport: c.dport,
        substate: substate as u32,
    })
}

/// Namespace filter only: the TIME_WAIT table covers whole namespaces.
#[inline(always)]
fn wanted(cookie: u64) -> bool {
    netns_kept(&config(), cookie)
}

#[inline(always)]
fn emit(t: &Tw, event_kind: u16, aux: u64) {
    send(Event {
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
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    try_timer_start(&ctx).unwrap_or_else(|e| e)
}

/// The timer's function, read from the timer itself.
#[inline(always)]
fn function_of(timer: u64) -> u64 {
    // `timer` is the tp_btf argument, typed `struct timer_list *` in the kernel's BTF: a typed
    // load, without a helper call. This is the test every timer event on the host goes through,
    // so it must be cheap.
    load(timer, off!(timer_function))
}

/// The timer (first `TP_PROTO` argument) if it is a TIME_WAIT socket's.
#[inline(always)]
fn tw_timer(ctx: &BtfTracePointContext) -> Option<u64> {
    // `tw_timer_handler`'s address (0: TIME_WAIT tracking off): the first test of every timer
    // event on the host, before anything else is loaded.
    let tw_timer_fn = off!(tw_timer_fn);
    if tw_timer_fn == 0 {
        return None;
    }
    let timer: u64 = ctx.arg(0);
    if function_of(timer) != tw_timer_fn {
        return None;
    }
    // The same address as a plain number (the verifier types `timer` as a BTF pointer, which
    // allows no arithmetic to reach the socket around it): read the argument slot itself.
    // SAFETY: the context is the tracepoint's argument array; bpf_probe_read_kernel is fault-safe.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }.ok()
}

/// The socket behind a TIME_WAIT timer. Failing here is rare and worth a line: the struct
/// offsets from BTF do not fit this kernel's socket.
#[inline(always)]
fn tw_behind(ctx: &BtfTracePointContext, o: &KernelOffsets, timer: u64) -> Result<Tw, u32> {
    read_tw(o, timer).inspect_err(|_| {
        count(stat::READ_ERROR);
        aya_log_ebpf::warn!(ctx, "cannot read the TIME_WAIT socket behind timer {:x}", timer);
    })
}

/// Take this CPU's detached-timer mark if it is `timer`'s: true when the timer event right after a
/// non-kill cancel is about that same timer.
#[inline(always)]
fn take_detached(timer: u64) -> bool {
    let Some(slot) = DETACHED.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot; the timer programs never run concurrently on one CPU.
    unsafe {
        if *slot != timer {
            return false;
        }
        *slot = 0;
    }
    true
}

fn try_timer_start(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let Some(timer) = tw_timer(ctx) else { return Ok(0) };
    let rearm = take_detached(timer);
    // A typed load through the argument itself, as for the function (`timer` is its value as a
    // plain number).
    let expires: u64 = load(ctx.arg(0), off!(timer_expires));
    let o = offsets();
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_jiffies64() };
    let t = tw_behind(ctx, &o, timer)?;
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
        emit(&t, if rearm { kind::TW_REARM } else { kind::TW_START }, expires.wrapping_sub(now));
    }
    Ok(0)
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> u32 {
    try_timer_expire_entry(&ctx).unwrap_or_else(|e| e)
}

fn try_timer_expire_entry(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let Some(timer) = tw_timer(ctx) else { return Ok(0) };
    // Its detach (expire_timers) marked it: the mark must not outlive the socket, whose memory
    // the next one may reuse.
    take_detached(timer);
    let o = offsets();
    let t = tw_behind(ctx, &o, timer)?;
    if wanted(t.cookie) {
        emit(&t, kind::TW_EXPIRE, 0);
    }
    Ok(0)
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    try_timer_cancel(&ctx).unwrap_or_else(|e| e)
}

fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    // Only the timer itself says whose it is: cancel carries no function.
    let Some(timer) = tw_timer(ctx) else { return Ok(0) };
    let o = offsets();
    // The namespace first: the stack walk below is the costliest step, and every expiry and
    // namespace purge on the host passes here too.
    let cookie = netns_cookie(&o, timer - o.tw_timer as u64).inspect_err(|_| count(stat::READ_ERROR))?;
    if !wanted(cookie) {
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
    // from inet_twsk_deschedule_put (or, if that is inlined, the timer function it cancels with,
    // `offsets.shutdown_*`) is a kill.
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
        // A re-arm (__mod_timer) or an expiry (expire_timers) detaching it: the timer event that
        // follows on this CPU says which.
        if let Some(slot) = DETACHED.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, see `take_detached`.
            unsafe { *slot = timer };
        }
        return Ok(0);
    }
    let t = tw_behind(ctx, &o, timer)?;
    if wanted(t.cookie) {
        emit(&t, kind::TW_KILL, caller);
    }
    Ok(0)
}
