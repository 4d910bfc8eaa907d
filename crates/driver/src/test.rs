//! Declaring and running a test: `Test::new(name).node(..).script(|t| ..).run()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machinist_guest::{ImageCache, ImageSpec, NetworkPlan, NodeConfig, NodeLayer, Progress};
use machinist_netsim::{Switch, SwitchConfig};

use crate::ctx::Ctx;
use crate::error::{BoxError, Error, Result};
use crate::log::Logger;
use crate::machine::{BootSpec, Machine, NicSpec};
use crate::node::Node;
use crate::polling::Registry;
use crate::run::{panic_message, TestRun};
use crate::timeouts::{TimeoutScale, DEFAULT_BOOT_DEADLINE, DEFAULT_GLOBAL_TIMEOUT};
use crate::vlan::VLan;

/// What a test script returns: any error type converts (`?` works on machinist errors, I/O,
/// serde_json, ...).
pub type ScriptResult = std::result::Result<(), BoxError>;

type Script<'a> = Box<dyn FnOnce(&TestRun) -> ScriptResult + 'a>;

/// A test declaration (the `nixosTest { name; nodes; testScript; }` of NixOS).
///
/// ```no_run
/// use machinist::{NodeConfig, Test};
/// Test::new("hello")
///     .node("machine", NodeConfig::new())
///     .script(|t| {
///         let m = t.machine("machine");
///         assert_eq!(m.succeed("echo hello")?, "hello\n");
///         Ok(())
///     })
///     .run()
///     .unwrap();
/// ```
pub struct Test<'a> {
    name: String,
    nodes: BTreeMap<String, NodeConfig>,
    global_timeout: Duration,
    boot_deadline: Duration,
    output_dir: Option<PathBuf>,
    keep_state: bool,
    script: Option<Script<'a>>,
    logger: Option<Logger>,
    image_cache: Option<ImageCache>,
    print_serial: bool,
    warm_start: Option<bool>,
    errors: Vec<String>,
}

impl std::fmt::Debug for Test<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Test")
            .field("name", &self.name)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("global_timeout", &self.global_timeout)
            .finish_non_exhaustive()
    }
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The test name.
    pub name: String,
    /// The output directory.
    pub output_dir: PathBuf,
    /// The JSON-lines log.
    pub json_log: PathBuf,
    /// The JUnit XML report.
    pub junit: PathBuf,
    /// Every artefact written (console logs, pcaps, screenshots, logs).
    pub artefacts: Vec<PathBuf>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl<'a> Test<'a> {
    /// A new test called `name` (used for the output directory and the JUnit suite).
    pub fn new(name: &str) -> Self {
        Test {
            name: name.to_string(),
            nodes: BTreeMap::new(),
            global_timeout: DEFAULT_GLOBAL_TIMEOUT,
            boot_deadline: DEFAULT_BOOT_DEADLINE,
            output_dir: None,
            keep_state: false,
            script: None,
            logger: None,
            image_cache: None,
            print_serial: true,
            warm_start: None,
            errors: Vec::new(),
        }
    }

    /// Declares a node (a machine) with its configuration.
    pub fn node(mut self, name: &str, config: NodeConfig) -> Self {
        if self.nodes.insert(name.to_string(), config).is_some() {
            self.errors.push(format!("node `{name}` is declared twice"));
        }
        self
    }

    /// The global timeout (default 1 h, scaled): when it expires every machine is stopped and the
    /// run fails with [`Error::GlobalTimeout`].
    pub fn global_timeout(mut self, timeout: Duration) -> Self {
        self.global_timeout = timeout;
        self
    }

    /// The boot deadline of each machine (default 300 s, scaled).
    pub fn boot_deadline(mut self, deadline: Duration) -> Self {
        self.boot_deadline = deadline;
        self
    }

    /// Where logs, JUnit, console logs, pcaps and screenshots go (default
    /// `$MACHINIST_OUTPUT_DIR/<name>`, else `<tmp>/machinist-out-<uid>/<name>`, a directory of this user with mode 0700).
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// Keep the run directory (disk overlays, sockets) after the run (NixOS `--keep-vm-state`).
    pub fn keep_state(mut self, keep: bool) -> Self {
        self.keep_state = keep;
        self
    }

    /// The test script.
    pub fn script(mut self, script: impl FnOnce(&TestRun) -> ScriptResult + 'a) -> Self {
        self.script = Some(Box::new(script));
        self
    }

    /// Use this logger instead of stderr (e.g. [`Logger::silent`] or a captured writer).
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Use this image cache (default: `ImageCache::from_env()`).
    pub fn image_cache(mut self, cache: ImageCache) -> Self {
        self.image_cache = Some(cache);
        self
    }

    /// Start with serial lines hidden on the terminal (`serial_stdout_off()` from the start).
    pub fn serial_stdout(mut self, on: bool) -> Self {
        self.print_serial = on;
        self
    }

    /// Warm start (default: on unless `MACHINIST_WARM_START=0`): each machine's first start
    /// restores a saved, booted guest of the same image and shape and then applies the node's
    /// identity; `false` cold-boots every machine. Nodes with kernel or QEMU arguments always
    /// boot cold.
    pub fn warm_start(mut self, on: bool) -> Self {
        self.warm_start = Some(on);
        self
    }

    /// Checks the declaration without booting anything: node names, node configurations
    /// (guest crate), the node layers (files, units, users) and the timeout scale.
    pub fn validate(&self) -> Result<()> {
        let mut problems = self.errors.clone();
        if !valid_test_name(&self.name) {
            problems.push(format!(
                "test name `{}` is invalid: it names the output directory, so it must be \
                 non-empty, not `.` or `..`, and contain no `/`, NUL or control character",
                self.name.escape_debug()
            ));
        }
        if self.nodes.is_empty() {
            problems.push("no nodes: declare at least one with .node(name, NodeConfig)".into());
        }
        for name in self.nodes.keys() {
            if !valid_node_name(name) {
                problems.push(format!(
                    "node name `{name}` is invalid: use 1-32 characters a-z, 0-9 and `-`, starting with a letter"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        let pairs: Vec<(&str, &NodeConfig)> =
            self.nodes.iter().map(|(n, c)| (n.as_str(), c)).collect();
        machinist_guest::validate(&pairs).map_err(|e| Error::Invalid(e.to_string()))?;
        let plan = NetworkPlan::new(&pairs);
        for (n, c) in &pairs {
            NodeLayer::render(n, c, &plan).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        TimeoutScale::from_env()?;
        Ok(())
    }

    /// Validates, then runs the script with every machine declared (not started: call
    /// `t.start_all()` or let the first command start a machine), then cleans up. On failure the
    /// output directory holds the artefacts, listed at the end of the log.
    pub fn run(mut self) -> Result<Report> {
        let script = self
            .script
            .take()
            .ok_or_else(|| Error::Invalid("no script: add one with .script(|t| { ... })".into()))?;
        let run = self.start()?;
        let outcome = run.run_script(script);
        run.finish(outcome)
    }

    /// Validates and sets everything up (images, switches, machines declared but not started)
    /// and returns the running test, for interactive use (REPL, Python). Call
    /// [`TestRun::finish`] at the end (dropping it also cleans up, without the report).
    pub fn start(self) -> Result<TestRun> {
        self.validate()?;
        let scale = TimeoutScale::from_env()?;
        let logger = self.logger.clone().unwrap_or_else(Logger::stderr);
        logger.set_print_serial(self.print_serial);
        let out_dir = self
            .output_dir
            .clone()
            .map_or_else(|| default_output_dir(&self.name), Ok)?;
        std::fs::create_dir_all(&out_dir).map_err(|e| {
            Error::io(
                format!("creating output directory {}", out_dir.display()),
                e,
            )
        })?;
        remove_stale_artefacts(&out_dir);
        let json_path = out_dir.join("log.jsonl");
        logger
            .write_json_to(&json_path)
            .map_err(|e| Error::io(format!("creating {}", json_path.display()), e))?;
        if !scale.is_identity() {
            logger.log(
                None,
                &format!(
                    "timeouts are scaled by {} (MACHINIST_TIMEOUT_SCALE)",
                    scale.factor()
                ),
            );
        }
        let run_dir = make_run_dir(&logger, self.keep_state)?;
        crate::orphans::register_dir(run_dir.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("machinist-rt")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the tokio runtime", e))?;
        let (abort_tx, _) = tokio::sync::watch::channel(None);
        // Never trust /dev/kvm without a probe: decided once per process (cached per host).
        let accel = machinist_qemu::accel::choose();
        logger.log(None, &format!("accelerator: {accel}"));
        let ctx = Arc::new(Ctx {
            logger: logger.clone(),
            handle: rt.handle().clone(),
            scale,
            run_dir: run_dir.clone(),
            out_dir: out_dir.clone(),
            boot_deadline: scale.apply(self.boot_deadline),
            abort_tx,
            interrupt_tx: tokio::sync::watch::channel(0).0,
            polling: Registry::new(),
            keep_state: self.keep_state,
            warm_start: self
                .warm_start
                .unwrap_or_else(crate::warm::warm_start_from_env),
            machines: std::sync::Mutex::new(Vec::new()),
            accel: accel.accel,
        });
        let global_timeout = scale.apply(self.global_timeout);
        let mut run = TestRun {
            name: self.name.clone(),
            ctx: ctx.clone(),
            nodes: BTreeMap::new(),
            machines: BTreeMap::new(),
            extra: Arc::new(Mutex::new(Vec::new())),
            vlans: BTreeMap::new(),
            poller: Mutex::new(None),
            rt: Some(rt),
            watchdog: None,
            started: Instant::now(),
            global_timeout,
            plan_nodes: self.nodes.clone(),
            image_cache: self
                .image_cache
                .clone()
                .unwrap_or_else(ImageCache::from_env),
            finished: false,
            _forward: crate::log::forward::attach(&logger),
        };
        run.setup()?;
        run.watchdog = Some(crate::watchdog::Watchdog::start(
            ctx,
            global_timeout,
            run.machines.values().cloned().collect(),
            run.extra.clone(),
        ));
        logger.log(
            None,
            &format!(
                "Test will time out and terminate in {} seconds",
                global_timeout.as_secs()
            ),
        );
        Ok(run)
    }
}

fn valid_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A test name is one path component of the output directory.
fn valid_test_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.chars().any(char::is_control)
}

/// `$MACHINIST_OUTPUT_DIR/<name>`, else `<tmp>/machinist-out-<uid>/<name>`: a directory of this
/// user's own (mode 0700, owner checked), so another user of a shared host cannot plant or read
/// artefacts there.
fn default_output_dir(name: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MACHINIST_OUTPUT_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join(name));
    }
    let uid = nix::unistd::getuid().as_raw();
    let base = std::env::temp_dir().join(format!("machinist-out-{uid}"));
    private_dir(&base, uid)?;
    Ok(base.join(name))
}

/// Makes `dir` (mode 0700) or checks that the existing one is a real directory of `uid` that
/// nobody else can write; refuses it otherwise.
fn private_dir(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("checking {}", dir.display()), e))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(Error::Io {
            what: format!(
                "refusing the output directory {}: it is not a directory of uid {uid} that only \
                 its owner can write (remove it, or set MACHINIST_OUTPUT_DIR or --output)",
                dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    Ok(())
}

/// Artefacts of an earlier run in the same output directory would be misleading.
fn remove_stale_artefacts(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("-console.log")
                || name.ends_with(".pcap")
                || name.ends_with("-final.png")
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A fresh short run directory `/tmp/mn-XXXXXX` (unix socket paths must stay < 108 bytes),
/// owned by this process (see [`crate::stale`]); run directories of killed test processes are
/// removed first.
fn make_run_dir(logger: &Logger, keep_state: bool) -> Result<PathBuf> {
    let base = crate::stale::run_dir_base();
    for d in crate::stale::remove_stale_run_dirs(&base) {
        logger.log(
            None,
            &format!(
                "removed {}: left behind by a test process that was killed",
                d.display()
            ),
        );
    }
    let template = base.join("mn-XXXXXX");
    let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
        Error::io(
            format!("creating run directory {}", template.display()),
            e.into(),
        )
    })?;
    if !keep_state {
        crate::stale::claim(&dir)
            .map_err(|e| Error::io(format!("writing the owner of {}", dir.display()), e))?;
    }
    Ok(dir)
}

impl TestRun {
    /// Builds the network plan, the switches, the images and the machines (nothing boots).
    fn setup(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let pairs: Vec<(&str, &NodeConfig)> = self
            .plan_nodes
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        let plan = NetworkPlan::new(&pairs);
        // Switches first: they must listen before any QEMU starts.
        let mut vlan_nrs: Vec<u8> = plan
            .nodes()
            .flat_map(|n| n.interfaces.iter().map(|i| i.vlan))
            .collect();
        vlan_nrs.sort_unstable();
        vlan_nrs.dedup();
        for nr in vlan_nrs {
            let cfg = SwitchConfig::new(nr, ctx.run_dir.join(format!("vlan{nr}")))
                .with_pcap(ctx.out_dir.join(format!("vlan{nr}.pcap")));
            let sw = Switch::start(cfg).map_err(|e| {
                Error::backend(None, format!("starting the switch of vlan {nr}"), e)
            })?;
            self.vlans.insert(
                nr,
                VLan {
                    nr,
                    switch: Arc::new(sw),
                },
            );
        }
        // Images: one per distinct package set, built once and cached.
        let mut images: Vec<(ImageSpec, machinist_guest::Image)> = Vec::new();
        let specs: Vec<ImageSpec> = {
            let mut v: Vec<ImageSpec> = pairs.iter().map(|(_, c)| ImageSpec::for_node(c)).collect();
            v.sort_by_key(|a| format!("{a:?}"));
            v.dedup();
            v
        };
        for spec in specs {
            let name = spec.name();
            let img = ctx
                .logger
                .nested(None, &format!("ensuring image {name}"), || {
                    self.image_cache
                        .ensure(&spec, Progress::Lines)
                        .map_err(|e| Error::backend(None, format!("building image {name}"), e))
                })?;
            images.push((spec, img));
        }
        for (name, cfg) in &pairs {
            let planned = plan.node(name).cloned().ok_or_else(|| {
                Error::Invalid(format!("node `{name}` missing from the network plan"))
            })?;
            let want = ImageSpec::for_node(cfg);
            let img = images
                .iter()
                .find(|(s, _)| *s == want)
                .map(|(_, i)| i.clone())
                .ok_or_else(|| Error::Invalid(format!("no image for node `{name}`")))?;
            let layer =
                NodeLayer::render(name, cfg, &plan).map_err(|e| Error::Invalid(e.to_string()))?;
            let m = build_machine(&ctx, name, cfg, &planned, &img, &layer, &self.vlans)?;
            self.nodes.insert(
                name.to_string(),
                Node {
                    name: name.to_string(),
                    config: (*cfg).clone(),
                    plan: planned,
                },
            );
            ctx.machines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(&m));
            self.machines.insert(name.to_string(), m);
        }
        Ok(())
    }

    /// Runs `script`, catching panics; the error (if any) is logged NixOS-style.
    pub fn run_script(&self, script: impl FnOnce(&TestRun) -> ScriptResult) -> Result<()> {
        let span = self.ctx.logger.begin(None, "run the VM test script");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(self)));
        let outcome = match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(match e.downcast::<Error>() {
                Ok(e) => *e,
                Err(e) => Error::Script(e.to_string()),
            }),
            Err(p) => Err(Error::Script(panic_message(&p))),
        };
        // The global timeout wins over the errors it caused (QEMU killed, shells gone).
        let outcome = match (outcome, self.ctx.aborted()) {
            (Err(_), Some(a)) => Err(Ctx::abort_error(a)),
            (o, _) => o,
        };
        match &outcome {
            Ok(()) => span.finish(),
            Err(e) => {
                drop(span);
                self.ctx.logger.junit_fail_current(&e.to_string());
            }
        }
        outcome
    }

    /// Ends the run: on failure saves artefacts (final screenshots, each running machine's
    /// journal, pcaps, console logs), stops
    /// every machine and switch, writes JUnit and the JSON log, removes the run directory unless
    /// keep_state, and lists the artefacts as the last lines of the log.
    pub fn finish(mut self, outcome: Result<()>) -> Result<Report> {
        let lg = self.ctx.logger.clone();
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let failed = outcome.is_err();
        let mut artefacts: Vec<PathBuf> = Vec::new();
        if let Err(e) = &outcome {
            lg.error(None, &format!("!!! Test \"{}\" failed: {e}", self.name));
            for m in self.every_machine() {
                if let Some(p) = m.failure_screenshot() {
                    artefacts.push(p);
                }
                if let Some(p) = m.failure_journal() {
                    artefacts.push(p);
                }
            }
            for v in self.vlans.values() {
                lg.log(None, &format!("vlan{}: {}", v.nr, v.summary().trim_end()));
            }
        }
        lg.nested(None, "cleanup", || {
            for m in self.every_machine() {
                m.kill_now();
            }
            for v in self.vlans.values() {
                v.switch.shutdown();
            }
            Ok::<(), Error>(())
        })?;
        for m in self.every_machine() {
            if m.console_log_path().exists() {
                artefacts.push(m.console_log_path().to_path_buf());
            }
        }
        for v in self.vlans.values() {
            if let Some(p) = v.pcap_path() {
                if failed && p.exists() {
                    artefacts.push(p.to_path_buf());
                }
            }
        }
        if !failed {
            // pcaps are kept only when they can help debugging.
            for v in self.vlans.values() {
                if let Some(p) = v.pcap_path() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let out = self.ctx.out_dir.clone();
        let junit = out.join("junit.xml");
        let json_log = out.join("log.jsonl");
        let xml = lg.junit_xml(&self.name, false);
        if let Err(e) = std::fs::write(&junit, xml) {
            lg.warning(None, &format!("cannot write {}: {e}", junit.display()));
        }
        artefacts.push(junit.clone());
        artefacts.push(json_log.clone());
        self.cleanup_run_dir();
        lg.log(None, &format!("output directory: {}", out.display()));
        for a in &artefacts {
            lg.log(None, &format!("  {}", a.display()));
        }
        lg.flush();
        self.finished = true;
        outcome.map(|()| Report {
            name: self.name.clone(),
            output_dir: out,
            json_log,
            junit,
            artefacts,
            duration: self.started.elapsed(),
        })
    }

    fn cleanup_run_dir(&self) {
        let dir = &self.ctx.run_dir;
        crate::stale::release(dir);
        if self.ctx.keep_state {
            self.ctx.logger.log(
                None,
                &format!("keeping the run directory {}", dir.display()),
            );
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
        crate::orphans::unregister_dir(dir);
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        for m in self.every_machine() {
            m.kill_now();
        }
        for v in self.vlans.values() {
            v.switch.shutdown();
        }
        if !self.finished {
            self.cleanup_run_dir();
        }
        self.machines.clear();
        self.extra.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The kernel command line, QEMU NICs and resources of a node.
pub(crate) fn build_machine(
    ctx: &Arc<Ctx>,
    name: &str,
    cfg: &NodeConfig,
    planned: &machinist_guest::PlannedNode,
    img: &machinist_guest::Image,
    layer: &NodeLayer,
    vlans: &BTreeMap<u8, VLan>,
) -> Result<Arc<Machine>> {
    let mut nics = Vec::new();
    let mut machine_vlans = Vec::new();
    for iface in &planned.interfaces {
        let vlan = vlans.get(&iface.vlan).cloned().ok_or_else(|| {
            Error::Invalid(format!("node `{name}`: vlan {} has no switch", iface.vlan))
        })?;
        let port = vlan.switch.add_stream_port(name).map_err(|e| {
            Error::backend(
                Some(name),
                format!("adding a port on vlan {}", iface.vlan),
                e,
            )
        })?;
        nics.push(NicSpec {
            vlan: vlan.clone(),
            id: iface.qemu_id(),
            mac: iface.mac.clone(),
            port,
        });
        machine_vlans.push(vlan);
    }
    let mut append = machinist_guest::KERNEL_CMDLINE.to_string();
    for a in &cfg.kernel_args {
        append.push(' ');
        append.push_str(a);
    }
    let spec = BootSpec {
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
        disk: img.disk.clone(),
        disk_format: "raw".into(),
        layer_cpio: layer
            .to_cpio()
            .map_err(|e| Error::backend(Some(name), "packing the node layer", e))?,
        append,
        memory_mib: cfg.memory_mib,
        cores: cfg.cores,
        accel: ctx.accel,
        nics,
        user_nic: planned
            .user_interface
            .as_ref()
            .map(|u| ("nic-user0".to_string(), u.mac.clone())),
        extra_args: cfg.qemu_args.clone(),
        warm: warm_choice(ctx, cfg, planned, img, layer),
    };
    Ok(Arc::new(Machine::new(
        name,
        ctx.clone(),
        spec,
        machine_vlans,
    )))
}

/// Whether a node may be restored from a snapshot, and what the restore needs.
fn warm_choice(
    ctx: &Ctx,
    cfg: &NodeConfig,
    planned: &machinist_guest::PlannedNode,
    img: &machinist_guest::Image,
    layer: &NodeLayer,
) -> crate::machine::warm::WarmChoice {
    use crate::machine::warm::{WarmChoice, WarmPlan};
    if !ctx.warm_start {
        return WarmChoice::Cold(
            "warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false))".into(),
        );
    }
    if !cfg.kernel_args.is_empty() {
        return WarmChoice::Cold("the node has extra kernel arguments".into());
    }
    if !cfg.qemu_args.is_empty() {
        return WarmChoice::Cold("the node has extra QEMU arguments".into());
    }
    let layer_tar = match layer.to_tar() {
        Ok(t) => t,
        Err(e) => return WarmChoice::Cold(format!("the node layer cannot be archived ({e})")),
    };
    let mut nic_names: Vec<String> = planned.interfaces.iter().map(|i| i.name.clone()).collect();
    let mut nic_macs: Vec<String> = planned.interfaces.iter().map(|i| i.mac.clone()).collect();
    if let Some(u) = &planned.user_interface {
        nic_names.push(u.name.clone());
        nic_macs.push(u.mac.clone());
    }
    WarmChoice::Warm(WarmPlan {
        // The exact bytes, not the recipe: a rebuilt image gets new snapshots.
        image_hash: img.content_id(),
        plain_initrd: img.initrd.clone(),
        layer_tar: std::sync::Arc::new(layer_tar),
        masked: cfg.masked_units.clone(),
        nic_names,
        nic_macs,
    })
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn test_names_are_one_path_component() {
        for bad in ["", ".", "..", "a/b", "/abs", "../up", "tab\tname", "nul\0"] {
            assert!(!valid_test_name(bad), "{bad:?}");
        }
        for good in ["postgrest", "vm-single", "a.b", "..x", "ünïcode"] {
            assert!(valid_test_name(good), "{good:?}");
        }
        let e = Test::new("..")
            .node("m", NodeConfig::new())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("test name `..` is invalid"), "{e}");
    }

    #[test]
    fn the_default_output_base_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let dir = tmp.path().join("out");
        private_dir(&dir, uid).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Reused as it is.
        private_dir(&dir, uid).unwrap();
        // World-writable, a symlink, or another owner: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&dir, uid).is_err());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(private_dir(&link, uid).is_err());
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(private_dir(&other, uid + 1).is_err());
    }
}
