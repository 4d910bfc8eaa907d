//! Starting and stopping a machine: `start`, `shutdown`, `crash`, `reboot`,
//! `wait_for_shutdown`. The one start path asks warm start first and boots cold otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::session::Session;
use super::{Machine, Running};
use crate::backend::{Instance, ShellTransport};
use crate::error::{Error, Result};
use crate::log::{BootKind, Event};
use crate::timeouts::{Pace, Wait, DEFAULT_TIMEOUT};
use crate::warm;

/// How a machine's node was last started ([`Machine::last_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// Restored from a warm-start snapshot, then given the node's identity and layer.
    Restored,
    /// Booted from the kernel (warm start off or not possible, or a restart after a crash).
    Cold,
}

impl Machine {
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
        self.ctx.logger.event(Event::Starting {
            machine: self.name.clone(),
            backend: self.backend(),
        });
        let began = std::time::Instant::now();
        let (running, kind, reason, built_snapshot) = self.spawn(allow_reboot)?;
        self.ctx.logger.event(Event::Started {
            machine: self.name.clone(),
            backend: self.backend(),
            kind: match kind {
                StartKind::Restored => BootKind::Warm,
                StartKind::Cold => BootKind::Cold,
            },
            pid: running.instance.pid(),
            seconds: began.elapsed().as_secs_f64(),
            reason: Some(reason),
            built_snapshot,
        });
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(())
    }

    /// The start path: a warm start where possible, else a cold boot. Returns the run, how it
    /// started and why (the snapshot key, or why it booted cold).
    fn spawn(&self, allow_reboot: bool) -> Result<(Arc<Running>, StartKind, String, bool)> {
        let first = !self.started_once.swap(true, Ordering::AcqRel);
        if let Some(ct) = &self.container {
            // A container boots in a few seconds: warm start does not apply.
            self.log_line("starting as a systemd-nspawn container");
            let (instance, transport) = ct.start(&self.ctx)?;
            let run = self.running_from(instance, transport, allow_reboot, None);
            *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(StartKind::Cold);
            return Ok((
                run,
                StartKind::Cold,
                "container (warm start does not apply)".into(),
                false,
            ));
        }
        let outcome = warm::start(
            &self.ctx,
            &self.backend,
            &self.warm,
            first,
            allow_reboot,
            &self.name,
        )?;
        let (run, kind, reason, built) = match outcome {
            warm::Outcome::Restored {
                started,
                pending,
                key,
                seconds,
                built,
            } => {
                let run =
                    self.running_from(started.vm, started.transport, allow_reboot, Some(pending));
                let which = if built {
                    "node snapshot built by this run"
                } else {
                    "node snapshot"
                };
                self.log_line(&format!(
                    "warm start: restored from snapshot {key} ({which}, {seconds:.2} s to running)"
                ));
                // Wake the guest now: it applies its identity while the host goes on (the
                // guide's script may never send the server a command, yet expects its services
                // to come up).
                self.wake_restored_eagerly(&run);
                (run, StartKind::Restored, key, built)
            }
            warm::Outcome::Cold { line, reason } => {
                if let Some(line) = line {
                    self.log_line(&line);
                }
                let started = self.backend.start_cold(&self.ctx, allow_reboot)?;
                (
                    self.running_from(started.vm, started.transport, allow_reboot, None),
                    StartKind::Cold,
                    reason,
                    false,
                )
            }
        };
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        Ok((run, kind, reason, built))
    }

    fn running_from(
        &self,
        instance: Arc<dyn Instance>,
        transport: ShellTransport,
        allow_reboot: bool,
        pending: Option<warm::identity::PendingIdentity>,
    ) -> Arc<Running> {
        let console_task = self.spawn_console_task(instance.as_ref());
        // A node snapshot is taken once systemd has settled: a restored node has nothing left
        // to settle once its backdoor connects.
        let restored = pending.is_some();
        let session = Session::new(transport, pending);
        if restored {
            session.mark_settled();
        }
        Arc::new(Running {
            instance,
            session,
            console_task,
            allow_reboot,
        })
    }

    /// How the node was last started: restored from a warm-start snapshot or booted cold (`None`
    /// before the first start). A warm start that fails falls back to a cold boot, which this
    /// tells apart.
    pub fn last_start(&self) -> Option<StartKind> {
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds (or reuses) the snapshot this machine's first start would restore, without
    /// starting the machine: what `machinist build-images` does ahead of a test.
    pub fn prepare_warm_start(&self) -> Result<warm::Prepared> {
        if self.container.is_some() {
            return Ok(warm::Prepared::Cold {
                reason: "container (warm start does not apply)".into(),
            });
        }
        warm::prepare(&self.ctx, &self.backend, &self.warm, &self.name)
    }

    /// Waits until the node's runtime exits (NixOS `wait_for_shutdown`), at most 900 s (scaled).
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
            let timeout = self.ctx.timeouts.scaled(DEFAULT_TIMEOUT);
            let name = self.name.clone();
            self.ctx.block_on(false, async move {
                tokio::time::timeout(timeout, run.instance.ended())
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

    /// Powers the guest off cleanly (`poweroff`) and waits for it to stop (NixOS `shutdown`).
    pub fn shutdown(&self) -> Result<()> {
        if self.current().is_none() {
            return Ok(());
        }
        // The reply may never come: the shell dies with the guest.
        let _ = self.run_command(
            "systemctl poweroff --no-block >/dev/null 2>&1 &",
            Some(self.ctx.timeouts.of(Wait::PoweroffRequest)),
        );
        self.wait_for_shutdown()
    }

    /// Simulates a power failure: the node stops at once (NixOS `crash`); the disk overlay keeps
    /// what the guest had written, so `start()` boots it again.
    pub fn crash(&self) -> Result<()> {
        let Some(run) = self.current() else {
            return Ok(());
        };
        self.log_line("forced crash");
        let name = self.name.clone();
        let r2 = run.clone();
        let r = self.ctx.block_on(false, async move {
            r2.instance
                .power_off_now()
                .await
                .map_err(|e| Error::backend(Some(&name), "sending quit", e))
        });
        if r.is_err() {
            run.instance.start_kill();
        }
        drop(run);
        self.wait_for_shutdown()
    }

    /// Reboots the guest with Ctrl-Alt-Delete (NixOS `reboot`). With `start_with(true)` the same
    /// QEMU keeps running and the next command waits for the new boot (with a fresh boot
    /// deadline). Without it QEMU runs with `-no-reboot` and exits; unlike NixOS (where the
    /// machine then stays down) we wait for that exit and start the machine again, so `reboot()`
    /// always reboots.
    ///
    /// A container reboots by `systemctl reboot` inside: its nspawn ends and the machine starts
    /// again from its upper layer.
    pub fn reboot(&self) -> Result<()> {
        let run = self.require_running("reboot")?;
        if self.container.is_some() {
            drop(run);
            return self.nested("rebooting", || {
                // The reply may never come: the shell dies with the container.
                let _ = self.run_command(
                    "systemctl reboot --no-block >/dev/null 2>&1 &",
                    Some(self.ctx.timeouts.of(Wait::PoweroffRequest)),
                );
                self.wait_for_shutdown()?;
                self.start()
            });
        }
        self.nested("rebooting", || {
            self.send_key_with("ctrl-alt-delete", Pace::KeyDelay.get(), false)?;
            if run.allow_reboot {
                run.session.rebooted();
                Ok(())
            } else {
                drop(run);
                self.wait_for_shutdown()?;
                self.start()
            }
        })
    }

    /// Kills the node at once without logging (cleanup).
    pub(crate) fn kill_now(&self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.instance
                .kill_and_wait(self.ctx.timeouts.of(Wait::KillGrace));
        }
    }
}
