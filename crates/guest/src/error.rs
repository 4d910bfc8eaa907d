//! Error types of the crate.

use std::fmt;
use std::path::PathBuf;

/// One invalid field of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Node name.
    pub node: String,
    /// Field path, e.g. `users[0].name` or `firewall.allowed_tcp_ports`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {:?}: {}: {}", self.node, self.field, self.message)
    }
}

/// Errors of machinist-guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The node configuration is invalid (every problem is listed, each naming node and field).
    #[error("invalid node configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),

    /// apt does not know a package.
    #[error("image {image}: unknown Debian package {package:?} (apt said: {apt_message}); check the spelling or the suite")]
    UnknownPackage {
        /// Image being built.
        image: String,
        /// The package apt could not find.
        package: String,
        /// apt's own message.
        apt_message: String,
    },

    /// A build step failed.
    #[error("image {image}: {step} failed ({status}); last output:\n{output}")]
    BuildStep {
        /// Image being built.
        image: String,
        /// Step (command) name.
        step: String,
        /// Exit status.
        status: String,
        /// Tail of its output.
        output: String,
    },

    /// A host tool is missing.
    #[error("{tool} not found: install the Debian package {package}")]
    MissingTool {
        /// Binary name.
        tool: String,
        /// Debian package providing it.
        package: String,
    },

    /// Out of disk space.
    #[error("disk full while building image {image} in {path}: {detail}; free some space (need about {needed_mib} MiB) or set MACHINIST_CACHE_DIR to a bigger disk")]
    DiskFull {
        /// Image being built.
        image: String,
        /// Where.
        path: PathBuf,
        /// What reported it.
        detail: String,
        /// Roughly how much is needed.
        needed_mib: u64,
    },

    /// The image has no kernel or module directory.
    #[error("image {image}: {what}")]
    BadImage {
        /// Image.
        image: String,
        /// What is missing.
        what: String,
    },

    /// Filesystem error.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// A deadline passed.
    #[error("timed out after {seconds:.1} s: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long.
        seconds: f64,
    },
    /// Locking or publishing a cache entry failed (the lock file or directory is named).
    #[error(transparent)]
    Cache(#[from] machinist_qemu::PublishError),

    /// The backdoor shell of a test VM failed (the machine is named).
    #[error(transparent)]
    Shell(#[from] machinist_backdoor::ShellError),
}

impl GuestError {
    /// Wrap an io error with context and path.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        GuestError::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = GuestError> = std::result::Result<T, E>;
