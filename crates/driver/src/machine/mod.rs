//! A machine of the test: a node's runtime (behind the backend seam), its
//! backdoor shell session, console, network and display.
//!
//! `Machine` is a composition; each part has its own file:
//! `lifecycle` (start, shutdown, crash, reboot), `session` (connecting the backdoor, running
//! a command, cancelling), `commands` and `scripts` (the NixOS command API and its guest-side
//! loops), `copy` (files between host and guest), `console` (serial console), `network`
//! (block, links, port forwarding), `display` (screens, OCR, keys), `qmp` (the monitor),
//! `artefacts` (what a failed test keeps).
//!
//! The public API is blocking (like the NixOS driver) and runs on the test's tokio runtime. A
//! machine is `Sync`: different machines can be driven from different threads at once; commands on
//! one machine are serialised.

mod archive;
mod args;
mod artefacts;
mod commands;
mod console;
mod copy;
mod display;
mod lifecycle;
mod network;
mod qmp;
pub(crate) mod scripts;
mod session;
mod settle;

pub use args::Commands;
pub use commands::WaitForUnit;
pub use lifecycle::StartKind;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::backend::container::ContainerBackend;
use crate::backend::qemu::QemuBackend;
use crate::backend::{BackendKind, Instance, Unsupported};
use crate::ctx::SharedCtx;
use crate::error::{Error, Result};
use crate::vlan::VLan;
use crate::warm::WarmChoice;

/// One run of a machine's node (from a start to the end of that QEMU): the instance and the
/// session with its backdoor.
pub(crate) struct Running {
    pub(crate) instance: Arc<dyn Instance>,
    pub(crate) session: session::Session,
    console_task: tokio::task::JoinHandle<()>,
    pub(crate) allow_reboot: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.console_task.abort();
    }
}

/// A virtual machine of the test (NixOS `Machine`). Get it with `t.machine("server")`.
pub struct Machine {
    name: String,
    pub(crate) ctx: SharedCtx,
    backend: QemuBackend,
    /// Set when the node runs as a container (then `backend` only describes its NICs).
    container: Option<ContainerBackend>,
    warm: WarmChoice,
    pub(crate) running: Mutex<Option<Arc<Running>>>,
    lifecycle: Mutex<()>,
    console_cursor: Mutex<u64>,
    console_file: PathBuf,
    pub(crate) vlans: Vec<VLan>,
    /// Set for machines made by `create_machine`.
    pub(crate) adhoc_config: Option<machinist_guest::NodeConfig>,
    /// The first start happened (later starts boot cold from the machine's overlay).
    started_once: AtomicBool,
    /// How the node was last started (`None` before the first start).
    last_start: Mutex<Option<StartKind>>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.name)
            .field("booted", &self.is_booted())
            .finish()
    }
}

/// The result of [`Machine::execute`]: exit code and stdout (NixOS' `(rc, output)` tuple).
pub type ExecResult = (i32, String);

impl Machine {
    pub(crate) fn new(
        name: &str,
        ctx: SharedCtx,
        backend: QemuBackend,
        warm: WarmChoice,
        vlans: Vec<VLan>,
    ) -> Machine {
        let console_file = ctx.out_dir.join(format!("{name}-console.log"));
        Machine {
            name: name.to_string(),
            ctx,
            backend,
            container: None,
            warm,
            running: Mutex::new(None),
            lifecycle: Mutex::new(()),
            console_cursor: Mutex::new(0),
            console_file,
            vlans,
            adhoc_config: None,
            started_once: AtomicBool::new(false),
            last_start: Mutex::new(None),
        }
    }

    /// Runs the node as a container instead of a VM.
    pub(crate) fn with_container(mut self, container: ContainerBackend) -> Machine {
        self.container = Some(container);
        self
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the machine runs on.
    pub fn backend(&self) -> BackendKind {
        match &self.container {
            Some(c) => c.kind(),
            None => self.backend.kind(),
        }
    }

    pub(crate) fn log_line(&self, msg: &str) {
        self.ctx.logger.log(Some(&self.name), msg);
    }

    /// A log line prefixed with the machine name (NixOS `machine.log`).
    pub fn log(&self, msg: &str) {
        self.log_line(msg);
    }

    /// Runs `f` in a nested log block prefixed with the machine name (NixOS `machine.nested`).
    pub fn nested<T>(&self, msg: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.ctx.logger.nested(Some(&self.name), msg, f)
    }

    /// The current run, if the node is running.
    pub(crate) fn current(&self) -> Option<Arc<Running>> {
        let r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref()
            .filter(|r| r.instance.exit_status().is_none())
            .cloned()
    }

    fn require_running(&self, what: &str) -> Result<Arc<Running>> {
        self.current().ok_or_else(|| Error::NotRunning {
            machine: self.name.clone(),
            message: format!("cannot {what}: the machine is not running; call start() first"),
        })
    }

    /// A backend's "cannot do that" as the typed error naming this machine and the method.
    fn unsupported(&self, what: &str, u: Unsupported) -> Error {
        Error::NotSupported {
            machine: self.name.clone(),
            what: what.to_string(),
            why: format!("the {} backend has no {}", u.kind, u.lacks),
        }
    }

    /// Whether the node is running (NixOS `booted`).
    pub fn is_booted(&self) -> bool {
        self.current().is_some()
    }

    /// Whether the node runs and the backdoor shell is connected (NixOS `is_up`).
    pub fn is_up(&self) -> bool {
        self.current().is_some_and(|r| r.session.is_connected())
    }

    /// The node runs but has not finished booting (backdoor greeting, then systemd's start-up)
    /// since the last (re)boot.
    pub(crate) fn is_booting(&self) -> bool {
        self.current()
            .is_some_and(|r| !r.session.is_settled() || !r.session.is_connected())
    }

    /// The pid of the node's runtime (QEMU), if running.
    pub fn pid(&self) -> Option<u32> {
        self.current().map(|r| r.instance.pid())
    }

    /// The VLANs this machine is attached to.
    pub fn vlans(&self) -> &[VLan] {
        &self.vlans
    }
}

impl crate::settle::Booting for Machine {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_booting(&self) -> bool {
        Machine::is_booting(self)
    }

    fn settle(&self) -> Result<()> {
        self.settle_self()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill_now();
    }
}
