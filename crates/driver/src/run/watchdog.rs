//! The global timeout: a thread that, when the timeout expires, aborts every wait, kills every
//! machine of the run and, as a last resort, ends the process if the script does not return.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ctx::{Abort, Ctx};
use crate::machine::Machine;
use crate::timeouts::Wait;

/// A running watchdog; [`Watchdog::stop`] disarms it.
pub(crate) struct Watchdog {
    stop: Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(
        ctx: Arc<Ctx>,
        timeout: Duration,
        machines: Vec<Arc<Machine>>,
        extra: Arc<Mutex<Vec<Arc<Machine>>>>,
    ) -> Watchdog {
        let (tx, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("machinist-watchdog".into())
            .spawn(move || {
                match rx.recv_timeout(timeout) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                let span = ctx.logger.begin(None, "timeout reached; test terminating...");
                ctx.abort_tx.send_replace(Some(Abort::GlobalTimeout(timeout)));
                let mut all = machines;
                all.extend(extra.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
                for m in &all {
                    if let Some(r) = m.current() {
                        r.instance.start_kill();
                    }
                }
                span.finish();
                drop(all);
                // The script should now fail fast (every wait watches the abort signal).
                let grace = ctx.timeouts.of(Wait::GlobalTimeoutGrace);
                if rx.recv_timeout(grace).is_err() {
                    ctx.logger.error(
                        None,
                        &format!(
                            "the test script did not return within {} seconds after the global timeout; exiting the process",
                            grace.as_secs()
                        ),
                    );
                    ctx.logger.flush();
                    // No destructor runs after exit(): remove the run directory here (every
                    // QEMU in it was killed above), unless it is kept on purpose.
                    if !ctx.keep_state {
                        let _ = std::fs::remove_dir_all(&ctx.run_dir);
                    }
                    std::process::exit(124);
                }
            })
            .ok();
        Watchdog { stop: tx, thread }
    }

    /// Disarms the timeout without joining the thread (it returns at once).
    pub(crate) fn disarm(&self) {
        let _ = self.stop.send(());
    }

    pub(crate) fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
