//! `inet_sock_set_state` (BTF-typed raw tracepoint): one filtered [`Event`] per TCP state transition.
//!
//! Two programs attach to the same tracepoint, in this order, so that no transition is lost to
//! recursion without being counted: `set_state` (the primary) and `set_state_nest` (the backup),
//! which handles a transition only when the kernel skipped the primary for it (a state change in
//! softirq nesting inside the primary's run in process context). The primary notes each
//! transition it is called for on entry (unless a backup is running under it on this CPU); the
//! backup takes the note out, or finds none and recovers the transition (`stat::RECOVERED`).
//! The protocol, with its host tests, is `twreset_common::handled`; userspace reports
//! `primary misses - recovered` as lost. With `filter::SOCK_OPS`, transitions of sockets the
//! `sock_ops` program has turned `STATE_CB` on for are its to report (`programs::sockops`), since
//! the tracepoint leaves a few per million of them undelivered; both programs skip those here.
//! The primary knows most of them by the per-CPU note `sock_ops` leaves just before the
//! tracepoint fires, and reads the socket's flag only when there is none. With `filter::OWN`
//! that is every transition of a flagged socket, since `sock_ops` owns those from birth; these
//! programs then serve only until userspace has handed the older sockets over, and are detached.
//!
//! The programs are BTF-typed raw tracepoints (`tp_btf`) with the arguments
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)` (checked against the
//! kernel's BTF by a test). Because `sk` is typed, the verifier turns reads of `struct sock` into
//! plain fault-safe loads, with no helper call: this path runs for every TCP state change on the
//! host. The fields are the ones the tracepoint's own record is built from (`skc_dport`,
//! `skc_rcv_saddr`, `skc_daddr` and their IPv6 forms, `inet_sport`). `inet_sport` lies beyond
//! `struct sock`, where typed loads cannot reach, so [`local_port`] takes `skc_num` when it is set
//! and pays a helper read only when it is not.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_STATE_CB_FLAG,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    macros::btf_tracepoint,
    maps::lpm_trie::Key,
    programs::BtfTracePointContext,
};
use twreset_common::{
    Event, FilterConfig, IPPROTO_TCP, LastTw, filter,
    handled::{self, Verdict},
    kind, stat, state_aux, tcp_state,
};

use crate::{
    maps::{
        HANDLED, LAST_TW, PEER_FILTER, PORT_FILTER, SOCK_OPS_NOTE, config, count, netns_kept, send, tp_first_note,
        tp_first_take,
    },
    offsets::{common_direct, load, net_cookie_direct, off, read},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state(ctx: BtfTracePointContext) -> i32 {
    let t = Transition::of(&ctx);
    let key = t.key();
    record_handled(&t, key);
    if noted_by_sock_ops(&t, key) {
        return 0;
    }
    if let Some(cfg) = state_filter(&t) {
        handle(&t, &cfg);
    }
    0
}

/// Attached after the primary; handles the transitions the kernel skipped the primary for.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_nest(ctx: BtfTracePointContext) -> i32 {
    let Some(h) = HANDLED.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's notes; see `handled::begin` (and `done` below, on every path).
    unsafe { handled::begin(h) };
    let t = Transition::of(&ctx);
    // SAFETY: as above.
    if unsafe { handled::take(h, t.sk, t.key()) } == Verdict::Recover {
        count(stat::RECOVERED);
        if let Some(cfg) = state_filter(&t) {
            handle(&t, &cfg);
        }
    }
    // SAFETY: as above.
    unsafe { handled::done(h) };
    0
}

/// The primary's first step: note `t` (whose `handled::key` is `key`) in this CPU's slots
/// (`handled::record`).
#[inline(always)]
fn record_handled(t: &Transition, key: u64) {
    if let Some(h) = HANDLED.get_ptr_mut(0) {
        // SAFETY: this CPU's notes; see `handled::record`.
        unsafe { handled::record(h, t.sk, key) };
    }
}

/// Did the `sock_ops` program just report `t` on this CPU? Then take its note out. Without a
/// note (a transition in softirq replaced it, or the socket is not `sock_ops`'), [`handle`]
/// still reads the socket's flag: the note only spares that read. A note matches only the
/// transition it was left for: one whose tracepoint never came stays until the next one of
/// `sock_ops` replaces it, and no transition `sock_ops` does not report has its socket, states,
/// ports and remote address (those are sockets established before `trace` started, or
/// transitions out of CLOSE, SYN_SENT and LISTEN).
#[inline(always)]
fn noted_by_sock_ops(t: &Transition, key: u64) -> bool {
    let Some(n) = SOCK_OPS_NOTE.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's note; a program interrupting this one in softirq leaves its own, which
    // is then not this transition's.
    unsafe {
        if (*n)[0] != t.sk || (*n)[1] != key {
            return false;
        }
        (*n)[0] = 0;
    }
    true
}

/// The `sock_ops` program's note of `t`, which it reports (see [`noted_by_sock_ops`]).
#[inline(always)]
pub(crate) fn note_for_tracepoint(t: &Transition) {
    if let Some(n) = SOCK_OPS_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's note, as above.
        unsafe { *n = [t.sk, t.key()] };
    }
}

/// The tracepoint's arguments (`sk` is a BTF-typed pointer to the verifier).
pub(crate) struct Transition {
    pub(crate) sk: u64,
    pub(crate) old: u32,
    pub(crate) new: u32,
}

impl Transition {
    #[inline(always)]
    fn of(ctx: &BtfTracePointContext) -> Self {
        let old: u64 = ctx.arg(1);
        let new: u64 = ctx.arg(2);
        Self { sk: ctx.arg(0), old: old as u32, new: new as u32 }
    }

    /// What the two programs' notes tell this transition by (`handled::key`): two typed loads of
    /// the first cache line of the socket.
    #[inline(always)]
    pub(crate) fn key(&self) -> u64 {
        let ports: u32 = load(self.sk, off!(skc_dport)); // skc_portpair
        let raddr: u32 = load(self.sk, off!(skc_daddr));
        handled::key(self.old, self.new, ports, raddr)
    }

    /// The active close into TIME_WAIT, as the tracepoint shows it.
    #[inline(always)]
    pub(crate) fn into_tw(&self) -> bool {
        self.new == tcp_state::CLOSE && (self.old == tcp_state::FIN_WAIT2 || self.old == tcp_state::CLOSING)
    }
}

#[inline(always)]
fn state_bit(mask: u32, s: u32) -> bool {
    s < 32 && mask & (1 << s) != 0
}

/// The filter config, unless the state filter (a function of the arguments only, so it costs
/// no read) drops this transition: a TIME_WAIT-only agent pays almost nothing for the others.
#[inline(always)]
pub(crate) fn state_filter(t: &Transition) -> Option<FilterConfig> {
    let cfg = config();
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

/// Report `t` unless a filter drops it or (tracepoint side) the `sock_ops` program reports it.
#[inline(always)]
fn handle(t: &Transition, cfg: &FilterConfig) {
    // `own_possible` first: a known constant, so on kernels without OWN the verifier never
    // walks (and never refuses) `note_first`'s helper.
    let own = off!(own_possible) != 0 && cfg.flags & filter::OWN != 0;
    if cfg.flags & filter::SOCK_OPS != 0 && sock_ops_has(t, own) {
        if own && t.old == tcp_state::LISTEN && t.new == tcp_state::SYN_RECV {
            // A child that inherited the flag: `sock_ops` reports its birth. A note left under
            // this address by an earlier child (one that died where no program saw it) would
            // stop that, so it goes.
            tp_first_take(|| child_key(t.sk));
        }
        return;
    }
    if own {
        note_first(t);
    }
    let _ = try_handle(t, cfg, false);
}

/// With `filter::OWN`: the first transition of a socket without the flag, which this side
/// reports and `sock_ops` would otherwise make up (`CLOSE -> LISTEN` at `TCP_LISTEN_CB`, a
/// child's `LISTEN -> SYN_RECV` at `PASSIVE_ESTABLISHED_CB`), is noted for it in
/// `maps::TP_FIRST`: a listener by socket cookie, which no later socket reuses, a child by its
/// address ([`child_key`]). Another tool's `sock_ops`, called before ours, may turn the flag on
/// in between, so `sock_ops` goes by the note, not the flag. A move to CLOSE before that
/// callback (a failed `listen()`, a listener older than `trace`, a child torn down early)
/// clears it.
#[inline(always)]
fn note_first(t: &Transition) {
    if t.new == tcp_state::LISTEN {
        tp_first_note(socket_cookie(t.sk));
    } else if t.old == tcp_state::LISTEN && t.new == tcp_state::SYN_RECV {
        tp_first_note(child_key(t.sk));
    } else if t.new == tcp_state::CLOSE && t.old == tcp_state::LISTEN {
        tp_first_take(|| socket_cookie(t.sk));
    } else if t.new == tcp_state::CLOSE && t.old == tcp_state::SYN_RECV {
        tp_first_take(|| child_key(t.sk));
    }
}

/// A listener's child's key in `maps::TP_FIRST`: its address, not its cookie. Until 6.12 (at
/// least) the clone fires the tracepoint before it copies the request's cookie over its own
/// (`inet_csk_clone_lock()`), so a cookie taken there is gone by `PASSIVE_ESTABLISHED_CB`
/// (measured on Debian's 6.12). The address lasts the child's life; a kernel address has its
/// top bit set, which no cookie (a count from 1) reaches, so the two kinds of key never meet.
/// A note an earlier child left under the same address is cleared at the next child's birth
/// (`handle`).
#[inline(always)]
pub(crate) fn child_key(sk: u64) -> u64 {
    sk
}

/// The socket cookie of `sk` (a BTF-typed socket pointer).
#[inline(always)]
fn socket_cookie(sk: u64) -> u64 {
    // SAFETY: the helper takes a BTF-typed socket pointer, as `sk` is.
    unsafe { bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
}

/// The `sock_ops` program's report of a transition: `t.sk` is its `tcp_sock`, a BTF pointer
/// like the tracepoint's argument.
#[inline(always)]
pub(crate) fn handle_sock_ops(t: &Transition, cfg: &FilterConfig) {
    if try_handle(t, cfg, true).is_ok() {
        count(stat::SOCK_OPS);
    }
}

/// Does the `sock_ops` program report this transition? `tcp_set_state()` calls it, before the
/// tracepoint, exactly when the socket has `BPF_SOCK_OPS_STATE_CB` on, which it turns on for
/// every socket at establishment. The flag lies beyond `struct sock` (a helper read).
#[inline(always)]
fn sock_ops_has(t: &Transition, own: bool) -> bool {
    (own || sock_ops_may_report(t.old))
        && read::<u8>(t.sk, off!(tcp_cb_flags)).is_ok_and(|f| f as u32 & BPF_SOCK_OPS_STATE_CB_FLAG != 0)
}

/// Transitions out of CLOSE, SYN_SENT and LISTEN always stay with the tracepoint, on both sides:
/// our flag is never on then (a listener's clone is made in SYN_RECV by `inet_sk_set_state()`,
/// which calls no `sock_ops`), and a flag another tool turned on earlier must not make both
/// sides report one.
#[inline(always)]
pub(crate) fn sock_ops_may_report(old: u32) -> bool {
    !matches!(old, tcp_state::SYN_SENT | tcp_state::LISTEN | tcp_state::CLOSE)
}

/// Send `t` unless a filter drops it: `Ok` when sent. `via_sock_ops`: called by the `sock_ops`
/// program, before `tcp_set_state()` unhashes the socket (see [`active_close`]).
#[inline(always)]
fn try_handle(t: &Transition, cfg: &FilterConfig, via_sock_ops: bool) -> Result<(), ()> {
    let (sk, oldstate, newstate, into_tw) = (t.sk, t.old, t.new, t.into_tw());
    let protocol: u16 = load(sk, off!(sk_protocol));
    if protocol != IPPROTO_TCP {
        return Err(());
    }
    let Ok(c) = common_direct(sk) else { return Err(()) };
    let sport = local_port(sk, c.num)?;
    let (dport, family, saddr, daddr) = (c.dport, c.family, c.saddr, c.daddr);
    // A listener's child before its addresses are copied in (5.10 sets SYN_RECV first; remote
    // port 0): only its next transition says whether it matches the peer and port filters, so
    // it goes to userspace, which holds it until then and drops it if that never comes
    // (`synrecv.rs` in the userspace crate).
    let unaddressed = oldstate == tcp_state::LISTEN && newstate == tcp_state::SYN_RECV && dport == 0;
    if cfg.flags & filter::PORT != 0 && !unaddressed {
        // SAFETY: read-only lookups of plain integers.
        let hit = unsafe { PORT_FILTER.get(&sport).is_some() || PORT_FILTER.get(&dport).is_some() };
        if !hit {
            return Err(());
        }
    }
    if cfg.flags & filter::PEER != 0 && !unaddressed && PEER_FILTER.get(&Key::new(128, daddr)).is_none() {
        return Err(());
    }
    let cookie = net_cookie_direct(c.net);
    if !netns_kept(cfg, cookie) {
        return Err(());
    }
    let aux = if into_tw && cfg.flags & filter::TIMERS != 0 {
        active_close(sk, cookie, &saddr, &daddr, sport, dport, via_sock_ops)
    } else {
        0
    };
    let event = Event {
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
    };
    send(event);
    if aux & state_aux::TW_UNTIMED != 0 {
        // The TIME_WAIT socket no timer event reported, for `trace --timewait`.
        send(Event { kind: kind::TW_BORN, newstate: born_substate(sk), aux: 0, ..event });
        count(stat::TW_BORN);
    }
    Ok(())
}

/// `SOCK_DONE` in `sk_flags` (`enum sock_flags`): set by `tcp_fin()` when the peer's FIN arrives.
const SOCK_DONE: u64 = 1 << 1;

/// The substate of the TIME_WAIT socket an active close of `sk` hands over to: TIME_WAIT once
/// the peer's FIN arrived, else FIN_WAIT2 (an orphan whose peer has not closed).
#[inline(always)]
pub(crate) fn born_substate(sk: u64) -> u32 {
    let flags: u64 = load(sk, off!(sk_flags));
    if flags & SOCK_DONE != 0 { tcp_state::TIME_WAIT } else { tcp_state::FIN_WAIT2 }
}

/// The local port the tracepoint's record reports, `inet_sport`, given `skc_num`. TCP sets the two
/// together with no state change in between (bind, autobind, connect's port choice, the clone of
/// a listener) and never clears `inet_sport` alone, so a non-zero `skc_num` is the answer. It is
/// zero before a port is chosen (CLOSE -> SYN_SENT, where `inet_sport` is zero too) and once the
/// port has passed to a TIME_WAIT socket (FIN_WAIT2 -> CLOSE, where `inet_sport` still holds it):
/// then read `inet_sport` itself. The integration tests check every port against the sockets'
/// own addresses.
#[inline(always)]
pub(crate) fn local_port(sk: u64, num: u16) -> Result<u16, ()> {
    if num != 0 {
        return Ok(num);
    }
    let sport_be: u16 = read(sk, off!(inet_sport)).map_err(|_| count(stat::READ_ERROR))?;
    Ok(u16::from_be(sport_be))
}

/// Did this active close create a TIME_WAIT socket? `tcp_time_wait()` arms the TIME_WAIT timer
/// (recorded in `LAST_TW` by the timer program on this CPU) and moves the full socket out of the
/// established hash before `tcp_done()` moves it to CLOSE, in the same call. `sock_ops` is
/// called before `tcp_set_state()` unhashes the socket itself: there, unhashed with no timer
/// noted means a timer event the tracepoint did not deliver (`TW_UNTIMED`). No timer and no
/// socket error means the kernel found `tcp_max_tw_buckets` full. Only with the timer programs
/// attached (`filter::TIMERS`).
#[inline(always)]
fn active_close(
    sk: u64,
    cookie: u64,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
    via_sock_ops: bool,
) -> u64 {
    if off!(tw_timer_fn) == 0 {
        return 0;
    }
    if take_last_tw(cookie, saddr, daddr, sport, dport) {
        return state_aux::TW_CREATED;
    }
    if via_sock_ops && load::<u64>(sk, off!(skc_pprev)) == 0 {
        return state_aux::TW_CREATED | state_aux::TW_UNTIMED;
    }
    let err: i32 = load(sk, off!(sk_err));
    if err == 0 { state_aux::OVERFLOW } else { 0 }
}

/// Was the last TIME_WAIT timer this CPU saw start (`LAST_TW`) this socket's? Then take it out.
#[inline(always)]
pub(crate) fn take_last_tw(cookie: u64, saddr: &[u8; 16], daddr: &[u8; 16], sport: u16, dport: u16) -> bool {
    let Some(slot) = LAST_TW.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot. A timer program in a softirq interrupting this one may rewrite it
    // meanwhile; then this one close gets a wrong verdict, which a TIME_WAIT table absorbs (a
    // `TW_BORN` for a socket it has is ignored).
    let last: &mut LastTw = unsafe { &mut *slot };
    if last.netns_cookie == cookie
        && last.sport == sport
        && last.dport == dport
        && last.saddr == *saddr
        && last.daddr == *daddr
    {
        *last = LastTw::default();
        return true;
    }
    false
}
