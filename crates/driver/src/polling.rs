//! Polling conditions: invariants checked while a block of the script runs.
//!
//! Unlike NixOS (which checks only at the start of each command), a condition is checked
//!
//! * before each command on any machine (when it is overdue), and
//! * on a timer, from a poller thread, every `interval`, so that it breaks the test even during a
//!   long guest command (a 60 s `sleep`, an OCR wait). Commands that a condition runs go through
//!   each machine's **control channel** (the second backdoor console), so they work while the main
//!   shell is busy.
//!
//! When a check fails, every command in flight is interrupted (the guest command is cancelled
//! through the control channel) and fails with [`Error::PollingCondition`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::timeouts::Pace;

/// The outcome of a check: implemented for `bool` and for `Result<T, E: Display>`.
pub trait CheckOutcome {
    /// `Ok(())` if the check passed, else a description of why not.
    fn into_outcome(self) -> std::result::Result<(), Option<String>>;
}

impl CheckOutcome for bool {
    fn into_outcome(self) -> std::result::Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T, E: std::fmt::Display> CheckOutcome for std::result::Result<T, E> {
    fn into_outcome(self) -> std::result::Result<(), Option<String>> {
        self.map(|_| ()).map_err(|e| Some(e.to_string()))
    }
}

type CheckFn = dyn Fn() -> std::result::Result<(), Option<String>> + Send + Sync;

thread_local! {
    /// Set while this thread runs a condition's check: its commands use the control channel and
    /// do not trigger condition checks themselves.
    static IN_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while the current thread is running a polling condition's check.
pub(crate) fn in_check() -> bool {
    IN_CHECK.with(|c| c.get())
}

/// An invariant (create with [`TestRun::polling_condition`](crate::TestRun::polling_condition),
/// activate with [`TestRun::with_polling`](crate::TestRun::with_polling)).
#[derive(Clone)]
pub struct PollingCondition {
    pub(crate) inner: Arc<CondInner>,
}

impl std::fmt::Debug for PollingCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollingCondition")
            .field("description", &self.inner.description)
            .field("interval", &self.inner.interval)
            .finish()
    }
}

pub(crate) struct CondInner {
    pub(crate) description: String,
    pub(crate) interval: Duration,
    check: Box<CheckFn>,
    last_called: Mutex<Option<Instant>>,
    running: AtomicBool,
}

impl PollingCondition {
    pub(crate) fn new<F, R>(description: &str, interval: Duration, check: F) -> Self
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: CheckOutcome,
    {
        PollingCondition {
            inner: Arc::new(CondInner {
                description: description.to_string(),
                interval,
                check: Box::new(move || check().into_outcome()),
                last_called: Mutex::new(None),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// The description used in logs and errors.
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// The interval between timer checks.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// Runs the check now if it is overdue (or `force`); `Ok` when it passed or was skipped.
    /// A panic inside the check counts as a failure.
    pub fn check(&self, force: bool) -> Result<()> {
        self.inner.check(force)
    }
}

impl CondInner {
    pub(crate) fn overdue(&self, now: Instant) -> bool {
        let last = self.last_called.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            None => true,
            Some(t) => t + self.interval <= now,
        }
    }

    pub(crate) fn check(&self, force: bool) -> Result<()> {
        if in_check() {
            return Ok(());
        }
        if !force && !self.overdue(Instant::now()) {
            return Ok(());
        }
        if self.running.swap(true, Ordering::AcqRel) {
            // Another thread is checking it right now.
            return Ok(());
        }
        IN_CHECK.with(|c| c.set(true));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.check)()));
        IN_CHECK.with(|c| c.set(false));
        *self.last_called.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.running.store(false, Ordering::Release);
        let outcome = match r {
            Ok(o) => o,
            Err(panic) => Err(Some(crate::error::panic_message(&panic))),
        };
        outcome.map_err(|detail| Error::PollingCondition {
            description: self.description.clone(),
            detail,
        })
    }
}

/// The active conditions of a run and the latched failure.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) active: Mutex<Vec<Arc<CondInner>>>,
    failure: Mutex<Option<(String, Option<String>)>>,
    /// Signalled when a condition fails (in-flight commands watch it).
    pub(crate) failed_tx: Option<tokio::sync::watch::Sender<u64>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        let (tx, _) = tokio::sync::watch::channel(0);
        Registry {
            failed_tx: Some(tx),
            ..Default::default()
        }
    }

    pub(crate) fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.failed_tx.as_ref().map(|t| t.subscribe())
    }

    pub(crate) fn push(&self, c: Arc<CondInner>) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    pub(crate) fn pop(&self, c: &Arc<CondInner>) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = a.iter().rposition(|x| Arc::ptr_eq(x, c)) {
            a.remove(pos);
        }
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.as_ref().is_some_and(|(d, _)| *d == c.description) {
            *f = None;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn snapshot(&self) -> Vec<Arc<CondInner>> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latched failure, if a timer check failed.
    pub(crate) fn latched(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|(description, detail)| Error::PollingCondition {
                description,
                detail,
            })
    }

    fn latch(&self, e: &Error) {
        if let Error::PollingCondition {
            description,
            detail,
        } = e
        {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((description.clone(), detail.clone()));
            if let Some(tx) = &self.failed_tx {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    /// Checks every overdue condition on the calling thread (before a command).
    pub(crate) fn check_due(&self) -> Result<()> {
        if in_check() {
            return Ok(());
        }
        if let Some(e) = self.latched() {
            return Err(e);
        }
        for c in self.snapshot() {
            if let Err(e) = c.check(false) {
                self.latch(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// One timer tick: checks overdue conditions; returns how long to sleep before the next tick.
    pub(crate) fn tick(&self) -> Duration {
        let conds = self.snapshot();
        if self.latched().is_none() {
            for c in &conds {
                if let Err(e) = c.check(false) {
                    self.latch(&e);
                    break;
                }
            }
        }
        let now = Instant::now();
        conds
            .iter()
            .map(|c| {
                let last = *c.last_called.lock().unwrap_or_else(|p| p.into_inner());
                last.map(|t| (t + c.interval).saturating_duration_since(now))
                    .unwrap_or(Duration::ZERO)
            })
            .min()
            .unwrap_or(Pace::PollerIdle.get())
            .clamp(Pace::PollerMin.get(), Pace::PollerMax.get())
    }
}
