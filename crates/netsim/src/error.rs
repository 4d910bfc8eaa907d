//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong when starting or controlling a switch.
#[derive(Debug, thiserror::Error)]
pub enum NetsimError {
    /// A unix socket path does not fit in `sockaddr_un` (108 bytes including the NUL).
    #[error(
        "unix socket path {path} is {len} bytes long; it must be shorter than 108 bytes: \
         use a shorter switch directory (e.g. under /tmp)"
    )]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The switch directory could not be created.
    #[error("cannot create switch directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listening socket could not be bound.
    #[error("cannot bind unix socket {path}: {source} (is another switch using this directory?)")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A port name is empty or contains characters that cannot be part of a file name.
    #[error("invalid port name {name:?}: {why}")]
    InvalidPortName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },
    /// A port with this name already exists.
    #[error("port {name:?} already exists on the VLAN {vlan} switch: port names must be unique")]
    DuplicatePort {
        /// The name.
        name: String,
        /// The switch's VLAN.
        vlan: u8,
    },
    /// A port name used in block/partition/impairment does not exist.
    #[error("no port named {name:?} on the VLAN {vlan} switch; known ports: [{known}]")]
    UnknownPort {
        /// The name asked for.
        name: String,
        /// The switch's VLAN.
        vlan: u8,
        /// The ports that do exist.
        known: String,
    },
    /// An impairment has an out-of-range value.
    #[error("invalid impairment for {target} on VLAN {vlan}: {why}")]
    InvalidImpairment {
        /// The port or pair.
        target: String,
        /// The switch's VLAN.
        vlan: u8,
        /// What is wrong.
        why: String,
    },
    /// A partition names a port twice.
    #[error("invalid partition on VLAN {vlan}: {why}")]
    InvalidPartition {
        /// The switch's VLAN.
        vlan: u8,
        /// What is wrong.
        why: String,
    },
    /// The pcap file could not be created or written.
    #[error("cannot write pcap file {path}: {source}")]
    Pcap {
        /// The capture file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The switch was shut down (or its thread died).
    #[error("the VLAN {vlan} switch is not running (it was shut down)")]
    Stopped {
        /// The switch's VLAN.
        vlan: u8,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {timeout:?} waiting for {what} on the VLAN {vlan} switch")]
    Timeout {
        /// The switch's VLAN.
        vlan: u8,
        /// What was awaited.
        what: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The switch thread or its runtime could not be started.
    #[error("cannot start the VLAN {vlan} switch thread: {source}")]
    Thread {
        /// The switch's VLAN.
        vlan: u8,
        /// The OS error.
        source: std::io::Error,
    },
    /// A synthetic client (see [`crate::client`]) failed.
    #[error("{what} ({path}): {source}")]
    Client {
        /// What the client was doing.
        what: String,
        /// The socket or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Check that `path` fits in a `sockaddr_un`.
pub(crate) fn check_socket_path(path: &std::path::Path) -> Result<(), NetsimError> {
    let len = path.as_os_str().len();
    if len >= 108 {
        return Err(NetsimError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}
