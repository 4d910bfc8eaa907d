//! The running test: machines, nodes, VLANs and the test-level functions of the NixOS driver.
//!
//! [`setup`] makes a run from a declaration, [`script`] holds what a script calls on the run
//! (`start_all`, `join_all`, `subtest`, `retry`, polling conditions), [`adhoc`] makes machines at
//! run time (`create_machine`), [`finish`] saves the artefacts and cleans up, and [`watchdog`]
//! enforces the global timeout.

mod adhoc;
mod finish;
mod script;
mod setup;
mod watchdog;

pub use finish::Report;
pub use script::ScriptResult;
pub(crate) use setup::Declaration;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ctx::SharedCtx;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::node::Node;
use crate::vlan::VLan;
use crate::warm::Prepared;

/// The running test, handed to the script: `t.machine("server")`, `t.start_all()`, ...
///
/// Every method takes `&self`; machines are `Arc<Machine>` and can be driven from several threads
/// (one thread per machine at a time).
pub struct TestRun {
    pub(crate) name: String,
    pub(crate) ctx: SharedCtx,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) machines: BTreeMap<String, Arc<Machine>>,
    pub(crate) extra: Arc<Mutex<Vec<Arc<Machine>>>>,
    pub(crate) vlans: BTreeMap<u8, VLan>,
    pub(crate) poller: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) rt: Option<tokio::runtime::Runtime>,
    pub(crate) watchdog: Option<watchdog::Watchdog>,
    pub(crate) started: Instant,
    pub(crate) plan_nodes: BTreeMap<String, machinist_guest::NodeConfig>,
    pub(crate) image_cache: machinist_guest::ImageCache,
    pub(crate) finished: bool,
    /// Leaf crates' `tracing` warnings go to this run's log while it lives.
    pub(crate) _forward: crate::log::forward::Attached,
}

impl std::fmt::Debug for TestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRun")
            .field("name", &self.name)
            .field("machines", &self.machines.keys().collect::<Vec<_>>())
            .field("vlans", &self.vlans.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TestRun {
    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The machine called `name`.
    ///
    /// # Panics
    /// If there is no such machine (a typo in the script); use [`TestRun::get_machine`] to get an
    /// error instead.
    pub fn machine(&self, name: &str) -> Arc<Machine> {
        match self.get_machine(name) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// The machine called `name` (declared or created with [`TestRun::create_machine`]).
    pub fn get_machine(&self, name: &str) -> Result<Arc<Machine>> {
        if let Some(m) = self.machines.get(name) {
            return Ok(m.clone());
        }
        let found = self
            .extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.name() == name)
            .cloned();
        if let Some(m) = found {
            return Ok(m);
        }
        Err(Error::NoSuchMachine {
            name: name.to_string(),
            known: self
                .all_machines()
                .iter()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The declared machines, in name order (as NixOS' `machines`).
    pub fn machines(&self) -> Vec<Arc<Machine>> {
        self.machines.values().cloned().collect()
    }

    fn all_machines(&self) -> Vec<Arc<Machine>> {
        let mut v = self.machines();
        v.extend(
            self.extra
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        v
    }

    /// The declared node called `name` (its configuration and typed options).
    ///
    /// # Panics
    /// If there is no such node.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.get(name).unwrap_or_else(|| {
            panic!(
                "no node named `{name}`; nodes are: {}",
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Every node, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The VLAN `nr`, if any node is attached to it.
    pub fn vlan(&self, nr: u8) -> Option<&VLan> {
        self.vlans.get(&nr)
    }

    /// Every VLAN, by number.
    pub fn vlans(&self) -> impl Iterator<Item = &VLan> {
        self.vlans.values()
    }

    /// The output directory (logs, JUnit, screenshots, copies from machines).
    pub fn output_dir(&self) -> &Path {
        &self.ctx.out_dir
    }

    /// The run directory (sockets, disk overlays; removed at the end unless keep_state).
    pub fn run_dir(&self) -> &Path {
        &self.ctx.run_dir
    }

    /// The test log.
    pub fn logger(&self) -> &crate::log::Logger {
        &self.ctx.logger
    }

    /// A log line (NixOS `log`).
    pub fn log(&self, message: &str) {
        self.ctx.logger.log(None, message);
    }

    /// Runs `f` in a nested log block (NixOS `nested` / `driver.logger.nested`).
    pub fn nested<T>(&self, message: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.ctx.logger.nested(None, message, f)
    }

    /// Builds (or reuses) the warm-start snapshot of every machine, without starting any; one
    /// entry per machine in name order: the snapshot key, or why the machine boots cold.
    pub fn prepare_warm_start(&self) -> Result<Vec<(String, Prepared)>> {
        self.machines()
            .iter()
            .map(|m| Ok((m.name().to_string(), m.prepare_warm_start()?)))
            .collect()
    }

    /// Interrupts every command and wait in flight (Ctrl-C in the REPL): running guest commands
    /// are killed through the control channel and the calls fail with [`Error::Interrupted`].
    /// The machines keep running; calls made afterwards work as usual.
    pub fn interrupt(&self) {
        self.ctx
            .interrupt_tx
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Shows serial console lines (`<machine> # ...`) on the terminal again.
    pub fn serial_stdout_on(&self) {
        self.ctx.logger.set_print_serial(true);
    }

    /// Hides serial console lines on the terminal (they stay in the JSON log and console logs).
    pub fn serial_stdout_off(&self) {
        self.ctx.logger.set_print_serial(false);
    }

    /// Turns the global timeout off for the rest of the run: for an interactive session, where
    /// a person (not a deadline) decides when the machines stop.
    pub fn disarm_global_timeout(&self) {
        if let Some(w) = &self.watchdog {
            w.disarm();
            self.ctx.logger.log(
                None,
                "the global timeout is off for this interactive session",
            );
        }
    }

    /// The (scaled) global timeout of this run.
    pub fn global_timeout(&self) -> Duration {
        self.ctx.timeouts.global()
    }

    /// The time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.ctx.logger.elapsed()
    }

    pub(crate) fn every_machine(&self) -> Vec<Arc<Machine>> {
        self.all_machines()
    }
}
