//! A machine's part in the boot settle (see [`crate::settle`]).

use super::Machine;
use crate::error::Result;
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

    /// Before a timed wait on this machine starts its clock, every machine that is still booting
    /// (this one included) finishes booting. Not inside a polling condition's check.
    pub(crate) fn settle_boots(&self) -> Result<()> {
        self.ensure_up()?;
        if crate::polling::in_check() {
            return Ok(());
        }
        let bound = format!(
            "each at most its boot deadline of {} s, then {} s for systemd",
            self.ctx.timeouts.boot_deadline().as_secs(),
            self.ctx.timeouts.of(Wait::BootSettle).as_secs()
        );
        self.ctx
            .boots
            .settle_all(&self.ctx.logger, self.name(), &bound)?;
        self.ctx.before_command()
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
        let (code, out) =
            self.run_command("systemctl is-system-running --wait 2>&1 || true", Some(cap))?;
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
