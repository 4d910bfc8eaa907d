//! The backdoor shell session of a running machine: connecting (under the boot deadline, with
//! a restored machine's identity hooks), reconnecting after a reboot, running one command with
//! its output streamed to the log, and cancelling it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use machinist_backdoor::{ConnectOptions, Control, Shell, ShellError};

use super::{ExecResult, Machine, Running};
use crate::backend::{while_running, Instance, ShellTransport};
use crate::error::{Error, Result};
use crate::log::Event;
use crate::timeouts::{IntoTimeout, Wait, DEFAULT_TIMEOUT};
use crate::warm::identity::{self, PendingIdentity};

/// How many bytes of one command's output go to the log at most (the command's result keeps
/// the backdoor's own, larger bound).
const LOG_BUDGET: usize = 16 << 20;

/// The main shell's state.
pub(crate) enum ShellSlot {
    /// The node started; the guest has not greeted yet.
    Pending(ShellTransport),
    /// Connected.
    Ready(Shell),
    /// Unusable (the reason).
    Broken(String),
}

/// A running machine's session with its backdoor.
pub(crate) struct Session {
    shell: tokio::sync::Mutex<ShellSlot>,
    control: Mutex<Option<Control>>,
    /// Boot deadline start (the start, or the last reboot).
    boot_from: Mutex<Instant>,
    needs_reconnect: AtomicBool,
    connected: AtomicBool,
    /// systemd finished starting up since the last (re)boot.
    settled: AtomicBool,
    /// Restored from a snapshot: the identity still to send and check.
    restore: Mutex<Option<PendingIdentity>>,
}

impl Session {
    pub(crate) fn new(transport: ShellTransport, restore: Option<PendingIdentity>) -> Self {
        Session {
            shell: tokio::sync::Mutex::new(ShellSlot::Pending(transport)),
            control: Mutex::new(None),
            boot_from: Mutex::new(Instant::now()),
            needs_reconnect: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            restore: Mutex::new(restore),
        }
    }

    /// Connected and not waiting for a reboot.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && !self.needs_reconnect.load(Ordering::Acquire)
    }

    /// systemd finished starting up since the last (re)boot.
    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// The guest reboots inside the same runtime: the next command reconnects, under a fresh
    /// boot deadline.
    pub(crate) fn rebooted(&self) {
        *self.boot_from.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.needs_reconnect.store(true, Ordering::Release);
        self.settled.store(false, Ordering::Release);
    }

    /// The control channel, once connected.
    pub(crate) fn control(&self) -> Option<Control> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends a restored machine's identity, once, if it was not sent yet.
    async fn wake_restored(
        &self,
        name: &str,
        slot: &mut ShellSlot,
        within: std::time::Duration,
    ) -> Result<()> {
        let ShellSlot::Pending(transport) = slot else {
            return Ok(());
        };
        let mut pending = self
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let r = match pending.as_mut() {
            Some(p) => identity::wake(name, p, transport, within).await,
            None => Ok(()),
        };
        *self.restore.lock().unwrap_or_else(|p| p.into_inner()) = pending;
        r
    }
}

impl Machine {
    /// Wakes a restored machine's guest right after the restore, without waiting for its first
    /// command.
    pub(crate) fn wake_restored_eagerly(&self, run: &Arc<Running>) {
        let (r2, name, t) = (
            run.clone(),
            self.name.clone(),
            self.ctx.timeouts.boot_deadline(),
        );
        self.ctx.handle.spawn(async move {
            let mut slot = r2.session.shell.lock().await;
            if let Err(e) = r2.session.wake_restored(&name, &mut slot, t).await {
                *slot = ShellSlot::Broken(e.to_string());
            }
        });
    }

    /// Runs `f` on the connected main backdoor shell (connecting first, under the boot
    /// deadline). For benchmarks and tools that speak to the shell directly.
    /// Ctrl-C (`TestRun::interrupt`) ends the wait.
    pub(crate) fn with_shell<T>(&self, f: impl AsyncFnOnce(&mut Shell) -> T) -> Result<T> {
        let run = self.require_running("use the backdoor shell")?;
        self.on_shell(&run, false, f)
    }

    /// Connects `run`'s main shell if needed and runs `f` on it. An abort, Ctrl-C or (with
    /// `watch_polling`) a failing polling condition ends the wait: the guest command is killed
    /// through the control channel (not only left unread) and the shell reads the command's
    /// end, so that it stays in step.
    fn on_shell<T>(
        &self,
        run: &Running,
        watch_polling: bool,
        f: impl AsyncFnOnce(&mut Shell) -> T,
    ) -> Result<T> {
        let intr = self.ctx.interrupted(watch_polling);
        let drain = self.ctx.timeouts.of(Wait::CancelDrain);
        let res = self.ctx.handle.block_on(async {
            tokio::pin!(intr);
            let mut slot = run.session.shell.lock().await;
            tokio::select! {
                r = self.ensure_connected(run, &mut slot) => r?,
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
                    canceller.cancel();
                    let _ = tokio::time::timeout(drain, &mut fut).await;
                    Err(e)
                }
            }
        });
        res.map_err(|e| self.ctx.resolve_interrupt(e))
    }

    /// Connects the backdoor (first command after start or reboot), under the boot deadline.
    async fn ensure_connected(&self, run: &Running, slot: &mut ShellSlot) -> Result<()> {
        let session = &run.session;
        let reconnect = session.needs_reconnect.load(Ordering::Acquire);
        if matches!(slot, ShellSlot::Ready(_)) && !reconnect {
            return Ok(());
        }
        if let ShellSlot::Broken(why) = slot {
            return Err(Error::NotRunning {
                machine: self.name.clone(),
                message: format!("the backdoor shell is unusable: {why}; restart the machine"),
            });
        }
        let boot_from = *session.boot_from.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = self.ctx.timeouts.boot_deadline();
        // At least a moment, so that an expired deadline still tries once.
        let remaining = deadline
            .saturating_sub(boot_from.elapsed())
            .max(crate::timeouts::Pace::RestorePoll.get());
        let span = self
            .ctx
            .logger
            .begin(Some(&self.name), "waiting for the VM to finish booting");
        let started = Instant::now();
        let opts = ConnectOptions::new(self.name.clone()).timeout(remaining);
        let mut taken =
            std::mem::replace(slot, ShellSlot::Broken("connecting was interrupted".into()));
        session
            .wake_restored(&self.name, &mut taken, remaining)
            .await?;
        let restore = session
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let fut = async {
            match taken {
                ShellSlot::Pending(ShellTransport { main, control }) => {
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
        let r = while_running(run.instance.as_ref(), fut).await;
        let mut shell = match r {
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
            Err(status) => {
                return Err(self.exited_error(
                    run.instance.as_ref(),
                    "waiting for the VM to finish booting",
                    status,
                ));
            }
        };
        if let Some(p) = &restore {
            identity::check(
                &self.name,
                &mut shell,
                &p.key,
                self.ctx.timeouts.of(Wait::IdentityCheck),
            )
            .await?;
        }
        *session.control.lock().unwrap_or_else(|p| p.into_inner()) = shell.control().cloned();
        *slot = ShellSlot::Ready(shell);
        session.needs_reconnect.store(false, Ordering::Release);
        session.connected.store(true, Ordering::Release);
        self.log_line("Guest shell says: b'Spawning backdoor root shell...\\n'");
        self.ctx.logger.event(Event::Connected {
            machine: self.name.clone(),
            seconds: started.elapsed().as_secs_f64(),
        });
        span.finish();
        Ok(())
    }

    /// The error for a node whose runtime ended while the driver was `during` something.
    pub(crate) fn exited_error(
        &self,
        instance: &dyn Instance,
        during: &str,
        fallback: impl std::fmt::Display,
    ) -> Error {
        Error::QemuExited {
            machine: self.name.clone(),
            status: instance
                .exit_status()
                .unwrap_or_else(|| fallback.to_string()),
            during: during.to_string(),
            stderr: instance.diagnostics_tail(),
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
        timeout: Option<std::time::Duration>,
    ) -> Result<(i32, Vec<u8>)> {
        self.run_command_with(command, timeout, true)
    }

    /// [`Machine::run_command`] without streaming the output into the log (bulk data such as
    /// a whole journal or a file's contents).
    pub(crate) fn run_command_quiet(
        &self,
        command: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<(i32, Vec<u8>)> {
        self.run_command_with(command, timeout, false)
    }

    fn run_command_with(
        &self,
        command: &str,
        timeout: Option<std::time::Duration>,
        log_output: bool,
    ) -> Result<(i32, Vec<u8>)> {
        self.ctx.before_command()?;
        if crate::polling::in_check() {
            if let Some(c) = self.current().and_then(|r| r.session.control()) {
                let name = self.name.clone();
                let cmd = command.to_string();
                let t = timeout.unwrap_or(self.ctx.timeouts.of(Wait::ControlCommand));
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
        let timeouts = self.ctx.timeouts;
        let began = Instant::now();
        self.on_shell(&run, true, async |shell: &mut Shell| {
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
            let r = shell.execute(command, timeout, &mut stream).await;
            if unlogged > 0 {
                logger.output(
                    &self.name,
                    &format!(
                        "[machinist: {unlogged} more output lines of this command not logged]"
                    ),
                );
            }
            let r = match r {
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
                    let again = tokio::time::timeout(
                        timeouts.of(Wait::RespawnReconnect),
                        shell.reconnect(),
                    )
                    .await;
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
                    // The node is gone (crash) or the guest powered off.
                    let exited = tokio::time::timeout(
                        timeouts.of(Wait::ExitAfterDisconnect),
                        run.instance.ended(),
                    )
                    .await
                    .is_ok();
                    if exited {
                        Err(self.exited_error(
                            run.instance.as_ref(),
                            &format!("running `{command}`"),
                            &e,
                        ))
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
            };
            if let Ok((code, _)) = &r {
                logger.event(Event::Command {
                    machine: self.name.clone(),
                    command: command.to_string(),
                    code: *code,
                    seconds: began.elapsed().as_secs_f64(),
                });
            }
            r
        })?
    }

    /// Runs `command` (NixOS `execute`): returns `(exit code, stdout)` without failing on a
    /// non-zero exit. Default timeout 900 s (exit code 124 when it expires).
    pub fn execute(&self, command: &str) -> Result<ExecResult> {
        self.execute_with(command, None)
    }

    /// [`Machine::execute`] with an explicit timeout (`None` = the default, 900 s;
    /// [`crate::timeouts::NEVER`] = no limit).
    pub fn execute_with(&self, command: &str, timeout: impl IntoTimeout) -> Result<ExecResult> {
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        let (code, out) = self.run_command(command, Some(t))?;
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
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
}
