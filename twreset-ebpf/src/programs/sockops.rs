//! `sock_ops` on the cgroup v2 root: TCP state transitions from `tcp_set_state()` itself, for
//! every socket with `BPF_SOCK_OPS_STATE_CB` on. The `inet_sock_set_state` tracepoint leaves
//! about 7 transitions per million undelivered on 6.18 under churn, with no miss counted anywhere
//! (docs/internals/capture.md); `sock_ops` sees them, and costs one program run per transition
//! where the tracepoint costs two.
//!
//! Without `filter::OWN` it turns the flag on for each socket once it is established and from
//! then on reports that socket's transitions; the tracepoint programs leave those to it
//! (`state::handle`), and transitions before establishment stay with the tracepoint.
//!
//! With `filter::OWN` (`trace`), sockets are its from birth: `programs::own` turns the flag on
//! at `connect()` and for the sockets older than the trace, [`listen_cb`] at `listen()`, and a
//! listener's children inherit it. It then reports every transition of a flagged socket, and
//! makes up the two that `tcp_set_state()` never makes: `CLOSE -> LISTEN` ([`listen_cb`]) and a
//! child's `LISTEN -> SYN_RECV` ([`passive_established`], [`is_child`]). The
//! tracepoint programs report only sockets without the flag, and userspace detaches them once
//! the older sockets are handed over. The one transition pair no hook then sees is a `listen()`
//! that fails after the socket entered LISTEN (`inet_csk_listen_start()`: port taken).
//!
//! For a TIME_WAIT table (`filter::TW_TABLE`) it reports only what the timer programs missed:
//! the timer tracepoint leaves the same segments' TIME_WAIT creations undelivered ([`table_close`]).

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use twreset_common::{Event, FilterConfig, filter, kind, stat, tcp_state};

use super::state::{
    Transition, born_substate, child_key, handle_sock_ops, local_port, note_for_tracepoint, sock_ops_may_report,
    state_filter, take_last_tw,
};
use crate::{
    maps::{config, count, netns_kept, send, tp_first_take},
    offsets::{common_direct, load, net_cookie_direct, off},
};

#[sock_ops]
pub fn sock_state(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            add_state_cb(&ctx);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => passive_established(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => listen_cb(&ctx),
        BPF_SOCK_OPS_STATE_CB => state_cb(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn state_cb(ctx: &SockOpsContext) {
    let cfg = config();
    if cfg.flags & filter::TW_TABLE != 0 {
        let (old, new) = (ctx.arg(0), ctx.arg(1));
        if new == tcp_state::CLOSE && (old == tcp_state::FIN_WAIT2 || old == tcp_state::CLOSING) {
            table_close(ctx, &cfg, old);
        }
        return;
    }
    let Some(tp) = tcp_sock(ctx) else { return };
    let t = Transition { sk: tp, old: ctx.arg(0), new: ctx.arg(1) };
    // With `filter::OWN` every transition of a flagged socket is ours; without, only those
    // `sock_ops_may_report` allows.
    if cfg.flags & filter::OWN != 0 || (sock_ops_may_report(t.old) && cfg.flags & filter::SOCK_OPS != 0) {
        // Ours whether the filters keep it or not: the tracepoint's primary leaves it (once
        // those programs are detached, nothing reads the note).
        if cfg.flags & filter::STATE_DETACHED == 0 {
            note_for_tracepoint(&t);
        }
        if let Some(cfg) = state_filter(&t) {
            handle_sock_ops(&t, &cfg);
        }
    }
}

/// `listen()` moved the socket to LISTEN (`inet_csk_listen_start()`, which calls no
/// `sock_ops`). With `filter::OWN` the socket takes the flag now (its children inherit it), and
/// the move is reported here unless the tracepoint did ([`reported_by_tracepoint`]).
#[inline(always)]
fn listen_cb(ctx: &SockOpsContext) {
    let cfg = config();
    if cfg.flags & filter::OWN == 0 {
        return;
    }
    let Some(tp) = tcp_sock(ctx) else { return };
    add_state_cb(ctx);
    if reported_by_tracepoint(ctx) {
        return;
    }
    synthesize(Transition { sk: tp, old: tcp_state::CLOSE, new: tcp_state::LISTEN });
}

/// A passive open is about to leave SYN_RECV (called once, before that `tcp_set_state()`; a Fast
/// Open child: when it is made). The flag goes on, as for every established socket. With
/// `filter::OWN`, a listener's child whose `LISTEN -> SYN_RECV` the tracepoint did not report
/// (it inherited the flag, so the tracepoint left it to us) has it reported here. A child that
/// had the flag off was seen by the tracepoint, which noted it if it is in scope, unless the
/// tracepoint programs were detached: then its listener is out of scope, and so is the child.
#[inline(always)]
fn passive_established(ctx: &SockOpsContext) {
    let was_off = add_state_cb(ctx);
    if config().flags & filter::OWN == 0 {
        return;
    }
    let Some(tp) = tcp_sock(ctx) else { return };
    // The note first, so that none stays behind. There is one when the tracepoint reported the
    // child, whatever the flag says now (another tool's `sock_ops`, called before this one, may
    // have turned it on). Without one, a flag that was already on was inherited.
    if tp_first_take(|| child_key(tp)) || was_off {
        return;
    }
    if is_child(tp) {
        synthesize(Transition { sk: tp, old: tcp_state::LISTEN, new: tcp_state::SYN_RECV });
    }
}

/// Did the tracepoint report the context's listener's `CLOSE -> LISTEN` (`state::note_first`)?
/// Takes the note out. By socket cookie: `listen()` may move to another CPU between the two.
#[inline(always)]
fn reported_by_tracepoint(ctx: &SockOpsContext) -> bool {
    // SAFETY: helper on the program's own context.
    tp_first_take(|| unsafe { bpf_get_socket_cookie(ctx.ops.cast()) })
}

/// Turn `BPF_SOCK_OPS_STATE_CB` on for the context's socket, keeping its other flags: `true`
/// when it was off.
#[inline(always)]
fn add_state_cb(ctx: &SockOpsContext) -> bool {
    let flags = ctx.cb_flags();
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG != 0 {
        return false;
    }
    let _ = ctx.set_cb_flags((flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    true
}

/// Report a transition the socket made without `tcp_set_state()` (so without a `STATE_CB`).
#[inline(always)]
fn synthesize(t: Transition) {
    if let Some(cfg) = state_filter(&t) {
        handle_sock_ops(&t, &cfg);
    }
}

/// `SS_CONNECTING` of `enum socket_state`: a `connect()` is under way.
const SS_CONNECTING: u32 = 2;

/// Is `tp` (in SYN_RECV) a listener's child rather than a simultaneous open? A child is
/// born in SYN_RECV by a clone that calls no `sock_ops`; it has no `struct socket` until it is
/// accepted, and then (a Fast Open child, accepted early) one that is connected. A simultaneous
/// open is a `connect()` under way.
#[inline(always)]
fn is_child(tp: u64) -> bool {
    let socket: u64 = load(tp, off!(sk_socket));
    // `struct socket.state` is its first member; a typed load through the BTF pointer.
    socket == 0 || load::<u32>(socket, 0) != SS_CONNECTING
}

/// The context's socket as a BTF-typed `tcp_sock` (so the typed loads of `offsets` work).
#[inline(always)]
fn tcp_sock(ctx: &SockOpsContext) -> Option<u64> {
    // SAFETY: reading the context's socket pointer; null is checked before use.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: helper on a non-null socket from the context; it returns null for non-TCP.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() { None } else { Some(tp as u64) }
}

/// An active close (`FIN_WAIT2`/`CLOSING -> CLOSE`) seen by a TIME_WAIT table. `tcp_time_wait()`
/// arms the new TIME_WAIT socket's timer (the timer program notes it in `LAST_TW` on this CPU)
/// and takes the full socket out of the established hash, both before `tcp_done()` calls us.
/// Noted: the timer program reported it. Still hashed: no TIME_WAIT socket was made (an overflow
/// of `tcp_max_tw_buckets`, or a reset; the kernel counts those). Unhashed and not noted: the
/// timer tracepoint missed this creation, so report it here.
#[inline(always)]
fn table_close(ctx: &SockOpsContext, cfg: &FilterConfig, old: u32) {
    let Some(tp) = tcp_sock(ctx) else { return };
    let Ok(c) = common_direct(tp) else { return };
    let Ok(sport) = local_port(tp, c.num) else { return };
    let cookie = net_cookie_direct(c.net);
    if take_last_tw(cookie, &c.saddr, &c.daddr, sport, c.dport) {
        return;
    }
    let pprev: u64 = load(tp, off!(skc_pprev));
    if pprev != 0 {
        return;
    }
    if !netns_kept(cfg, cookie) {
        return;
    }
    send(Event {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie: cookie,
        skaddr: tp,
        saddr: c.saddr,
        daddr: c.daddr,
        sport,
        dport: c.dport,
        family: c.family,
        kind: kind::TW_BORN,
        oldstate: old,
        newstate: born_substate(tp),
        aux: 0,
    });
    count(stat::TW_BORN);
}
