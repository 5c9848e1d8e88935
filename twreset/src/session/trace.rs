//! The kernel session in trace mode: loads and attaches in the protocol's order, hands older
//! sockets over to `sock_ops`, reads the full loss breakdown, changes the namespace filter at run
//! time; dropping it detaches.
//!
//! Attach order is part of the capture protocol (the kernel calls a hook's programs in attach
//! order, and a transition must never see the two sides disagree); [`TraceSession::start`] is
//! the only code that attaches trace mode, so no caller can get it wrong. The per-mode truth
//! table (also in docs/internals/capture.md, with the reasons):
//!
//! | mode | attached, in order | while running | who reports a transition |
//! |---|---|---|---|
//! | trace, one namespace or `--netns`, cgroup v2, Linux >= 6.12 | `sock_state` (`SOCK_OPS`), `connect_own4/6` (`OWN`), `set_state` + `set_state_nest`, [`--timewait`: timers], then per namespace `iter_own` and the state programs detached (`STATE_DETACHED`) | the three cgroup links [+ timers] | `sock_state`; sockets older than the trace: the state programs until `iter_own` flags them |
//! | trace `--all-netns` | as above, no hand-over | `sock_state`, `connect_own4/6`, the state programs [+ timers] | sockets born during the trace: `sock_state`; older ones: the state programs |
//! | trace, Linux < 6.12 (`attach_own` refused) | `sock_state`, the state programs [+ timers]; a warning | the same | `sock_state` from establishment on; the state programs the rest |
//! | trace without cgroup v2 | the state programs [+ timers]; a warning | the same | the state programs |
//! | table mode (`tw`, `top`, agent: [`super::TableSession`]) | timers (`TIMERS`), then `sock_state` (`SOCK_OPS`, `TW_TABLE`) | the same | timers; creations they missed: `sock_state` (`born`) |
//!
//! The session owns the loaded object; dropping it (or [`TraceSession::shutdown`]) detaches
//! every program and link. The ring buffer is handed to the caller apart ([`TraceEvents`]), so it
//! can be read while the session is asked for its counters.

use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::{kallsyms::Kallsyms, netns},
    probe::{Filters, Loss, Probe, ProbeError},
    scope::NetnsScope,
    state::TcpState,
    twfeed,
};

/// The event ring buffer of a trace session, registered with tokio.
pub type TraceEvents = AsyncFd<RingBuf<MapData>>;

/// What a trace session watches.
#[derive(Clone, Debug)]
pub struct TraceSpec<'a> {
    pub scope: &'a NetnsScope,
    pub peers: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
    /// Also attach the TIME_WAIT lifecycle programs (`trace --timewait`).
    pub timewait: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Netns(crate::kernel::netns::NetnsError),
    #[error("registering the ring buffer with tokio")]
    Register(#[source] std::io::Error),
}

/// A loaded, attached trace-mode session.
pub struct TraceSession {
    probe: Probe,
    filters: Filters,
    sock_ops: bool,
    /// What the user should know about how this session runs (a source left out, the
    /// tracepoint kept), in the order it happened; one line each, without the `twreset: ` prefix.
    notices: Vec<String>,
}

impl TraceSession {
    /// Load, set the filters, attach in the protocol's order (`sock_state`, the connect programs,
    /// the state programs, [the timer programs]) and hand older sockets over. A source that
    /// cannot attach is left out with a notice; the state programs are required.
    pub fn start(spec: TraceSpec<'_>) -> Result<(Self, TraceEvents), TraceError> {
        let netns = match spec.scope {
            NetnsScope::All => None,
            NetnsScope::Current => Some(vec![netns::current_cookie().map_err(TraceError::Netns)?]),
            NetnsScope::Paths(list) => {
                Some(list.iter().map(|n| n.cookie()).collect::<Result<_, _>>().map_err(TraceError::Netns)?)
            }
        };
        let filters = Filters { netns, peers: spec.peers, ports: spec.ports, states: spec.states, tw_table: false };
        let mut probe = Probe::load()?;
        probe.set_filters(&filters)?;
        let ring = probe.take_events()?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| TraceError::Register(e.into_parts().1))?;
        let mut notices = Vec::new();
        // Established sockets' transitions from tcp_set_state() itself, which the tracepoint
        // leaves a few per million of undelivered; without it the tracepoint reports everything.
        // First, so that the tracepoint programs never run without it (`Probe::attach_sock_ops`).
        let sock_ops = match probe.attach_sock_ops() {
            Ok(()) => true,
            Err(e) => {
                let e = anyhow::Error::from(e);
                notices.push(format!("warning: {e:#}; the tracepoint alone may miss a few transitions per million"));
                false
            }
        };
        // Sockets that connect or listen from now on are sock_ops' from birth; the tracepoint
        // programs report the others until the older sockets are handed over too.
        let own = sock_ops
            && match probe.attach_own() {
                Ok(()) => true,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    notices.push(format!("warning: {e:#}; the tracepoint programs stay attached"));
                    false
                }
            };
        probe.attach_state()?;
        if spec.timewait {
            probe.attach_timewait(twfeed::fault_skip())?;
        }
        if own {
            hand_over(&mut probe, spec.scope, &mut notices);
        }
        Ok((Self { probe, filters, sock_ops, notices }, ring))
    }

    /// What the user should know about this session, in order (see [`TraceSession::start`]).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The `sock_ops` source is attached.
    pub fn sock_ops(&self) -> bool {
        self.sock_ops
    }

    /// The full loss breakdown, read now.
    pub fn loss(&self) -> Result<Loss, ProbeError> {
        self.probe.loss()
    }

    /// Kernel function names for timer callbacks (`--timewait` causes).
    pub fn kallsyms(&self) -> Option<&Kallsyms> {
        self.probe.kallsyms()
    }

    /// Forward kernel-side log records to `tracing`.
    pub fn flush_logs(&mut self) {
        self.probe.flush_logs();
    }

    /// Replace the kernel-side namespace filter while attached (`None`: every namespace); the
    /// other filters stay.
    pub fn set_netns(&mut self, netns: Option<Vec<u64>>) -> Result<(), ProbeError> {
        self.filters.netns = netns;
        self.probe.set_filters(&self.filters)
    }

    /// The final loss breakdown, then detach everything.
    pub fn shutdown(self) -> Result<Loss, ProbeError> {
        self.probe.loss()
    }
}

/// Give the sockets of the watched namespaces that existed before the trace to `sock_ops`, then
/// detach the tracepoint programs: from then on each transition costs one `sock_ops` call
/// instead of that and two tracepoint programs. `--all-netns` keeps them: a namespace with no
/// process or name in it cannot be entered, and its older sockets would go unreported.
fn hand_over(probe: &mut Probe, scope: &NetnsScope, notices: &mut Vec<String>) {
    let handed = match scope {
        NetnsScope::All => {
            notices.push("--all-netns: the tracepoint programs stay attached for sockets older than this trace".into());
            return;
        }
        NetnsScope::Current => probe.own_existing().map_err(anyhow::Error::from),
        NetnsScope::Paths(list) => {
            list.iter().try_fold(0, |sum, n| -> anyhow::Result<u64> { Ok(sum + n.run(|| probe.own_existing())??) })
        }
    };
    match handed.and_then(|n| probe.detach_state().map(|()| n).map_err(anyhow::Error::from)) {
        Ok(n) => tracing::debug!("{n} existing sockets handed to sock_ops; tracepoint programs detached"),
        Err(e) => notices.push(format!("warning: {e:#}; the tracepoint programs stay attached")),
    }
}
