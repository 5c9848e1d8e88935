//! Audit trail of real kills: one JSON line per kill batch (one namespace of one run) appended to
//! a file, mirrored to syslog (authpriv). Opened before anything is killed, so a kill that
//! cannot be recorded does not happen.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

pub const DEFAULT_PATH: &str = "/var/log/twreset/audit.log";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {} (choose another with --audit-log PATH)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the audit log {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who ran the kill, with what command line, and through what (`cli`, or `api` for a caller of
/// the agent's socket, whose uid and pid come from its socket's peer credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub uid: u32,
    pub user: String,
    pub pid: u32,
    pub argv: Vec<String>,
    pub trigger: &'static str,
}

impl Actor {
    pub fn current() -> Self {
        let uid = nix::unistd::getuid().as_raw();
        Self { uid, user: user_name(uid), pid: std::process::id(), argv: std::env::args().collect(), trigger: "cli" }
    }

    /// Another process (an API caller): its command line as `/proc` shows it, when it still can.
    pub fn peer(uid: u32, pid: u32) -> Self {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Self { uid, user: user_name(uid), pid, argv, trigger: "api" }
    }
}

fn user_name(uid: u32) -> String {
    let id = nix::unistd::Uid::from_raw(uid);
    nix::unistd::User::from_uid(id).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}

/// One kill batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time_ms: u64,
    pub netns: String,
    pub netns_cookie: u64,
    pub method: &'static str,
    pub selector: String,
    pub selected: usize,
    pub killed: usize,
    pub gone: usize,
    pub failed: usize,
}

/// UTC RFC 3339 with milliseconds, from Unix milliseconds (civil-from-days, no time zone data).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// The JSON object of one audit line.
pub fn line(actor: &Actor, r: &Record) -> Value {
    json!({
        "time": rfc3339(r.time_ms),
        "uid": actor.uid,
        "user": actor.user,
        "pid": actor.pid,
        "argv": actor.argv,
        "trigger": actor.trigger,
        "netns": r.netns,
        "netns_cookie": r.netns_cookie,
        "method": r.method,
        "selector": r.selector,
        "selected": r.selected,
        "killed": r.killed,
        "gone": r.gone,
        "failed": r.failed,
    })
}

pub struct AuditLog {
    path: PathBuf,
    file: File,
    actor: Actor,
    /// Written on every line after the standard fields (the relief's rule, destination, pressure).
    extra: serde_json::Map<String, Value>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_as(path, Actor::current())
    }

    /// Open for kills made on behalf of `actor` (the agent's API callers).
    pub fn open_as(path: &Path, actor: Actor) -> Result<Self, AuditError> {
        let err = |source| AuditError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o640).open(path).map_err(err)?;
        Ok(Self { path: path.to_owned(), file, actor, extra: serde_json::Map::new() })
    }

    /// Replace the fields added to every line from now on.
    pub fn set_fields(&mut self, fields: serde_json::Map<String, Value>) {
        self.extra = fields;
    }

    /// Append one line (a single `write` on an O_APPEND file, so concurrent runs do not interleave).
    pub fn write(&mut self, r: &Record) -> Result<(), AuditError> {
        let mut v = line(&self.actor, r);
        if let Value::Object(m) = &mut v {
            m.extend(self.extra.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        let mut text = v.to_string();
        syslog(&text);
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(|source| AuditError::Write { path: self.path.clone(), source })
    }
}

/// Best effort: syslog is a mirror; the file is the record.
fn syslog(msg: &str) {
    static IDENT: &std::ffi::CStr = c"twreset";
    let Ok(msg) = CString::new(msg) else { return };
    // SAFETY: IDENT is 'static (openlog keeps the pointer); "%s" with a valid C string.
    unsafe {
        libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
        libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), msg.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn writes_lines() {
        let dir = std::env::temp_dir().join(format!("twreset-audit-{}", std::process::id()));
        let path = dir.join("sub/audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        let r = Record {
            time_ms: 0,
            netns: "ns1".into(),
            netns_cookie: 5,
            method: "destroy",
            selector: "state time-wait peer 10.0.0.1".into(),
            selected: 3,
            killed: 2,
            gone: 1,
            failed: 0,
        };
        log.write(&r).unwrap();
        log.write(&r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["killed"], 2);
        assert_eq!(lines[0]["netns"], "ns1");
        assert!(lines[0]["argv"].is_array());
        assert_eq!(lines[0]["trigger"], "cli");
        let me = Actor::peer(0, std::process::id());
        assert_eq!((me.trigger, me.argv.is_empty()), ("api", false));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
