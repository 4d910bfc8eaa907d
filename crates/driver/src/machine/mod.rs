//! A machine of the test: one QEMU process, its backdoor shells, QMP and serial console.
//!
//! The public API is blocking (like the NixOS driver) and runs on the test's tokio runtime. A
//! machine is `Sync`: different machines can be driven from different threads at once; commands on
//! one machine are serialised.

mod commands;
mod copy;
mod display;
pub(crate) mod scripts;
mod timeout;
pub(crate) mod warm;

pub use commands::WaitForUnit;
pub use timeout::{Commands, IntoTimeout};

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machinist_backdoor::{ConnectOptions, Control, Shell, ShellError};
use machinist_qemu::{QemuCommand, QemuProcess, Qmp};
use tokio::net::UnixStream;

use crate::ctx::{Deadline, SharedCtx};
use crate::error::{Error, Result};
use crate::timeouts::DEFAULT_TIMEOUT;
use crate::vlan::VLan;

/// How many bytes of one command's output go to the log at most (the command's result keeps
/// the backdoor's own, larger bound).
const LOG_BUDGET: usize = 16 << 20;

/// How long taking over a re-spawned guest shell may take (its greeting is already read).
const RESPAWN_RECONNECT: Duration = Duration::from_secs(30);

/// How to boot a machine (everything needed to build its QEMU command line).
#[derive(Debug, Clone)]
pub(crate) struct BootSpec {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
    pub(crate) disk: PathBuf,
    pub(crate) disk_format: String,
    pub(crate) layer_cpio: Vec<u8>,
    /// The accelerator (TCG unless a KVM probe guest booted).
    pub(crate) accel: machinist_qemu::Accel,
    pub(crate) append: String,
    pub(crate) memory_mib: u32,
    pub(crate) cores: u32,
    pub(crate) nics: Vec<NicSpec>,
    pub(crate) user_nic: Option<(String, String)>,
    pub(crate) extra_args: Vec<String>,
    /// Warm start (restore from a snapshot) or cold boot.
    pub(crate) warm: warm::WarmChoice,
}

/// One NIC on a VLAN switch.
#[derive(Debug, Clone)]
pub(crate) struct NicSpec {
    pub(crate) vlan: VLan,
    pub(crate) id: String,
    pub(crate) mac: String,
    pub(crate) port: PathBuf,
}

enum ShellSlot {
    /// QEMU connected; the guest has not greeted yet.
    Pending {
        main: UnixStream,
        control: UnixStream,
    },
    /// Connected.
    Ready(Shell),
    /// Unusable (the reason).
    Broken(String),
}

pub(crate) struct Running {
    pub(crate) process: Arc<QemuProcess>,
    pub(crate) qmp: Qmp,
    shell: tokio::sync::Mutex<ShellSlot>,
    control: Mutex<Option<Control>>,
    /// Boot deadline start (QEMU start, or the last reboot).
    boot_from: Mutex<Instant>,
    needs_reconnect: AtomicBool,
    connected: AtomicBool,
    /// systemd finished starting up since the last (re)boot.
    pub(crate) settled: AtomicBool,
    serial_task: tokio::task::JoinHandle<()>,
    pub(crate) allow_reboot: bool,
    /// Restored from a snapshot: the identity still to apply on the first connect.
    restore: Mutex<Option<warm::PendingIdentity>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.serial_task.abort();
    }
}

/// A virtual machine of the test (NixOS `Machine`). Get it with `t.machine("server")`.
pub struct Machine {
    name: String,
    pub(crate) ctx: SharedCtx,
    spec: BootSpec,
    dir: PathBuf,
    pub(crate) running: Mutex<Option<Arc<Running>>>,
    lifecycle: Mutex<()>,
    console_cursor: Mutex<u64>,
    console_file: PathBuf,
    pub(crate) vlans: Vec<VLan>,
    /// Set for machines made by `create_machine`.
    pub(crate) adhoc_config: Option<machinist_guest::NodeConfig>,
    /// The first start was tried warm (later starts boot cold from the machine's overlay).
    warm_tried: AtomicBool,
    /// How QEMU was last started (`None` before the first start).
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

/// How a machine's QEMU was last started ([`Machine::last_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// Restored from a warm-start snapshot, then given the node's identity and layer.
    Restored,
    /// Booted from the kernel (warm start off or not possible, or a restart after a crash).
    Cold,
}

/// The result of [`Machine::execute`]: exit code and stdout (NixOS' `(rc, output)` tuple).
pub type ExecResult = (i32, String);

impl Machine {
    pub(crate) fn new(name: &str, ctx: SharedCtx, spec: BootSpec, vlans: Vec<VLan>) -> Machine {
        let dir = ctx.run_dir.join(name);
        let console_file = ctx.out_dir.join(format!("{name}-console.log"));
        Machine {
            name: name.to_string(),
            ctx,
            spec,
            dir,
            running: Mutex::new(None),
            lifecycle: Mutex::new(()),
            console_cursor: Mutex::new(0),
            console_file,
            vlans,
            adhoc_config: None,
            warm_tried: AtomicBool::new(false),
            last_start: Mutex::new(None),
        }
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
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

    pub(crate) fn current(&self) -> Option<Arc<Running>> {
        let r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref()
            .filter(|r| r.process.try_wait().is_none())
            .cloned()
    }

    fn require_running(&self, what: &str) -> Result<Arc<Running>> {
        self.current().ok_or_else(|| Error::NotRunning {
            machine: self.name.clone(),
            message: format!("cannot {what}: the machine is not running; call start() first"),
        })
    }

    /// Runs `f` on the connected main backdoor shell (connecting first, under the boot
    /// deadline). For benchmarks and tools that speak to the shell directly.
    /// Ctrl-C (`TestRun::interrupt`) ends the wait.
    pub(crate) fn with_shell<T>(&self, f: impl AsyncFnOnce(&mut Shell) -> T) -> Result<T> {
        let run = self.require_running("use the backdoor shell")?;
        let intr = self.ctx.interrupted(false);
        let res = self.ctx.handle.block_on(async {
            tokio::pin!(intr);
            let mut slot = run.shell.lock().await;
            tokio::select! {
                r = self.ensure_connected(&run, &mut slot) => r?,
                e = &mut intr => return Err(e),
            }
            let ShellSlot::Ready(shell) = &mut *slot else {
                return Err(Error::NotRunning {
                    machine: self.name.clone(),
                    message: "the backdoor shell is not connected".into(),
                });
            };
            let canceller = shell.canceller();
            let fut = f(shell);
            tokio::pin!(fut);
            tokio::select! {
                v = &mut fut => Ok(v),
                e = &mut intr => {
                    // Kill the guest command too (not only stop reading its output), and let the
                    // shell read the command's end so that it stays in step.
                    canceller.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(15), &mut fut).await;
                    Err(e)
                }
            }
        });
        res.map_err(|e| self.ctx.resolve_interrupt(e))
    }

    /// Whether QEMU is running (NixOS `booted`).
    pub fn is_booted(&self) -> bool {
        self.current().is_some()
    }

    /// Whether QEMU runs and the backdoor shell is connected (NixOS `is_up`).
    pub fn is_up(&self) -> bool {
        self.current().is_some_and(|r| {
            r.connected.load(Ordering::Acquire) && !r.needs_reconnect.load(Ordering::Acquire)
        })
    }

    /// QEMU runs but the guest has not finished booting (backdoor greeting, then systemd's
    /// start-up) since the last (re)boot.
    pub(crate) fn is_booting(&self) -> bool {
        self.current()
            .is_some_and(|r| !r.settled.load(Ordering::Acquire) || !self.is_up())
    }

    /// QEMU's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.current().map(|r| r.process.pid())
    }

    /// Starts the machine (NixOS `start()`): returns once QEMU runs, without waiting for the guest
    /// to boot. Does nothing if it is already running. `-no-reboot` is set, so a guest reboot
    /// powers the machine off; use [`Machine::start_with`] to allow reboots.
    pub fn start(&self) -> Result<()> {
        self.start_with(false)
    }

    /// Starts the machine; `allow_reboot` lets the guest reboot inside the same QEMU
    /// (NixOS `start(allow_reboot=True)`, needed by [`Machine::reboot`]).
    pub fn start_with(&self, allow_reboot: bool) -> Result<()> {
        let _l = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        if self.current().is_some() {
            return Ok(());
        }
        if let Some(a) = self.ctx.aborted() {
            return Err(crate::ctx::Ctx::abort_error(a));
        }
        self.log_line("starting vm");
        let running = self.spawn(allow_reboot)?;
        self.log_line(&format!("QEMU running (pid {})", running.process.pid()));
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(())
    }

    fn io<T>(&self, what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(format!("{}: {}", self.name, what()), e))
    }

    fn prepare_files(&self) -> Result<(PathBuf, PathBuf)> {
        self.io(
            || format!("creating {}", self.dir.display()),
            std::fs::create_dir_all(&self.dir),
        )?;
        let overlay = self.dir.join("disk.qcow2");
        if !overlay.exists() {
            // The overlay's backing file is a pin (hard link) of the cached image in the
            // machine's directory: a rebuilt or pruned cache entry cannot change its bytes, even
            // for a restart after crash().
            let backing = self.pinned_image()?;
            machinist_qemu::overlay::create_qcow2_overlay(
                &backing,
                &self.spec.disk_format,
                &overlay,
            )
            .map_err(|e| Error::backend(Some(&self.name), "creating the disk overlay", e))?;
        }
        let initrd = self.dir.join("initrd");
        if !initrd.exists() {
            let mut base = self.io(
                || format!("reading initrd {}", self.spec.initrd.display()),
                std::fs::read(&self.spec.initrd),
            )?;
            // The kernel unpacks concatenated cpio archives in order; pad to 4 bytes.
            while base.len() % 4 != 0 {
                base.push(0);
            }
            base.extend_from_slice(&self.spec.layer_cpio);
            self.io(
                || format!("writing {}", initrd.display()),
                std::fs::write(&initrd, base),
            )?;
        }
        Ok((overlay, initrd))
    }

    /// The machine's pin of its cached disk image (made on first use).
    pub(crate) fn pinned_image(&self) -> Result<PathBuf> {
        machinist_guest::pin_image(&self.spec.disk, &self.dir).map_err(|e| {
            Error::backend(
                Some(&self.name),
                "pinning the disk image into the run directory",
                e,
            )
        })
    }

    pub(crate) fn qemu_command(
        &self,
        overlay: &std::path::Path,
        initrd: &std::path::Path,
        allow_reboot: bool,
    ) -> QemuCommand {
        command_for(
            &self.name,
            &self.spec,
            &self.dir,
            overlay,
            initrd,
            allow_reboot,
        )
    }

    fn spawn(&self, allow_reboot: bool) -> Result<Arc<Running>> {
        let (run, kind) = match self.spawn_warm(allow_reboot)? {
            Some(run) => (run, StartKind::Restored),
            None => {
                let (overlay, initrd) = self.prepare_files()?;
                let cmd = self.qemu_command(&overlay, &initrd, allow_reboot);
                (self.spawn_cmd(&cmd, allow_reboot, None)?, StartKind::Cold)
            }
        };
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        Ok(run)
    }

    /// How QEMU was last started: restored from a warm-start snapshot or booted cold (`None`
    /// before the first start). A warm start that fails falls back to a cold boot, which this
    /// tells apart.
    pub fn last_start(&self) -> Option<StartKind> {
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_cmd(
        &self,
        cmd: &QemuCommand,
        allow_reboot: bool,
        restore: Option<warm::PendingIdentity>,
    ) -> Result<Arc<Running>> {
        let ctx = self.ctx.clone();
        let _g = ctx.handle.enter();
        let bind = |p: PathBuf| {
            let _ = std::fs::remove_file(&p);
            machinist_qemu::socket::bind_listener(&p).map_err(|e| {
                Error::backend(Some(&self.name), format!("binding {}", p.display()), e)
            })
        };
        let shell_l = bind(self.dir.join("shell.sock"))?;
        let control_l = bind(self.dir.join("control.sock"))?;
        let qmp_l = bind(self.dir.join("qmp.sock"))?;
        let process = Arc::new(
            QemuProcess::spawn(cmd)
                .map_err(|e| Error::backend(Some(&self.name), "starting QEMU", e))?,
        );
        crate::orphans::install();
        let accept_timeout = ctx.scaled(Duration::from_secs(60));
        let name = self.name.clone();
        let p2 = process.clone();
        let r = ctx.block_on(false, async move {
            let connect = async {
                let qmp = Qmp::accept(&qmp_l, accept_timeout)
                    .await
                    .map_err(|e| Error::backend(Some(&name), "connecting QMP", e))?;
                let main = machinist_qemu::socket::accept_within(
                    &shell_l,
                    accept_timeout,
                    &name,
                    "the shell console",
                )
                .await
                .map_err(|e| Error::backend(Some(&name), "accepting the shell console", e))?;
                let control = machinist_qemu::socket::accept_within(
                    &control_l,
                    accept_timeout,
                    &name,
                    "the control console",
                )
                .await
                .map_err(|e| Error::backend(Some(&name), "accepting the control console", e))?;
                Ok::<_, Error>((qmp, main, control))
            };
            match p2.while_running(connect).await {
                Ok(r) => r,
                Err(e) => Err(Error::backend(Some(&name), "starting QEMU", e)),
            }
        });
        let (qmp, main, control) = match r {
            Ok(v) => v,
            Err(e) => {
                process.start_kill();
                return Err(e);
            }
        };
        let serial_task = self.spawn_serial_task(&process);
        Ok(Arc::new(Running {
            process,
            qmp,
            shell: tokio::sync::Mutex::new(ShellSlot::Pending { main, control }),
            control: Mutex::new(None),
            boot_from: Mutex::new(Instant::now()),
            needs_reconnect: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            serial_task,
            allow_reboot,
            restore: Mutex::new(restore),
        }))
    }

    fn spawn_serial_task(&self, process: &Arc<QemuProcess>) -> tokio::task::JoinHandle<()> {
        let mut rx = process.serial().subscribe();
        let logger = self.ctx.logger.clone();
        let name = self.name.clone();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console_file)
            .ok();
        let pid = process.pid();
        self.ctx.handle.spawn(async move {
            let mut file = file.map(std::io::LineWriter::new);
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "--- machinist: QEMU started (pid {pid}) ---");
            }
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        logger.serial(&name, &line);
                        if let Some(f) = file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        logger.warning(
                            Some(&name),
                            &format!("serial log skipped {n} lines (too fast)"),
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    /// Connects the backdoor (first command after start or reboot), under the boot deadline.
    async fn ensure_connected(&self, run: &Running, slot: &mut ShellSlot) -> Result<()> {
        let reconnect = run.needs_reconnect.load(Ordering::Acquire);
        if matches!(slot, ShellSlot::Ready(_)) && !reconnect {
            return Ok(());
        }
        if let ShellSlot::Broken(why) = slot {
            return Err(Error::NotRunning {
                machine: self.name.clone(),
                message: format!("the backdoor shell is unusable: {why}; restart the machine"),
            });
        }
        let boot_from = *run.boot_from.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = self.ctx.boot_deadline;
        let remaining = deadline.saturating_sub(boot_from.elapsed());
        let span = self
            .ctx
            .logger
            .begin(Some(&self.name), "waiting for the VM to finish booting");
        let started = Instant::now();
        let opts =
            ConnectOptions::new(self.name.clone()).timeout(remaining.max(Duration::from_millis(1)));
        let mut taken =
            std::mem::replace(slot, ShellSlot::Broken("connecting was interrupted".into()));
        warm::wake_restored(&self.name, run, &mut taken, remaining).await?;
        let restore = run.restore.lock().unwrap_or_else(|p| p.into_inner()).take();
        let fut = async {
            match taken {
                ShellSlot::Pending { main, control } => {
                    let (s, c) = tokio::join!(
                        Shell::connect(main, opts.clone()),
                        Control::connect(control, opts.control())
                    );
                    let mut s = s?;
                    s.set_control(c?);
                    Ok::<Shell, ShellError>(s)
                }
                ShellSlot::Ready(mut s) => {
                    let c = s.control().cloned();
                    let (a, b) = tokio::join!(s.reconnect(), async {
                        match &c {
                            Some(c) => c.reconnect().await,
                            None => Ok(()),
                        }
                    });
                    a?;
                    b?;
                    Ok(s)
                }
                ShellSlot::Broken(_) => unreachable!("handled above"),
            }
        };
        let r = run.process.while_running(fut).await;
        let shell = match r {
            Ok(Ok(s)) => s,
            Ok(Err(ShellError::ConnectTimeout { .. })) => {
                return Err(Error::BootTimeout {
                    machine: self.name.clone(),
                    deadline,
                    reason: "no `Spawning backdoor root shell...` greeting from the guest".into(),
                    console_log: self.console_file.clone(),
                })
            }
            Ok(Err(e)) => {
                return Err(Error::backend(
                    Some(&self.name),
                    "connecting to the guest root shell",
                    e,
                ))
            }
            Err(e) => {
                return Err(self.exited_error(
                    &run.process,
                    "waiting for the VM to finish booting",
                    e,
                ));
            }
        };
        let mut shell = shell;
        if let Some(p) = &restore {
            self.check_identity(&mut shell, &p.key).await?;
        }
        *run.control.lock().unwrap_or_else(|p| p.into_inner()) = shell.control().cloned();
        *slot = ShellSlot::Ready(shell);
        run.needs_reconnect.store(false, Ordering::Release);
        run.connected.store(true, Ordering::Release);
        self.log_line("Guest shell says: b'Spawning backdoor root shell...\\n'");
        self.log_line("connected to guest root shell");
        self.log_line(&format!(
            "(connecting took {:.2} seconds)",
            started.elapsed().as_secs_f64()
        ));
        span.finish();
        Ok(())
    }

    fn exited_error(
        &self,
        process: &QemuProcess,
        during: &str,
        e: impl std::fmt::Display,
    ) -> Error {
        let status = process
            .try_wait()
            .map(|s| machinist_qemu::describe_status(&s))
            .unwrap_or_else(|| e.to_string());
        Error::QemuExited {
            machine: self.name.clone(),
            status,
            during: during.to_string(),
            stderr: process.stderr_tail(),
        }
    }

    /// Runs one command in the guest; returns (exit code, stdout). The heart of every command.
    ///
    /// `timeout` is enforced on the host (the command is killed through the control channel and
    /// exit code 124 is returned, as NixOS' guest-side `timeout` does). The machine is started
    /// if needed, and the first command waits for the boot under the boot deadline, which is not
    /// charged to `timeout`.
    pub(crate) fn run_command(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<(i32, Vec<u8>)> {
        self.run_command_with(command, timeout, true)
    }

    /// [`Machine::run_command`] without streaming the output into the log (bulk data such as
    /// a whole journal or a file's contents).
    pub(crate) fn run_command_quiet(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<(i32, Vec<u8>)> {
        self.run_command_with(command, timeout, false)
    }

    fn run_command_with(
        &self,
        command: &str,
        timeout: Option<Duration>,
        log_output: bool,
    ) -> Result<(i32, Vec<u8>)> {
        self.ctx.before_command()?;
        if crate::polling::in_check() {
            if let Some(c) = self
                .current()
                .and_then(|r| r.control.lock().unwrap_or_else(|p| p.into_inner()).clone())
            {
                let name = self.name.clone();
                let cmd = command.to_string();
                let t = timeout.unwrap_or(Duration::from_secs(60));
                return self.ctx.block_on(false, async move {
                    c.execute(&cmd, Some(t))
                        .await
                        .map(|o| (o.code, o.stdout))
                        .map_err(|e| {
                            Error::backend(
                                Some(&name),
                                format!("running `{cmd}` on the control channel"),
                                e,
                            )
                        })
                });
            }
        }
        if self.current().is_none() {
            self.start()?;
        }
        let run = self.require_running("run a command")?;
        let intr = self.ctx.interrupted(true);
        let res = self.ctx.handle.block_on(async {
            let mut slot = run.shell.lock().await;
            tokio::pin!(intr);
            // Boot wait, interruptible.
            tokio::select! {
                r = self.ensure_connected(&run, &mut slot) => r?,
                e = &mut intr => return Err(e),
            }
            let ShellSlot::Ready(shell) = &mut *slot else {
                return Err(Error::NotRunning {
                    machine: self.name.clone(),
                    message: "the backdoor shell is not connected".into(),
                });
            };
            let canceller = shell.canceller();
            let logger = &self.ctx.logger;
            // At most LOG_BUDGET bytes of one command's output reach the log (`yes` must not
            // fill the disk); the rest is counted and said once.
            let (mut logged, mut unlogged) = (0usize, 0u64);
            let mut stream = |line: &[u8]| match log_output {
                false => {}
                true if logged < LOG_BUDGET => {
                    logged += line.len() + 1;
                    logger.output(&self.name, &String::from_utf8_lossy(line));
                }
                true => unlogged += 1,
            };
            let r = {
                let fut = shell.execute(command, timeout, &mut stream);
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => r,
                    e = &mut intr => {
                        canceller.cancel();
                        let _ = tokio::time::timeout(Duration::from_secs(15), &mut fut).await;
                        return Err(e);
                    }
                }
            };
            if unlogged > 0 {
                logger.output(
                    &self.name,
                    &format!(
                        "[machinist: {unlogged} more output lines of this command not logged]"
                    ),
                );
            }
            match r {
                Ok(o) => Ok((o.code, o.stdout)),
                Err(ShellError::Timeout { stdout, .. }) => Ok((124, stdout)),
                Err(ShellError::BackgroundHolder {
                    pids, code, stdout, ..
                }) => Err(Error::BackgroundProcess {
                    machine: self.name.clone(),
                    command: command.to_string(),
                    code,
                    pids,
                    output: String::from_utf8_lossy(&stdout).into_owned(),
                }),
                Err(e @ ShellError::Respawned { .. }) => {
                    // The guest started a new main shell (a switch_root-like re-exec, or its unit
                    // was restarted); the greeting is already read, so take it over now and let
                    // the next command run in it. The control shell is untouched.
                    let again = tokio::time::timeout(RESPAWN_RECONNECT, shell.reconnect()).await;
                    let next = match again {
                        Ok(Ok(())) => "the next command runs in the new shell",
                        _ => "reconnecting to the new shell failed; restart the machine",
                    };
                    self.log_line(&format!("the guest's root shell was re-spawned: {next}"));
                    Err(Error::backend(
                        Some(&self.name),
                        format!(
                            "running `{command}` (the guest's root shell was re-spawned: {next})"
                        ),
                        e,
                    ))
                }
                Err(e @ ShellError::Disconnected { .. }) => {
                    // QEMU gone (crash) or the guest powered off.
                    let exited = tokio::time::timeout(Duration::from_secs(2), run.process.wait())
                        .await
                        .is_ok();
                    if exited {
                        Err(self.exited_error(&run.process, &format!("running `{command}`"), e))
                    } else {
                        Err(Error::backend(
                            Some(&self.name),
                            format!("running `{command}`"),
                            e,
                        ))
                    }
                }
                Err(e) => Err(Error::backend(
                    Some(&self.name),
                    format!("running `{command}`"),
                    e,
                )),
            }
        });
        res.map_err(|e| self.ctx.resolve_interrupt(e))
    }

    /// Runs `command` (NixOS `execute`): returns `(exit code, stdout)` without failing on a
    /// non-zero exit. Default timeout 900 s (exit code 124 when it expires).
    pub fn execute(&self, command: &str) -> Result<ExecResult> {
        self.execute_with(command, DEFAULT_TIMEOUT)
    }

    /// [`Machine::execute`] with an explicit timeout (`None` = no timeout).
    pub fn execute_with(&self, command: &str, timeout: impl IntoTimeout) -> Result<ExecResult> {
        let t = timeout.into_timeout().map(|d| self.ctx.scaled(d));
        let (code, out) = self.run_command(command, t)?;
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
    }

    /// Waits until QEMU exits (NixOS `wait_for_shutdown`), at most 900 s (scaled).
    pub fn wait_for_shutdown(&self) -> Result<()> {
        let Some(run) = self.current().or_else(|| {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }) else {
            return Ok(());
        };
        self.nested("waiting for the VM to power off", || {
            let timeout = self.ctx.scaled(DEFAULT_TIMEOUT);
            let p = run.process.clone();
            let name = self.name.clone();
            self.ctx.block_on(false, async move {
                tokio::time::timeout(timeout, p.wait())
                    .await
                    .map_err(|_| Error::Timeout {
                        machine: Some(name),
                        what: "the VM to power off".into(),
                        timeout,
                        elapsed: timeout,
                        last_output: String::new(),
                    })
            })?;
            self.reset_state();
            Ok(())
        })
    }

    fn reset_state(&self) {
        let old = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(old);
    }

    /// Powers the guest off cleanly (`poweroff`) and waits for QEMU to exit (NixOS `shutdown`).
    pub fn shutdown(&self) -> Result<()> {
        if self.current().is_none() {
            return Ok(());
        }
        // The reply may never come: the shell dies with the guest.
        let _ = self.run_command(
            "systemctl poweroff --no-block >/dev/null 2>&1 &",
            Some(Duration::from_secs(30)),
        );
        self.wait_for_shutdown()
    }

    /// Simulates a power failure: QEMU quits at once (NixOS `crash`); the disk overlay keeps
    /// what the guest had written, so `start()` boots it again.
    pub fn crash(&self) -> Result<()> {
        let Some(run) = self.current() else {
            return Ok(());
        };
        self.log_line("forced crash");
        let name = self.name.clone();
        let qmp = run.qmp.clone();
        let r = self.ctx.block_on(false, async move {
            qmp.quit()
                .await
                .map_err(|e| Error::backend(Some(&name), "sending quit", e))
        });
        if r.is_err() {
            run.process.start_kill();
        }
        self.wait_for_shutdown()
    }

    /// Reboots the guest with Ctrl-Alt-Delete (NixOS `reboot`). With `start_with(true)` the same
    /// QEMU keeps running and the next command waits for the new boot (with a fresh boot
    /// deadline). Without it QEMU runs with `-no-reboot` and exits; unlike NixOS (where the
    /// machine then stays down) we wait for that exit and start the machine again, so `reboot()`
    /// always reboots.
    pub fn reboot(&self) -> Result<()> {
        let run = self.require_running("reboot")?;
        self.nested("rebooting", || {
            self.send_key_with("ctrl-alt-delete", Duration::from_millis(10), false)?;
            if run.allow_reboot {
                *run.boot_from.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                run.needs_reconnect.store(true, Ordering::Release);
                run.settled.store(false, Ordering::Release);
                Ok(())
            } else {
                drop(run);
                self.wait_for_shutdown()?;
                self.start()
            }
        })
    }

    /// Kills QEMU at once without logging (cleanup).
    pub(crate) fn kill_now(&self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.process.start_kill();
            let _ = r.process.wait_timeout_blocking(Duration::from_secs(5));
        }
    }

    /// Sends an HMP monitor command (NixOS `send_monitor_command`; via QMP
    /// `human-monitor-command`) and returns its output.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.ctx.before_command()?;
        let run = self.require_running("send a monitor command")?;
        let name = self.name.clone();
        let cmd = command.to_string();
        self.ctx.block_on(true, async move {
            run.qmp
                .human_monitor_command(&cmd)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("monitor command `{cmd}`"), e))
        })
    }

    /// Runs a QMP command with JSON arguments and returns its `return` value.
    pub fn qmp_command(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let run = self.require_running("send a QMP command")?;
        let name = self.name.clone();
        let cmd = command.to_string();
        let t = self.ctx.scaled(Duration::from_secs(60));
        self.ctx.block_on(true, async move {
            run.qmp
                .execute(&cmd, arguments, t)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("QMP command `{cmd}`"), e))
        })
    }

    /// Waits for the next QMP event accepted by `filter` (NixOS `wait_for_qmp_event`, default
    /// timeout 600 s); other events are dropped.
    pub fn wait_for_qmp_event(
        &self,
        filter: impl Fn(&machinist_qemu::QmpEvent) -> bool,
        timeout: impl IntoTimeout,
    ) -> Result<machinist_qemu::QmpEvent> {
        let run = self.require_running("wait for a QMP event")?;
        let t = self.ctx.scaled(
            timeout
                .into_timeout()
                .unwrap_or(crate::timeouts::DEFAULT_QMP_EVENT_TIMEOUT),
        );
        let mut rx = run.qmp.subscribe();
        let name = self.name.clone();
        self.ctx.block_on(true, async move {
            let deadline = tokio::time::Instant::now() + t;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(ev)) if filter(&ev) => return Ok(ev),
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(_)) => {
                        return Err(Error::NotRunning {
                            machine: name,
                            message: "QMP connection closed while waiting for an event".into(),
                        })
                    }
                    Err(_) => {
                        return Err(Error::Timeout {
                            machine: Some(name),
                            what: "a matching QMP event".into(),
                            timeout: t,
                            elapsed: t,
                            last_output: String::new(),
                        })
                    }
                }
            }
        })
    }

    /// Everything the serial console printed since the machine last started (NixOS
    /// `get_console_log`).
    pub fn get_console_log(&self) -> String {
        match self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(r) => r.process.serial().lines().join("\n"),
            None => std::fs::read_to_string(&self.console_file).unwrap_or_default(),
        }
    }

    /// Where the console log is written (`<output dir>/<name>-console.log`).
    pub fn console_log_path(&self) -> &std::path::Path {
        &self.console_file
    }

    /// Waits until `regex` matches the serial console output not consumed by an earlier call
    /// (multi-line, NixOS `wait_for_console_text`); returns the matched text. Default timeout
    /// 900 s (NixOS: none).
    pub fn wait_for_console_text(&self, regex: &str, timeout: impl IntoTimeout) -> Result<String> {
        let re = regex::Regex::new(regex)
            .map_err(|e| Error::Invalid(format!("bad regex `{regex}`: {e}")))?;
        let t = self
            .ctx
            .scaled(timeout.into_timeout().unwrap_or(DEFAULT_TIMEOUT));
        self.nested(&format!("waiting for {regex} to appear on console"), || {
            let run = self.require_running("wait for console text")?;
            let deadline = Deadline::new(t);
            let serial = run.process.serial().clone();
            let mut rx = serial.subscribe();
            // Set once QEMU has exited: one last look at the final output, then fail at once.
            let mut exited = false;
            loop {
                let lines = serial.lines();
                let total = serial.line_count();
                let first = total.saturating_sub(lines.len() as u64);
                let mut cursor = self
                    .console_cursor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let from = (*cursor).max(first);
                let skip = (from - first) as usize;
                let mut text = String::new();
                let mut ends = Vec::new();
                for l in &lines[skip.min(lines.len())..] {
                    text.push_str(l);
                    text.push('\n');
                    ends.push(text.len());
                }
                let partial = serial.partial_line();
                text.push_str(&partial);
                if let Some(m) = re.find(&text) {
                    let consumed = ends.iter().take_while(|&&e| e <= m.end()).count() as u64;
                    *cursor = from + consumed;
                    return Ok(m.as_str().to_string());
                }
                drop(cursor);
                if exited {
                    break;
                }
                if deadline.expired() {
                    return Err(Error::Timeout {
                        machine: Some(self.name.clone()),
                        what: format!("console text matching {regex}"),
                        timeout: t,
                        elapsed: deadline.elapsed(),
                        last_output: String::new(),
                    });
                }
                let wait = deadline.remaining().min(Duration::from_millis(500));
                self.ctx.block_on(true, async {
                    let _ = tokio::time::timeout(wait, rx.recv()).await;
                    Ok(())
                })?;
                exited = run.process.try_wait().is_some() && serial.is_closed();
            }
            Err(Error::NotRunning {
                machine: self.name.clone(),
                message: format!(
                    "QEMU exited before console text matching {regex} appeared (console log: {})",
                    self.console_file.display()
                ),
            })
        })
    }

    /// Writes `chars` to the serial console (QEMU's stdin, NixOS `send_console`).
    pub fn send_console(&self, chars: &str) -> Result<()> {
        let run = self.require_running("write to the serial console")?;
        run.process
            .write_stdin(chars.as_bytes())
            .map_err(|e| Error::backend(Some(&self.name), "writing to the serial console", e))
    }

    /// The VLANs this machine is attached to.
    pub fn vlans(&self) -> &[VLan] {
        &self.vlans
    }

    /// Drops every frame to and from this machine on all its VLANs, at the switch: the guest
    /// keeps its carrier and sees silence (like pulling the cable *behind* a switch). NixOS'
    /// `block()` instead unplugs the NIC (carrier loss): that is [`Machine::set_link`]`(false)`.
    pub fn block(&self) -> Result<()> {
        self.log_line("blocking network traffic on all VLANs");
        for v in &self.vlans {
            v.block(&self.name)?;
        }
        Ok(())
    }

    /// Undoes [`Machine::block`].
    pub fn unblock(&self) -> Result<()> {
        self.log_line("unblocking network traffic on all VLANs");
        for v in &self.vlans {
            v.unblock(&self.name)?;
        }
        Ok(())
    }

    /// Plugs (`true`) or unplugs (`false`) the NICs on every VLAN with QMP `set_link`: the guest
    /// sees carrier loss (NixOS `block()` semantics, but on every VLAN NIC, not just the first).
    pub fn set_link(&self, up: bool) -> Result<()> {
        for n in self.spec.nics.clone() {
            self.set_link_vlan(n.vlan.nr(), up)?;
        }
        Ok(())
    }

    /// [`Machine::set_link`] for the NIC on one VLAN.
    pub fn set_link_vlan(&self, vlan: u8, up: bool) -> Result<()> {
        let nic = self
            .spec
            .nics
            .iter()
            .find(|n| n.vlan.nr() == vlan)
            .ok_or_else(|| {
                Error::Invalid(format!("machine `{}` has no NIC on vlan {vlan}", self.name))
            })?;
        let run = self.require_running("set a link")?;
        let (name, id) = (self.name.clone(), nic.id.clone());
        self.ctx.block_on(true, async move {
            run.qmp
                .set_link(&id, up)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("set_link {id} {up}"), e))
        })
    }

    /// Forwards host TCP port `host_port` (on 127.0.0.1) to `guest_port` through the node's
    /// user-mode NIC (NixOS `forward_port`; the node needs `user_net(true)`).
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<()> {
        let Some((id, _)) = &self.spec.user_nic else {
            return Err(Error::Invalid(format!(
                "machine `{}` has no user-mode NIC: declare it with NodeConfig::user_net(true) to use forward_port",
                self.name
            )));
        };
        let netdev = format!("{id}-netdev");
        let out = self.send_monitor_command(&format!(
            "hostfwd_add {netdev} tcp:127.0.0.1:{host_port}-:{guest_port}"
        ))?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(Error::Assertion {
                machine: self.name.clone(),
                message: format!("hostfwd_add failed: {}", out.trim()),
            })
        }
    }

    /// Sends the host's stdin to the backdoor shell and its output to stdout until Ctrl-]
    /// (then Enter: the terminal stays in line mode, so it echoes and edits what you type, which
    /// a guest shell without a tty cannot do) or EOF (Ctrl-D) (NixOS `shell_interact`).
    /// Commands typed run as root in the guest; the machine stays usable afterwards.
    pub fn shell_interact(&self) -> Result<()> {
        if self.current().is_none() {
            self.start()?;
        }
        self.execute("true")?;
        self.log_line(
            "Terminal is ready (there is no prompt): type commands; Ctrl-] then Enter, or Ctrl-D, to leave",
        );
        self.with_shell(async |shell| {
            shell
                .attach_raw(
                    tokio::io::stdin(),
                    tokio::io::stdout(),
                    machinist_backdoor::ESCAPE_CTRL_RIGHT_BRACKET,
                )
                .await
        })?
        .map_err(|e| Error::backend(Some(&self.name), "interactive shell", e))
    }

    /// Forwards host stdin to the serial console (QEMU's stdin) until Ctrl-D
    /// (NixOS `console_interact`); the console output appears in the log as usual.
    pub fn console_interact(&self) -> Result<()> {
        let run = self.require_running("attach the console")?;
        self.log_line(
            "Terminal is ready (there is no prompt): type on the serial console, Ctrl-D to leave",
        );
        let stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = std::io::Read::read(&mut stdin.lock(), &mut buf)
                .map_err(|e| Error::io("reading stdin", e))?;
            if n == 0 {
                return Ok(());
            }
            let chunk = &buf[..n];
            if let Some(pos) = chunk.iter().position(|&b| b == 0x04) {
                let _ = run.process.write_stdin(&chunk[..pos]);
                return Ok(());
            }
            run.process.write_stdin(chunk).map_err(|e| {
                Error::backend(Some(&self.name), "writing to the serial console", e)
            })?;
        }
    }

    /// Saves artefacts after a failure: the running machine's journal (`journalctl -b`) as
    /// `<name>-journal.log` next to its console log, if its shell still answers.
    pub(crate) fn failure_journal(&self) -> Option<PathBuf> {
        if !self.is_up() || self.ctx.aborted().is_some() {
            return None;
        }
        let path = self.ctx.out_dir.join(format!("{}-journal.log", self.name));
        let timeout = self.ctx.scaled(Duration::from_secs(60));
        match self.run_command_quiet("journalctl -b --no-pager -o short-monotonic", Some(timeout)) {
            Ok((0, out)) => match std::fs::write(&path, out) {
                Ok(()) => Some(path),
                Err(e) => {
                    self.log_line(&format!("cannot write {}: {e}", path.display()));
                    None
                }
            },
            Ok((code, _)) => {
                self.log_line(&format!(
                    "journalctl -b exited with code {code}; no journal saved"
                ));
                None
            }
            Err(e) => {
                self.log_line(&format!("cannot read the journal: {e}"));
                None
            }
        }
    }

    /// Saves artefacts after a failure: screenshot of the running machine.
    pub(crate) fn failure_screenshot(&self) -> Option<PathBuf> {
        self.current()?;
        let path = self.ctx.out_dir.join(format!("{}-final.png", self.name));
        self.screenshot_raw(&path).ok()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The QEMU command line of a machine (shared by cold boots, restores and the snapshot builder,
/// so that a snapshot's device list matches the machines restored from it).
pub(crate) fn command_for(
    name: &str,
    s: &BootSpec,
    dir: &std::path::Path,
    overlay: &std::path::Path,
    initrd: &std::path::Path,
    allow_reboot: bool,
) -> QemuCommand {
    let mut cmd = QemuCommand::new(name)
        .accel(s.accel)
        .memory_mib(s.memory_mib)
        .cores(s.cores)
        .kernel(&s.kernel)
        .initrd(initrd)
        .append(&s.append)
        .drive(machinist_qemu::Drive::qcow2(overlay))
        .virtserialport("shell", dir.join("shell.sock"))
        .virtserialport("control", dir.join("control.sock"))
        .qmp(dir.join("qmp.sock"))
        .allow_reboot(allow_reboot);
    for n in &s.nics {
        cmd = cmd.nic(machinist_qemu::Nic::stream(&n.id, &n.mac, &n.port));
    }
    if let Some((id, mac)) = &s.user_nic {
        cmd = cmd.nic(machinist_qemu::Nic::user(id, mac, true));
    }
    cmd.args_extra(s.extra_args.iter().cloned())
}
