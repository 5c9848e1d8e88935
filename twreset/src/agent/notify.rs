//! systemd `Type=notify`: `READY=1` once seeded, `WATCHDOG=1` every half `WATCHDOG_USEC`,
//! `STOPPING=1` on the way out, as datagrams to `$NOTIFY_SOCKET` (no libsystemd needed). Without
//! the variable every call does nothing.

use std::{
    os::{linux::net::SocketAddrExt, unix::net::UnixDatagram},
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("$NOTIFY_SOCKET {path:?}: cannot connect")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connected notification socket, if systemd gave one.
#[derive(Debug, Default)]
pub struct Notifier {
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Result<Self, NotifyError> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").map(|p| p.to_string_lossy().into_owned()) else {
            return Ok(Self::default());
        };
        let err = |source| NotifyError::Connect { path: path.clone(), source };
        let sock = UnixDatagram::unbound().map_err(err)?;
        match path.strip_prefix('@') {
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
                sock.connect_addr(&addr).map_err(err)?;
            }
            None => sock.connect(&path).map_err(err)?,
        }
        Ok(Self { sock: Some(sock) })
    }

    /// Send one state line (`READY=1`, ...); a failure is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some(s) = &self.sock
            && let Err(e) = s.send(state.as_bytes())
        {
            tracing::warn!("sd_notify {state}: {e}");
        }
    }
}

/// Half of the watchdog timeout systemd asks for (`WATCHDOG_USEC`), when it asks this process
/// (`WATCHDOG_PID` unset or ours).
pub fn watchdog_every(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(own_pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// [`watchdog_every`] from this process's environment.
pub fn watchdog_from_env() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    watchdog_every(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        assert_eq!(watchdog_every(Some("20000000"), None, 7), Some(Duration::from_secs(10)));
        assert_eq!(watchdog_every(Some("20000000"), Some("7"), 7), Some(Duration::from_secs(10)));
        assert_eq!(watchdog_every(Some("20000000"), Some("8"), 7), None);
        assert_eq!(watchdog_every(Some("0"), None, 7), None);
        assert_eq!(watchdog_every(Some("x"), None, 7), None);
        assert_eq!(watchdog_every(None, None, 7), None);
    }

    #[test]
    fn datagrams_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("twreset-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = UnixDatagram::bind(&dir).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.connect(&dir).unwrap();
        let n = Notifier { sock: Some(sock) };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        Notifier::default().notify("READY=1");
        let _ = std::fs::remove_file(&dir);
    }
}
