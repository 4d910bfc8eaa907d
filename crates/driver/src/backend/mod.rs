//! The backend seam: what a node's runtime must provide to the driver.
//!
//! A machine does not know how its node runs. It asks a backend to start the node (a cold boot
//! with [`qemu::QemuBackend::start_cold`], or a restore, which warm start drives)
//! and gets an [`Instance`] (the running node: its console, how to stop or crash it, its NICs
//! and, where it has them, a display and a QMP monitor) and the [`ShellTransport`] its backdoor
//! shells greet on. Everything above this seam (sessions, commands, waits, the network API) is
//! the same for every backend. An operation a backend cannot support answers
//! [`Unsupported`], which the machine reports as [`crate::Error::NotSupported`].
//!
//! Two backends: the QEMU virtual machine ([`qemu`]) and the systemd-nspawn container
//! ([`container`]), which boots the same image and node layer without a kernel of its own.

pub(crate) mod container;
pub(crate) mod qemu;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::error::BoxError;

/// A boxed future borrowed from an instance (the seam's async operations are object-safe).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a node runs on (the guest crate's [`machinist_guest::NodeBackend`]: a node's
/// configuration names it, the driver runs it).
pub use machinist_guest::NodeBackend as BackendKind;

/// A backend cannot do this operation (e.g. screenshots of a node with no display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported {
    /// The backend that was asked.
    pub(crate) kind: BackendKind,
    /// What it lacks, in a few words ("a display", "a QMP monitor").
    pub(crate) lacks: &'static str,
}

/// The two byte streams a started node's backdoor shells greet on: the main shell (commands)
/// and the control shell (cancelling, polling conditions).
pub(crate) struct ShellTransport {
    /// The main shell's stream.
    pub(crate) main: UnixStream,
    /// The control shell's stream.
    pub(crate) control: UnixStream,
}

/// A started node (one run of it: a restart is a new instance).
pub(crate) trait Instance: Send + Sync {
    /// The process id of the node's runtime on the host.
    fn pid(&self) -> u32;
    /// How it ended (`None` while it runs).
    fn exit_status(&self) -> Option<String>;
    /// The last lines of the runtime's own diagnostics (QEMU's stderr).
    fn diagnostics_tail(&self) -> String;
    /// The node's console output, line by line.
    fn console(&self) -> &machinist_qemu::SerialLog;
    /// Writes to the node's console input.
    fn write_console(&self, bytes: &[u8]) -> Result<(), BoxError>;
    /// Starts killing it (no clean shutdown); returns at once.
    fn start_kill(&self);
    /// Kills it and waits at most `grace` for it to end.
    fn kill_and_wait(&self, grace: Duration);
    /// Resolves once it has ended.
    fn ended(&self) -> BoxFuture<'_, ()>;
    /// A power failure: it ends at once, without a guest shutdown.
    fn power_off_now(&self) -> BoxFuture<'_, Result<(), BoxError>>;
    /// Plugs (`up`) or unplugs the NIC `nic_id` (the guest sees carrier change).
    fn set_link<'a>(&'a self, nic_id: &'a str, up: bool) -> BoxFuture<'a, Result<(), BoxError>>;
    /// The QMP monitor (screens, keys, monitor commands, QMP events), if the backend has one.
    fn qmp(&self) -> Result<&machinist_qemu::Qmp, Unsupported>;
}

/// Runs `fut` unless `instance` ends first (then `Err` with its exit status).
pub(crate) async fn while_running<F: Future>(
    instance: &dyn Instance,
    fut: F,
) -> Result<F::Output, String> {
    tokio::select! {
        v = fut => Ok(v),
        () = instance.ended() => Err(instance
            .exit_status()
            .unwrap_or_else(|| "ended".to_string())),
    }
}
