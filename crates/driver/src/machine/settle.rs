//! A machine's part in the boot settle (see [`crate::settle`]), and the rule every timed wait
//! follows.

use std::time::{Duration, Instant};

use machinist_backdoor::ShellError;

use super::Machine;
use crate::error::{Error, Result};
use crate::timeouts::Wait;

impl Machine {
    /// Makes sure the machine runs and its shell is connected (waits for the boot under the boot
    /// deadline). Commands do this implicitly.
    pub fn ensure_up(&self) -> Result<()> {
        if self.is_up() {
            return Ok(());
        }
        self.run_command("true", None).map(drop)
    }

    /// Runs a timed wait on this machine under the boot-settle rule: `attempt(limit)` runs the
    /// wait for at most `limit` and fails with [`Error::Timeout`] when it runs out.
    ///
    /// The machine's own boot is never charged (it connects first). The wait starts at once, so
    /// an early success is taken at once; meanwhile every machine that is still booting settles
    /// in the background. If the wait runs out while that was so, it goes on until `timeout`
    /// after the last machine settled: a timed wait never expires earlier than its full length
    /// after every machine has finished booting (the guide's `wait_until_succeeds(curl, 7)` right
    /// after `start_all()` passes under TCG). A machine that cannot finish booting fails the wait.
    pub(crate) fn timed_wait<T>(
        &self,
        timeout: Duration,
        mut attempt: impl FnMut(Duration) -> Result<T>,
    ) -> Result<T> {
        self.ensure_up()?;
        if crate::polling::in_check() || !self.ctx.boots.any_booting() {
            return attempt(timeout);
        }
        let started = Instant::now();
        let bound = format!(
            "each at most its boot deadline of {} s, then {} s for systemd",
            self.ctx.timeouts.boot_deadline().as_secs(),
            self.ctx.timeouts.of(Wait::BootSettle).as_secs()
        );
        let (ctx, name) = (self.ctx.clone(), self.name().to_string());
        // Detached: an early success does not wait for the other machines.
        let settling = std::thread::Builder::new()
            .name("machinist-settle".into())
            .spawn(move || {
                ctx.boots
                    .settle_all(&ctx.logger, &name, &bound)
                    .map(|()| Instant::now())
            })
            .map_err(|e| Error::io("starting the boot settle thread", e))?;
        match attempt(timeout) {
            Err(Error::Timeout { .. }) => {}
            other => return other,
        }
        let settled_at = settling
            .join()
            .map_err(|_| Error::Internal("the boot settle thread panicked".into()))??;
        self.ctx.before_command()?;
        let left = (settled_at + timeout).saturating_duration_since(Instant::now());
        self.log_line(&format!(
            "the wait started before every machine had booted: trying {:.1} s more (until {} s \
             after the last one settled)",
            left.as_secs_f64(),
            timeout.as_secs_f64()
        ));
        match attempt(left) {
            Err(Error::Timeout {
                machine,
                what,
                last_output,
                ..
            }) => Err(Error::Timeout {
                machine,
                what,
                timeout,
                elapsed: started.elapsed(),
                last_output,
            }),
            other => other,
        }
    }

    /// Waits for this machine's backdoor and for systemd to finish starting up.
    pub(crate) fn settle_self(&self) -> Result<()> {
        self.ensure_up()?;
        let Some(run) = self.current() else {
            return Ok(());
        };
        if run.session.is_settled() {
            return Ok(());
        }
        let cap = self.ctx.timeouts.of(Wait::BootSettle);
        let span = self.ctx.logger.begin(
            Some(self.name()),
            "waiting for systemd to finish starting up",
        );
        let cmd = "systemctl is-system-running --wait 2>&1 || true";
        // Through the control channel when connected, so that a timed wait already running on
        // the main shell does not hold the settle up.
        let (code, out) = match run.session.control() {
            Some(c) => {
                let name = self.name().to_string();
                self.ctx.block_on(false, async move {
                    match c.execute(cmd, Some(cap)).await {
                        Ok(o) => Ok((o.code, o.stdout)),
                        Err(ShellError::Timeout { stdout, .. }) => Ok((124, stdout)),
                        Err(e) => Err(Error::backend(
                            Some(&name),
                            "waiting for systemd on the control channel",
                            e,
                        )),
                    }
                })?
            }
            None => self.run_command(cmd, Some(cap))?,
        };
        let state = String::from_utf8_lossy(&out).trim().to_string();
        if code == 124 {
            self.log_line(&format!(
                "systemd is still starting after {} s; going on",
                cap.as_secs()
            ));
        } else if state != "running" {
            self.log_line(&format!("system state: {state} (see `systemctl --failed`)"));
        }
        run.session.mark_settled();
        span.finish();
        Ok(())
    }
}
