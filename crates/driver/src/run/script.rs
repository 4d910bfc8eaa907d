//! What a script calls on the run: `start_all`, `join_all`, `subtest`, `retry`, polling
//! conditions, and running the script itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TestRun;
use crate::ctx::{Ctx, Deadline};
use crate::error::{panic_message, BoxError, Error, Result};
use crate::log::Event;
use crate::polling::{CheckOutcome, PollingCondition};
use crate::timeouts::Pace;

/// What a test script returns: any error type converts (`?` works on machinist errors, I/O,
/// serde_json, ...).
pub type ScriptResult = std::result::Result<(), BoxError>;

impl TestRun {
    /// Runs `script`, catching panics; the error (if any) is logged NixOS-style.
    pub fn run_script(&self, script: impl FnOnce(&TestRun) -> ScriptResult) -> Result<()> {
        let span = self.ctx.logger.begin_event(Event::ScriptStarted);
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
        let seconds = span.elapsed().as_secs_f64();
        span.end(Event::ScriptFinished {
            ok: outcome.is_ok(),
            seconds,
        });
        if let Err(e) = &outcome {
            self.ctx.logger.junit_fail_current(&e.to_string());
        }
        outcome
    }

    /// Starts every machine concurrently; returns once every QEMU runs, without waiting for the
    /// guests to boot (the first command on each machine waits for it).
    pub fn start_all(&self) -> Result<()> {
        let span = self.ctx.logger.begin_event(Event::StartAll);
        let r = self.start_each();
        if r.is_ok() {
            span.finish();
        }
        r
    }

    fn start_each(&self) -> Result<()> {
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
        let span = self.ctx.logger.begin_event(Event::SubtestStarted {
            subtest: name.to_string(),
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let error = match &r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(p) => Some(panic_message(p)),
        };
        let seconds = span.elapsed().as_secs_f64();
        span.end(Event::SubtestFinished {
            subtest: name.to_string(),
            ok: error.is_none(),
            seconds,
            error,
        });
        match r {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
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
            let pause = Pace::RetryPause.get().min(deadline.remaining());
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
}

fn poller(ctx: Arc<Ctx>) {
    let started = Instant::now();
    loop {
        if ctx.polling.is_empty() || ctx.aborted().is_some() {
            // Linger briefly so nested with_polling blocks reuse the thread.
            if started.elapsed() > Pace::PollerLinger.get() && ctx.polling.is_empty() {
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
