//! `--method auto` (the default): SOCK_DESTROY wherever the kernel can, the exact-sequence RST
//! where it cannot, decided by asking the kernel rather than by its version.
//!
//! - SOCK_DESTROY itself unsupported (`CONFIG_INET_DIAG_DESTROY` off, found by the preflight
//!   probe): every socket gets the RST.
//! - Otherwise non-TIME_WAIT sockets get SOCK_DESTROY, and the first TIME_WAIT socket is destroyed
//!   alone as a probe: killed means this kernel destroys TIME_WAIT sockets (Linux >= 6.0, or a
//!   backport) and the rest follow the same way; EOPNOTSUPP (`tcp_abort` refuses non-full sockets
//!   before 6.0) sends that socket and the rest to the RST killer. A socket that vanished before
//!   the probe proves nothing, so the next one probes.

use crate::{
    diag::{Diag, Entry, Outcome},
    kill::{
        Method,
        killer::{DestroyKiller, KillError, Killer},
        preflight::{self, Facts, PreflightError},
        rst::RstKiller,
    },
};

/// Per planned socket: what happened and which method acted on it.
pub struct AutoResult {
    pub outcomes: Vec<Outcome>,
    pub methods: Vec<Method>,
    /// Why some TIME_WAIT sockets could not be killed at all (neither method works here).
    pub blocked: Option<PreflightError>,
}

/// Kill `targets` in the calling thread's namespace with the best method per socket.
pub fn kill(
    diag: &mut Diag,
    facts: &Facts,
    targets: &[Entry],
    progress: &mut dyn FnMut(usize),
) -> Result<AutoResult, KillError> {
    let n = targets.len();
    let mut outcomes = vec![Outcome::Gone; n];
    let mut methods = vec![Method::Destroy; n];
    let destroy_works = matches!(facts.destroy_probe, Some(libc::ENOENT) | None);
    let (tw, full): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| targets[i].sock.timewait);
    let mut rst: Vec<usize> = Vec::new();
    let mut done = 0;
    if destroy_works {
        destroy(diag, targets, &full, &mut outcomes, &mut |k| progress(done + k))?;
        done += full.len();
        // Probe on the TIME_WAIT sockets themselves, one at a time until one answers.
        let mut next = 0;
        let mut tw_destroy = None;
        while tw_destroy.is_none() && next < tw.len() {
            let i = tw[next];
            next += 1;
            destroy(diag, targets, &[i], &mut outcomes, &mut |_| {})?;
            match outcomes[i] {
                Outcome::Killed => tw_destroy = Some(true),
                Outcome::Failed { errno: libc::EOPNOTSUPP } => {
                    tw_destroy = Some(false);
                    rst.push(i);
                }
                _ => {}
            }
        }
        done += next;
        progress(done);
        let rest = &tw[next..];
        if tw_destroy == Some(false) {
            rst.extend_from_slice(rest);
        } else {
            destroy(diag, targets, rest, &mut outcomes, &mut |k| progress(done + k))?;
            done += rest.len();
        }
    } else {
        rst = (0..n).collect();
    }
    let mut blocked = None;
    if !rst.is_empty() {
        let any_tw = rst.iter().any(|&i| targets[i].sock.timewait);
        if let Err(e) = preflight::check(Method::Rst, facts, any_tw) {
            // Neither method can act on these: they stay as SOCK_DESTROY left them (EOPNOTSUPP).
            for &i in &rst {
                outcomes[i] = Outcome::Failed { errno: libc::EOPNOTSUPP };
            }
            blocked = Some(e);
        } else {
            let subset: Vec<Entry> = rst.iter().map(|&i| targets[i].clone()).collect();
            let got = RstKiller.kill(&subset, &mut |k| progress(done + k))?;
            for (&i, o) in rst.iter().zip(got) {
                outcomes[i] = o;
                methods[i] = Method::Rst;
            }
        }
    }
    progress(n);
    Ok(AutoResult { outcomes, methods, blocked })
}

/// SOCK_DESTROY the sockets at `idx`, writing their outcomes in place.
fn destroy(
    diag: &mut Diag,
    targets: &[Entry],
    idx: &[usize],
    outcomes: &mut [Outcome],
    progress: &mut dyn FnMut(usize),
) -> Result<(), KillError> {
    if idx.is_empty() {
        return Ok(());
    }
    let subset: Vec<Entry> = idx.iter().map(|&i| targets[i].clone()).collect();
    let got = DestroyKiller { diag }.kill(&subset, progress)?;
    for (&i, o) in idx.iter().zip(got) {
        outcomes[i] = o;
    }
    Ok(())
}

/// The audit log's method for a namespace: one name, or both when the run mixed them.
pub fn describe(methods: &[Method]) -> &'static str {
    let destroy = methods.contains(&Method::Destroy);
    let rst = methods.contains(&Method::Rst);
    match (destroy, rst) {
        (true, true) => "destroy+rst",
        (false, true) => "rst",
        _ => "destroy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_mixed_runs() {
        assert_eq!(describe(&[Method::Destroy, Method::Destroy]), "destroy");
        assert_eq!(describe(&[Method::Rst]), "rst");
        assert_eq!(describe(&[Method::Destroy, Method::Rst]), "destroy+rst");
        assert_eq!(describe(&[]), "destroy");
    }
}
