//! What a test run shares with its machines: the async runtime, the log, the timeout policy,
//! the abort and interrupt signals, the polling conditions and the boot board.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::log::Logger;
use crate::polling::Registry;
use crate::timeouts::Timeouts;

/// Why every in-flight wait must stop now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Abort {
    /// The global timeout expired.
    GlobalTimeout(Duration),
}

pub(crate) struct Ctx {
    pub(crate) logger: Logger,
    pub(crate) handle: tokio::runtime::Handle,
    /// Every timeout of the run.
    pub(crate) timeouts: Timeouts,
    pub(crate) run_dir: PathBuf,
    pub(crate) out_dir: PathBuf,
    pub(crate) abort_tx: watch::Sender<Option<Abort>>,
    /// Bumped by `TestRun::interrupt` (Ctrl-C): every wait in flight stops with
    /// `Error::Interrupted`; later calls are unaffected.
    pub(crate) interrupt_tx: watch::Sender<u64>,
    pub(crate) polling: Registry,
    pub(crate) keep_state: bool,
    /// Restore machines from snapshots (warm start) where possible.
    pub(crate) warm_start: bool,
    /// The accelerator every machine of the run uses (probed once per host and cached).
    pub(crate) accel: machinist_qemu::Accel,
    /// Every machine of the run, for the boot settle of timed waits.
    pub(crate) boots: crate::settle::BootBoard,
}

impl Ctx {
    /// Scales a timeout given by the script.
    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        self.timeouts.scaled(d)
    }

    pub(crate) fn aborted(&self) -> Option<Abort> {
        *self.abort_tx.borrow()
    }

    pub(crate) fn abort_error(a: Abort) -> Error {
        match a {
            Abort::GlobalTimeout(timeout) => Error::GlobalTimeout { timeout },
        }
    }

    /// Fails fast if the run was aborted or a polling condition failed; else runs overdue
    /// conditions (called before each command).
    pub(crate) fn before_command(&self) -> Result<()> {
        if let Some(a) = self.aborted() {
            return Err(Self::abort_error(a));
        }
        self.polling.check_due()
    }

    /// Resolves when the run is aborted or (if `watch_polling`) a polling condition fails.
    pub(crate) fn interrupted(&self, watch_polling: bool) -> impl Future<Output = Error> + 'static {
        let mut abort = self.abort_tx.subscribe();
        let mut interrupt = self.interrupt_tx.subscribe();
        let poll = if watch_polling && !crate::polling::in_check() {
            self.polling.subscribe()
        } else {
            None
        };
        async move {
            let abort_fut = async {
                loop {
                    if let Some(a) = *abort.borrow_and_update() {
                        return Ctx::abort_error(a);
                    }
                    if abort.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let poll_fut = async {
                match poll {
                    Some(mut rx) => {
                        rx.borrow_and_update();
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        Error::PollingCondition {
                            description: String::new(),
                            detail: None,
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let interrupt_fut = async {
                if interrupt.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                Error::Interrupted
            };
            tokio::select! {
                e = abort_fut => e,
                e = poll_fut => e,
                e = interrupt_fut => e,
            }
        }
    }

    /// Replaces the placeholder polling error from [`Ctx::interrupted`] with the latched one.
    pub(crate) fn resolve_interrupt(&self, e: Error) -> Error {
        match e {
            Error::PollingCondition {
                ref description, ..
            } if description.is_empty() => self.polling.latched().unwrap_or(e),
            e => e,
        }
    }

    /// Sleeps on the host, interrupted by an abort or a failing polling condition.
    pub(crate) fn sleep(&self, d: Duration) -> Result<()> {
        let intr = self.interrupted(true);
        let r = self.handle.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(d) => Ok(()),
                e = intr => Err(e),
            }
        });
        r.map_err(|e| self.resolve_interrupt(e))
    }

    /// Runs `fut` to completion on the run's runtime from a blocking caller, interrupted by an
    /// abort (and a failing polling condition if `watch_polling`).
    pub(crate) fn block_on<T>(
        &self,
        watch_polling: bool,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let intr = self.interrupted(watch_polling);
        let r = self.handle.block_on(async {
            tokio::select! {
                r = fut => r,
                e = intr => Err(e),
            }
        });
        r.map_err(|e| self.resolve_interrupt(e))
    }
}

/// A deadline that also knows its (scaled) timeout, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) start: Instant,
    pub(crate) timeout: Duration,
}

impl Deadline {
    pub(crate) fn new(timeout: Duration) -> Self {
        Deadline {
            start: Instant::now(),
            timeout,
        }
    }
    pub(crate) fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.start.elapsed())
    }
    pub(crate) fn expired(&self) -> bool {
        self.start.elapsed() >= self.timeout
    }
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

pub(crate) type SharedCtx = Arc<Ctx>;
