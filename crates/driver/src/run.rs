//! The running test: machines, nodes, VLANs and the test-level functions of the NixOS driver
//! (`start_all`, `join_all`, `subtest`, `retry`, `polling_condition`, `serial_stdout_on/off`,
//! `create_machine`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ctx::{Ctx, Deadline, SharedCtx};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::node::Node;
use crate::polling::{CheckOutcome, PollingCondition};
use crate::vlan::VLan;

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
    pub(crate) watchdog: Option<crate::watchdog::Watchdog>,
    pub(crate) started: Instant,
    pub(crate) global_timeout: Duration,
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
    pub fn prepare_warm_start(&self) -> Result<Vec<(String, std::result::Result<String, String>)>> {
        self.machines()
            .iter()
            .map(|m| Ok((m.name().to_string(), m.prepare_warm_start()?)))
            .collect()
    }

    /// Starts every machine concurrently; returns once every QEMU runs, without waiting for the
    /// guests to boot (the first command on each machine waits for it).
    pub fn start_all(&self) -> Result<()> {
        self.ctx.logger.nested(None, "start all VMs", || {
            let machines = self.all_machines();
            let errors: Vec<Error> = std::thread::scope(|s| {
                let handles: Vec<_> = machines
                    .iter()
                    .map(|m| s.spawn(move || m.start()))
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| match h.join() {
                        Ok(r) => r.err(),
                        Err(p) => Some(Error::Script(panic_message(&p))),
                    })
                    .collect()
            });
            match errors.len() {
                0 => Ok(()),
                1 => Err(errors
                    .into_iter()
                    .next()
                    .unwrap_or(Error::Script(String::new()))),
                _ => Err(Error::Script(format!(
                    "Failed to start the following machines: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))),
            }
        })
    }

    /// Waits for every machine to shut down (NixOS `join_all`).
    pub fn join_all(&self) -> Result<()> {
        self.ctx
            .logger
            .nested(None, "wait for all VMs to finish", || {
                for m in self.all_machines() {
                    m.wait_for_shutdown()?;
                }
                Ok(())
            })
    }

    /// Runs `f` as a subtest: a nested block `subtest: <name>` and a JUnit test case. On error,
    /// logs `Test "<name>" failed with error: "<e>"` and returns the error.
    pub fn subtest<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let lg = &self.ctx.logger;
        lg.junit_begin(name);
        let span = lg.begin(None, &format!("subtest: {name}"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        match r {
            Ok(Ok(v)) => {
                span.finish();
                lg.junit_end(None);
                Ok(v)
            }
            Ok(Err(e)) => {
                drop(span);
                lg.error(None, &format!("Test \"{name}\" failed with error: \"{e}\""));
                lg.junit_end(Some(e.to_string()));
                Err(e)
            }
            Err(p) => {
                drop(span);
                let msg = panic_message(&p);
                lg.error(
                    None,
                    &format!("Test \"{name}\" failed with error: \"{msg}\""),
                );
                lg.junit_end(Some(msg));
                std::panic::resume_unwind(p)
            }
        }
    }

    /// Calls `f(last_try)` about once a second until it succeeds, for at most `timeout` (scaled)
    /// including the time of the attempts, then once more with `last_try = true` (NixOS `retry`).
    pub fn retry<R: CheckOutcome>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(bool) -> R,
    ) -> Result<()> {
        let deadline = Deadline::new(self.ctx.scaled(timeout));
        let mut last = None;
        while !deadline.expired() {
            self.ctx.before_command()?;
            match f(false).into_outcome() {
                Ok(()) => return Ok(()),
                Err(d) => last = d,
            }
            let pause = Duration::from_secs(1).min(deadline.remaining());
            if pause.is_zero() {
                break;
            }
            self.ctx.sleep(pause)?;
        }
        match f(true).into_outcome() {
            Ok(()) => Ok(()),
            Err(d) => Err(Error::Timeout {
                machine: None,
                what: "retry".to_string(),
                timeout: deadline.timeout,
                elapsed: deadline.elapsed(),
                last_output: d.or(last).unwrap_or_default(),
            }),
        }
    }

    /// Declares a polling condition: `check` must keep passing while a block runs under
    /// [`TestRun::with_polling`]. `check` returns `bool` or a `Result`; a panic counts as failure.
    /// Commands it runs go through the control channel (so it works during long commands).
    /// NixOS' default interval is 2 s.
    pub fn polling_condition<F, R>(
        &self,
        description: &str,
        interval: Duration,
        check: F,
    ) -> PollingCondition
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: CheckOutcome,
    {
        PollingCondition::new(description, interval, check)
    }

    /// Runs `body` while `cond` is active (NixOS `with cond:`): `cond` is checked before every
    /// command and on a timer; a failure interrupts the running command and `body` fails with
    /// [`Error::PollingCondition`].
    pub fn with_polling<T>(
        &self,
        cond: &PollingCondition,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.ctx.polling.push(cond.inner.clone());
        self.ensure_poller();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        // A failure latched by the timer wins over the body's own (derived) error.
        let latched = self.ctx.polling.latched();
        self.ctx.polling.pop(&cond.inner);
        match r {
            Ok(Ok(v)) => match latched {
                Some(e) => Err(e),
                None => Ok(v),
            },
            Ok(Err(e)) => Err(latched.unwrap_or(e)),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Waits until `cond` passes (NixOS `cond.wait(timeout)`).
    pub fn wait_for_condition(&self, cond: &PollingCondition, timeout: Duration) -> Result<()> {
        self.retry(timeout, |_| cond.check(true))
    }

    fn ensure_poller(&self) {
        let mut p = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        if p.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let ctx = self.ctx.clone();
        *p = std::thread::Builder::new()
            .name("machinist-poller".into())
            .spawn(move || poller(ctx))
            .ok();
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

    /// Creates an ad-hoc machine (NixOS `create_machine`) from a node configuration that was not
    /// declared; it gets the next free node number and is attached to the configured VLANs that
    /// exist in this test. It is not started.
    pub fn create_machine(
        &self,
        name: &str,
        config: machinist_guest::NodeConfig,
    ) -> Result<Arc<Machine>> {
        if self.get_machine(name).is_ok() {
            return Err(Error::Invalid(format!(
                "a machine named `{name}` already exists"
            )));
        }
        let m = self.adhoc_machine(name, config)?;
        self.ctx
            .machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&m));
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m.clone());
        Ok(m)
    }

    /// Ad-hoc machines are numbered after every existing machine: the plan is built over keys
    /// that sort in that order, with each node's hostname pinned to its real name.
    fn adhoc_machine(
        &self,
        name: &str,
        mut config: machinist_guest::NodeConfig,
    ) -> Result<Arc<Machine>> {
        let mut all: Vec<(String, machinist_guest::NodeConfig)> = Vec::new();
        for (n, c) in &self.plan_nodes {
            all.push((n.clone(), c.clone()));
        }
        for m in self.extra.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(c) = &m.adhoc_config {
                all.push((m.name().to_string(), c.clone()));
            }
        }
        // Only VLANs that exist in this test.
        config.vlans.retain(|v| self.vlans.contains_key(v));
        all.push((name.to_string(), config.clone()));
        let keyed: Vec<(String, machinist_guest::NodeConfig)> = all
            .iter()
            .enumerate()
            .map(|(i, (n, c))| {
                let mut c = c.clone();
                if c.hostname.is_none() {
                    c.hostname = Some(n.clone());
                }
                (format!("n{i:04}"), c)
            })
            .collect();
        let pairs: Vec<(&str, &machinist_guest::NodeConfig)> =
            keyed.iter().map(|(k, c)| (k.as_str(), c)).collect();
        machinist_guest::validate(&pairs[pairs.len() - 1..])
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let plan = machinist_guest::NetworkPlan::new(&pairs);
        let key = &keyed[keyed.len() - 1].0;
        let planned = plan
            .node(key)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("cannot plan machine `{name}`")))?;
        let layer = machinist_guest::NodeLayer::render(key, &keyed[keyed.len() - 1].1, &plan)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let spec = machinist_guest::ImageSpec::for_node(&config);
        let img = self
            .image_cache
            .ensure(&spec, machinist_guest::Progress::Lines)
            .map_err(|e| Error::backend(Some(name), "building the image", e))?;
        let m = crate::test::build_machine(
            &self.ctx,
            name,
            &config,
            &planned,
            &img,
            &layer,
            &self.vlans,
        )?;
        let mut m = Arc::try_unwrap(m)
            .map_err(|_| Error::Invalid("internal: machine shared too early".into()))?;
        m.adhoc_config = Some(config);
        Ok(Arc::new(m))
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
        self.global_timeout
    }

    /// The time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.ctx.logger.elapsed()
    }

    pub(crate) fn every_machine(&self) -> Vec<Arc<Machine>> {
        self.all_machines()
    }
}

fn poller(ctx: Arc<Ctx>) {
    let started = Instant::now();
    loop {
        if ctx.polling.is_empty() || ctx.aborted().is_some() {
            // Linger briefly so nested with_polling blocks reuse the thread.
            if started.elapsed() > Duration::from_millis(50) && ctx.polling.is_empty() {
                return;
            }
            if ctx.aborted().is_some() {
                return;
            }
        }
        let pause = ctx.polling.tick();
        std::thread::sleep(pause);
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}
