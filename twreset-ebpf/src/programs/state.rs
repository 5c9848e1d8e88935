//! `inet_sock_set_state` (raw tracepoint): one filtered [`Event`] per TCP state transition.
//!
//! Two programs attach to the same tracepoint so that none is lost to recursion. The kernel runs
//! each raw tracepoint program at most once per CPU at a time and skips (counts as a
//! `recursion_miss`) a run that would nest: a state change in softirq that interrupts the program
//! while it handles one in process context. The primary handles every transition and first marks
//! it taken in a per-CPU hashed slot; the backup runs after it on every transition and handles
//! only those it finds unmarked — exactly the ones the primary was skipped for, since a nested
//! transition finds the primary busy with another one (marked with other arguments). The backup
//! clears the marks it finds and counts what it handled (`stat::RECOVERED`); userspace reports
//! `primary misses - recovered` as lost.
//!
//! The arguments are `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`
//! (checked against the kernel's BTF by a test); the socket's fields are read through BTF offsets,
//! the same ones the tracepoint's own record is built from (`inet_sport`, `skc_dport`,
//! `skc_rcv_saddr`, `skc_daddr` and their IPv6 forms).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::raw_tracepoint, maps::lpm_trie::Key, programs::RawTracePointContext,
};
use twreset_common::{
    Event, FilterConfig, IPPROTO_TCP, KernelOffsets, LastTw, filter, kind, stat, state_aux, tcp_state,
};

use crate::{
    maps::{CONFIG, LAST_TW, NETNS_FILTER, PEER_FILTER, PORT_FILTER, TAKEN, TAKEN_SLOTS, count, send},
    offsets::{common, net_cookie, offsets, read},
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn set_state(ctx: RawTracePointContext) -> i32 {
    let t = Transition::of(&ctx);
    // Marked before any filter: the kernel's miss count covers every transition, so the
    // backup must be able to tell every skipped one (filtered or not) to keep `lost` exact.
    if let Some(slot) = TAKEN.get_ptr_mut(t.slot()) {
        // SAFETY: per-CPU slot; a nested run of this program on this CPU is skipped by the kernel.
        unsafe { *slot = t.mark() };
    }
    if let Some(cfg) = state_filter(&t) {
        handle(&t, &cfg);
    }
    0
}

/// Attached after [`set_state`]; handles what the kernel skipped it for.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn set_state_nest(ctx: RawTracePointContext) -> i32 {
    let t = Transition::of(&ctx);
    if let Some(slot) = TAKEN.get_ptr_mut(t.slot()) {
        // SAFETY: per-CPU slot, see above.
        unsafe {
            if *slot == t.mark() {
                *slot = 0;
                return 0;
            }
        }
    }
    count(stat::RECOVERED);
    if let Some(cfg) = state_filter(&t) {
        handle(&t, &cfg);
    }
    0
}

/// The tracepoint's arguments.
struct Transition {
    sk: u64,
    old: u32,
    new: u32,
}

impl Transition {
    #[inline(always)]
    fn of(ctx: &RawTracePointContext) -> Self {
        let old: u64 = ctx.arg(1);
        let new: u64 = ctx.arg(2);
        Self { sk: ctx.arg(0), old: old as u32, new: new as u32 }
    }

    /// Kernel pointers have their top 16 bits set, so the states fit there without ambiguity.
    #[inline(always)]
    fn mark(&self) -> u64 {
        self.sk ^ ((self.old as u64 & 0xff) << 48) ^ ((self.new as u64 & 0xff) << 56)
    }

    /// The active close into TIME_WAIT, as the tracepoint shows it.
    #[inline(always)]
    fn into_tw(&self) -> bool {
        self.new == tcp_state::CLOSE && (self.old == tcp_state::FIN_WAIT2 || self.old == tcp_state::CLOSING)
    }

    #[inline(always)]
    fn slot(&self) -> u32 {
        let h = (self.sk >> 6) ^ (self.sk >> 14) ^ (self.old as u64) ^ ((self.new as u64) << 4);
        (h as u32) & (TAKEN_SLOTS - 1)
    }
}

#[inline(always)]
fn state_bit(mask: u32, s: u32) -> bool {
    s < 32 && mask & (1 << s) != 0
}

/// A failed read of the socket: counted, and the transition dropped.
#[inline(always)]
fn sk_read<T>(sk: u64, off: u32) -> Result<T, ()> {
    read(sk, off).map_err(|_| count(stat::READ_ERROR))
}

/// The filter config, unless the state filter (a function of the arguments only, so it costs
/// no read) drops this transition: a TIME_WAIT-only agent pays almost nothing for the others.
#[inline(always)]
fn state_filter(t: &Transition) -> Option<FilterConfig> {
    let cfg: FilterConfig = match CONFIG.get(0) {
        Some(c) => *c,
        None => FilterConfig::default(),
    };
    if cfg.flags & filter::STATE != 0 {
        let hit = state_bit(cfg.state_mask, t.old)
            || state_bit(cfg.state_mask, t.new)
            || (t.into_tw() && state_bit(cfg.state_mask, tcp_state::TIME_WAIT));
        if !hit {
            return None;
        }
    }
    Some(cfg)
}

#[inline(always)]
fn handle(t: &Transition, cfg: &FilterConfig) {
    let _ = try_handle(t, cfg);
}

#[inline(always)]
fn try_handle(t: &Transition, cfg: &FilterConfig) -> Result<(), ()> {
    let (sk, oldstate, newstate, into_tw) = (t.sk, t.old, t.new, t.into_tw());
    let off = offsets();
    let protocol: u16 = sk_read(sk, off.sk_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sport_be: u16 = sk_read(sk, off.inet_sport)?;
    let c = common(&off, sk).map_err(|_| count(stat::READ_ERROR))?;
    let (sport, dport, family, saddr, daddr) = (u16::from_be(sport_be), c.dport, c.family, c.saddr, c.daddr);
    if cfg.flags & filter::PORT != 0 {
        // SAFETY: read-only lookups of plain integers.
        let hit = unsafe { PORT_FILTER.get(&sport).is_some() || PORT_FILTER.get(&dport).is_some() };
        if !hit {
            return Ok(());
        }
    }
    if cfg.flags & filter::PEER != 0 && PEER_FILTER.get(&Key::new(128, daddr)).is_none() {
        return Ok(());
    }
    let cookie = net_cookie(&off, c.net).unwrap_or_else(|_| {
        count(stat::READ_ERROR);
        0
    });
    // SAFETY: read-only lookup of a plain integer.
    if cfg.flags & filter::NETNS != 0 && unsafe { NETNS_FILTER.get(&cookie) }.is_none() {
        return Ok(());
    }
    let aux = if into_tw { active_close(&off, sk, cookie, &saddr, &daddr, sport, dport) } else { 0 };
    if cfg.flags & filter::OVERFLOW_ONLY != 0 && aux != state_aux::OVERFLOW {
        return Ok(());
    }
    send(Event {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie: cookie,
        skaddr: sk,
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
    Ok(())
}

/// Did this active close create a TIME_WAIT socket? `tcp_time_wait()` arms the TIME_WAIT timer
/// (recorded in `LAST_TW` by the timer program on this CPU) before `tcp_done()` moves the full
/// socket to CLOSE, in the same call. No timer and no socket error means the kernel found
/// `tcp_max_tw_buckets` full.
#[inline(always)]
fn active_close(
    off: &KernelOffsets,
    sk: u64,
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
    let err: i32 = read(sk, off.sk_err).unwrap_or(1);
    if err == 0 { state_aux::OVERFLOW } else { 0 }
}
