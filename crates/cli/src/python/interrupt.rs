//! Ctrl-C while a guest command runs: Python's own SIGINT handler writes the signal number to a
//! wakeup fd (`signal.set_wakeup_fd`); a watcher thread reads it and, when a blocking driver call
//! is in flight, calls the registered canceller so the guest command stops at once. The call
//! then returns, and the pending KeyboardInterrupt is raised in Python as usual (at the prompt the
//! REPL prints it and goes on).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;

/// What to do when Ctrl-C arrives during a blocking call.
pub type Canceller = Arc<dyn Fn() + Send + Sync>;

struct Watch {
    /// Blocking driver calls currently in flight.
    in_flight: AtomicUsize,
    /// Keeps the write end alive for Python's handler.
    _write: UnixStream,
}

static WATCH: OnceLock<Arc<Watch>> = OnceLock::new();

/// The canceller, kept apart from [`WATCH`]: a session is usually set before Python (and so the
/// watcher) is initialised.
static CANCEL: Mutex<Option<Canceller>> = Mutex::new(None);

/// Installs Python's default SIGINT handler (KeyboardInterrupt; embedded interpreters start
/// without one) and the wakeup-fd watcher. Must run on the thread that initialised Python.
/// Idempotent.
pub fn install(py: Python<'_>) -> PyResult<()> {
    if WATCH.get().is_some() {
        return Ok(());
    }
    // Only the thread that initialised Python may install signal handlers (in unit tests Python
    // may be used from other threads: Ctrl-C handling is then simply not installed).
    let signal = py.import("signal")?;
    if let Err(e) = signal.call_method1(
        "signal",
        (
            signal.getattr("SIGINT")?,
            signal.getattr("default_int_handler")?,
        ),
    ) {
        if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) {
            return Ok(());
        }
        return Err(e);
    }
    let (read, write) = UnixStream::pair()
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("socketpair for Ctrl-C: {e}")))?;
    write
        .set_nonblocking(true)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    signal.call_method1("set_wakeup_fd", (write.as_raw_fd(),))?;
    let watch = Arc::new(Watch {
        in_flight: AtomicUsize::new(0),
        _write: write,
    });
    let w = watch.clone();
    std::thread::Builder::new()
        .name("machinist-ctrl-c".into())
        .spawn(move || watcher(read, w))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("Ctrl-C watcher thread: {e}")))?;
    let _ = WATCH.set(watch);
    Ok(())
}

fn watcher(mut read: UnixStream, w: Arc<Watch>) {
    let mut buf = [0u8; 64];
    loop {
        match read.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let sigint = buf[..n].contains(&(libc::SIGINT as u8));
                if sigint && w.in_flight.load(Ordering::SeqCst) > 0 {
                    let cancel = CANCEL.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(c) = cancel {
                        c();
                    }
                }
            }
        }
    }
}

/// Sets the function that cancels the running guest command(s) (the driver's interrupt).
pub fn set_canceller(c: Option<Canceller>) {
    *CANCEL.lock().unwrap_or_else(|p| p.into_inner()) = c;
}

/// Runs `f` with the GIL released, marked as a blocking call that Ctrl-C cancels; afterwards a
/// pending Ctrl-C becomes KeyboardInterrupt.
pub fn blocking<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    let w = WATCH.get().cloned();
    if let Some(w) = &w {
        w.in_flight.fetch_add(1, Ordering::SeqCst);
    }
    struct Done(Option<Arc<Watch>>);
    impl Drop for Done {
        fn drop(&mut self) {
            if let Some(w) = &self.0 {
                w.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    let done = Done(w);
    let r = py.detach(f);
    drop(done);
    py.check_signals()?;
    Ok(r)
}
