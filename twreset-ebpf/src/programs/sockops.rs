//! `sock_ops` on the cgroup v2 root: a second source of TCP state transitions, called by
//! `tcp_set_state()` itself. The `inet_sock_set_state` tracepoint leaves about 7 transitions per
//! million undelivered on 6.18 under churn, with no miss counted anywhere (README, "Recursion
//! misses"); `sock_ops` sees them. It turns `BPF_SOCK_OPS_STATE_CB` on for each socket once it is
//! established and from then on reports that socket's transitions; the tracepoint programs leave
//! those to it (`state::handle`). Transitions before establishment stay with the tracepoint.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::sock_ops,
    programs::SockOpsContext,
};
use twreset_common::filter;

use super::state::{Transition, handle_sock_ops, sock_ops_may_report, state_filter};

#[sock_ops]
pub fn sock_state(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_STATE_CB => state_cb(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn state_cb(ctx: &SockOpsContext) {
    // SAFETY: reading the context's socket pointer; null is checked before use.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: helper on a non-null socket from the context; it returns null for non-TCP.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return;
    }
    let t = Transition { sk: tp as u64, old: ctx.arg(0), new: ctx.arg(1) };
    if sock_ops_may_report(t.old)
        && let Some(cfg) = state_filter(&t)
        && cfg.flags & filter::SOCK_OPS != 0
        && cfg.flags & filter::OVERFLOW_ONLY == 0
    {
        handle_sock_ops(&t, &cfg);
    }
}
