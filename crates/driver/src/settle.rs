//! The boot settle: before a timed wait starts its clock, every machine that is still booting
//! finishes booting (its backdoor greets us and systemd finishes starting up).
//!
//! A timed wait starts at once and takes an early success at once, but expires no earlier than
//! its full length after every machine has settled (see `Machine::timed_wait`): so
//! `client.wait_until_succeeds("curl server", 7)` right after `start_all()` gets seven seconds
//! of trying once both machines have booted, even under TCG on a loaded host (NixOS only gets
//! away with it thanks to KVM). Plain commands (`succeed`, `execute`) only wait for their own
//! machine's backdoor. The settle is a log block naming the machines, the reason and its bound;
//! a machine that cannot finish booting fails the wait with its error.
//!
//! The board knows machines only through [`Booting`], so this module sits below the machine.

use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::log::{Event, Logger};

/// A machine as the boot settle sees it.
pub(crate) trait Booting: Send + Sync {
    /// The machine's name.
    fn name(&self) -> &str;
    /// It runs but has not finished booting since its last (re)boot.
    fn is_booting(&self) -> bool;
    /// Waits for its backdoor and for systemd to finish starting up (bounded by its boot
    /// deadline and [`crate::timeouts::Wait::BootSettle`]).
    fn settle(&self) -> Result<()>;
}

/// Every machine of a run.
#[derive(Default)]
pub(crate) struct BootBoard {
    machines: Mutex<Vec<Weak<dyn Booting>>>,
}

impl BootBoard {
    /// Adds a machine.
    pub(crate) fn register(&self, m: Weak<dyn Booting>) {
        self.machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m);
    }

    /// Whether any machine is still booting.
    pub(crate) fn any_booting(&self) -> bool {
        !self.booting().is_empty()
    }

    fn booting(&self) -> Vec<Arc<dyn Booting>> {
        let mut v: Vec<Arc<dyn Booting>> = self
            .machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| m.is_booting())
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Settles every booting machine at once (the caller's own machine included), for a timed
    /// wait on `waiter`; the first machine that cannot finish booting fails it.
    pub(crate) fn settle_all(&self, logger: &Logger, waiter: &str, bound: &str) -> Result<()> {
        let booting = self.booting();
        if booting.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = booting.iter().map(|m| m.name()).collect();
        let span = logger.begin(
            Some(waiter),
            &format!(
                "boot settle: waiting for {} to finish booting, for a timed wait ({bound})",
                names.join(", ")
            ),
        );
        let began = std::time::Instant::now();
        let errors: Vec<Error> = std::thread::scope(|s| {
            let handles: Vec<_> = booting
                .iter()
                .map(|m| s.spawn(move || m.settle()))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(r) => r.err(),
                    Err(_) => Some(Error::Script("the boot settle panicked".into())),
                })
                .collect()
        });
        let reason = format!(
            "a timed wait on {waiter} expires no earlier than its full length after they booted"
        );
        logger.event(Event::Settle {
            machines: names.iter().map(|n| n.to_string()).collect(),
            reason,
            seconds: began.elapsed().as_secs_f64(),
            ok: errors.is_empty(),
        });
        match errors.into_iter().next() {
            None => {
                span.finish();
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}
