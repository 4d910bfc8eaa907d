//! Unix socket helpers: the path-length check and listeners the driver owns.
//!
//! QEMU connects to every socket as a *client* (consoles, QMP, `-netdev stream,server=off`), so
//! the host side binds and listens before QEMU starts and nothing written by the guest is lost.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;

use crate::error::QemuError;

/// The longest unix socket path Linux accepts (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks that `path` fits into `sockaddr_un`; the error names the path and suggests a shorter
/// run directory.
pub fn check_socket_path(path: &Path) -> Result<(), QemuError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(QemuError::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// Binds a listening unix socket at `path` (std, non-blocking so it can be handed to tokio).
///
/// A stale socket left by an earlier run is unlinked first; any other kind of file at `path` is an
/// error (never deleted).
pub fn bind_std_listener(path: &Path) -> Result<StdUnixListener, QemuError> {
    check_socket_path(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| {
                QemuError::io(format!("cannot remove stale socket {}", path.display()), e)
            })?;
        }
        Ok(_) => {
            return Err(QemuError::io(
                format!(
                    "cannot bind unix socket {}: a non-socket file is in the way; remove it",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ))
        }
        Err(_) => {}
    }
    let listener = StdUnixListener::bind(path)
        .map_err(|e| QemuError::io(format!("cannot bind unix socket {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| QemuError::io(format!("cannot configure socket {}", path.display()), e))?;
    Ok(listener)
}

/// Binds a listening tokio unix socket at `path` (see [`bind_std_listener`]).
///
/// Must be called inside a tokio runtime.
pub fn bind_listener(path: &Path) -> Result<tokio::net::UnixListener, QemuError> {
    let std = bind_std_listener(path)?;
    tokio::net::UnixListener::from_std(std)
        .map_err(|e| QemuError::io(format!("cannot register socket {}", path.display()), e))
}

/// Accepts one connection on `listener` within `timeout`.
pub async fn accept_within(
    listener: &tokio::net::UnixListener,
    timeout: std::time::Duration,
    name: &str,
    what: &str,
) -> Result<tokio::net::UnixStream, QemuError> {
    match tokio::time::timeout(timeout, listener.accept()).await {
        Ok(Ok((stream, _))) => Ok(stream),
        Ok(Err(e)) => Err(QemuError::io(format!("accepting {what} for `{name}`"), e)),
        Err(_) => Err(QemuError::Timeout {
            name: name.to_string(),
            what: format!("QEMU to connect to {what}"),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_path_is_rejected_with_hint() {
        let p = std::path::PathBuf::from(format!("/tmp/{}/qmp.sock", "x".repeat(120)));
        let err = check_socket_path(&p).unwrap_err().to_string();
        assert!(err.contains("qmp.sock"), "{err}");
        assert!(err.contains("shorter run directory"), "{err}");
        assert!(check_socket_path(Path::new("/tmp/a.sock")).is_ok());
        let exactly = format!("/{}", "y".repeat(106));
        assert!(check_socket_path(Path::new(&exactly)).is_ok());
        let over = format!("/{}", "y".repeat(107));
        assert!(check_socket_path(Path::new(&over)).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_but_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let l1 = bind_std_listener(&p).unwrap();
        drop(l1); // leaves the socket file behind
        assert!(p.exists());
        let _l2 = bind_std_listener(&p).unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "keep").unwrap();
        assert!(bind_std_listener(&f).is_err());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
    }
}
