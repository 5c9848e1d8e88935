//! The API socket, created without a permission race: bound in a private 0700 directory beside
//! its path, given its mode, group (and the read-only group's ACL entry), then renamed into
//! place. A socket file already there is replaced only when nothing answers on it.

use std::{
    ffi::CString,
    fs::{self, DirBuilder},
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use nix::unistd::Gid;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another agent answers on {}", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BindError {
    let path = path.to_owned();
    move |source| BindError::Io { what, path, source }
}

/// The socket file in place; removed on drop if it is still ours (same inode).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    ino: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes the private directory (and anything left in it) on every way out.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn private_dir(parent: &Path, name: &str) -> Result<PrivateDir, BindError> {
    for n in 0u32.. {
        let dir = parent.join(format!(".{name}.{}.{n}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(PrivateDir(dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(io_err("creating a private directory", &dir)(e)),
        }
    }
    unreachable!("the loop returns")
}

/// Fail if a live agent answers on `path` or `path` is something else than a socket.
fn check_existing(path: &Path) -> Result<(), BindError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("looking at", path)(e)),
        Ok(m) if !m.file_type().is_socket() => Err(BindError::NotASocket { path: path.to_owned() }),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(BindError::InUse { path: path.to_owned() }),
            // Refused (or gone meanwhile): a stale file, which the rename replaces.
            Err(_) => Ok(()),
        },
    }
}

/// Bind the API socket at `path` with the access of [`set_access`].
pub fn bind(
    path: &Path,
    group: Option<Gid>,
    readonly_group: Option<Gid>,
) -> Result<(UnixListener, SocketFile), BindError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "agent.sock".into(), |n| n.to_string_lossy().into_owned());
    DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(io_err("creating", parent))?;
    check_existing(path)?;
    let private = private_dir(parent, &name)?;
    let tmp = private.0.join("sock");
    let listener = UnixListener::bind(&tmp).map_err(io_err("binding", &tmp))?;
    set_access(&tmp, group, readonly_group)?;
    fs::rename(&tmp, path).map_err(io_err("renaming the socket to", path))?;
    drop(private);
    let m = fs::symlink_metadata(path).map_err(io_err("looking at", path))?;
    Ok((listener, SocketFile { path: path.to_owned(), ino: (m.dev(), m.ino()) }))
}

/// Mode 0660, group `group` (else the agent's own), and an ACL entry for `readonly_group` (it
/// must be able to connect; what it may do is checked per connection). Also used on a reload.
pub fn set_access(path: &Path, group: Option<Gid>, readonly_group: Option<Gid>) -> Result<(), BindError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io_err("setting the mode of", path))?;
    let gid = group.unwrap_or_else(nix::unistd::getegid);
    std::os::unix::fs::chown(path, None, Some(gid.as_raw())).map_err(io_err("changing the group of", path))?;
    match readonly_group.filter(|ro| Some(*ro) != group) {
        None => remove_acl(path),
        Some(ro) => {
            if let Err(e) = set_group_acl(path, ro.as_raw()) {
                // Without ACLs the read-only group could not connect at all; the peer check still
                // decides what every connection may do.
                tracing::warn!("no ACL on {} ({e}); socket mode 0666, access checked per connection", path.display());
                fs::set_permissions(path, fs::Permissions::from_mode(0o666))
                    .map_err(io_err("setting the mode of", path))?;
            }
        }
    }
    Ok(())
}

/// A POSIX access ACL (`system.posix_acl_access`, version 2): owner rw, owning group rw,
/// `gid` rw, mask rw, others nothing.
pub fn group_acl(gid: u32) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] =
        [(0x01, 6, UNDEFINED), (0x04, 6, UNDEFINED), (0x08, 6, gid), (0x10, 6, UNDEFINED), (0x20, 0, UNDEFINED)];
    let mut buf = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        buf.extend_from_slice(&tag.to_le_bytes());
        buf.extend_from_slice(&perm.to_le_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
    }
    buf
}

/// Drop an access ACL an earlier configuration set (none there is fine).
fn remove_acl(path: &Path) {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: valid C strings.
    unsafe {
        libc::removexattr(p.as_ptr(), c"system.posix_acl_access".as_ptr());
    }
}

fn set_group_acl(path: &Path, gid: u32) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let acl = group_acl(gid);
    // SAFETY: valid C strings and a buffer of the given length.
    let rc =
        unsafe { libc::setxattr(p.as_ptr(), c"system.posix_acl_access".as_ptr(), acl.as_ptr().cast(), acl.len(), 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("twreset-bind-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn binds_with_mode_and_cleans_up() {
        let d = dir("mode");
        let path = d.join("run/agent.sock");
        let (l, file) = bind(&path, Some(Gid::from_raw(0)), Some(Gid::from_raw(4321))).unwrap();
        let m = fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777 & !0o006, 0o660, "group rw, nothing for others (unless no ACL)");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "private directory removed");
        let err = bind(&path, None, None).unwrap_err();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        drop(l);
        // Nothing answers any more: the stale file is replaced.
        let (_l2, file2) = bind(&path, None, None).unwrap();
        drop(file);
        assert!(path.exists(), "the old guard leaves a newer agent's socket alone");
        drop(file2);
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(matches!(bind(&path, None, None).unwrap_err(), BindError::NotASocket { .. }));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn acl_layout() {
        let a = group_acl(7);
        assert_eq!(a.len(), 4 + 5 * 8);
        assert_eq!(&a[..4], &[2, 0, 0, 0]);
        assert_eq!(&a[20..28], &[8, 0, 6, 0, 7, 0, 0, 0]);
    }
}
