//! The crate's main error type for command validation, spawning and supervision.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// The Debian package that ships `qemu-system-x86_64`.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Errors from building, validating, spawning and supervising QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The QEMU binary is not installed (or not on `PATH`).
    #[error(
        "QEMU binary `{binary}` not found{where_}: install the Debian package {package} \
         (apt-get install {package}) or set the binary path on the QemuCommand",
        where_ = if binary.contains('/') { "" } else { " on PATH" }
    )]
    BinaryNotFound {
        /// The binary that was looked up.
        binary: String,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// A file named on the command line does not exist.
    #[error("{what} `{}` does not exist: check the path (nothing was started)", path.display())]
    MissingFile {
        /// What the file is for (`kernel`, `initrd`, `disk`, ...).
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },

    /// A unix socket path is longer than the kernel's `sun_path` limit.
    #[error(
        "unix socket path is {len} bytes, the limit is {max}: `{}`; use a shorter run directory \
         (for example under /tmp) (nothing was started)",
        path.display(),
        max = crate::socket::MAX_SOCKET_PATH
    )]
    SocketPathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },

    /// A command-line field has an invalid value.
    #[error("invalid QEMU option {field} = `{value}`: {hint}")]
    InvalidOption {
        /// Which field (`name`, `nic id`, `memory_mib`, ...).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        hint: String,
    },

    /// Forking/executing QEMU failed.
    #[error("cannot start QEMU `{binary}` for machine `{name}`: {source}")]
    Spawn {
        /// Machine name.
        name: String,
        /// Binary path.
        binary: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// QEMU exited while the caller was waiting for it to do something.
    #[error(
        "QEMU exited with {}: {} (machine `{name}`)",
        describe_status(status),
        stderr_or_hint(stderr)
    )]
    Exited {
        /// Machine name.
        name: String,
        /// QEMU's exit status.
        status: ExitStatus,
        /// The tail of QEMU's stderr.
        stderr: String,
    },

    /// A deadline passed.
    #[error("timed out after {timeout:?} waiting for {what} (machine `{name}`)")]
    Timeout {
        /// Machine name.
        name: String,
        /// What was awaited.
        what: String,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// An I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl QemuError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        QemuError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Renders an exit status as `status 1` or `signal 9 (SIGKILL)`.
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("status {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "unknown".into());
        format!("signal {sig} ({name})")
    } else {
        format!("{status}")
    }
}

fn stderr_or_hint(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        "(no output on stderr)".to_string()
    } else {
        s.to_string()
    }
}
