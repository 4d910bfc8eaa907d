//! No QEMU outlives its test: SIGINT/SIGTERM/SIGHUP handlers that kill every live QEMU process
//! group (the qemu crate's list) before the process dies.
//!
//! The qemu crate already kills QEMU on drop and with `PR_SET_PDEATHSIG`; this covers the cases
//! where destructors do not run (Ctrl-C, `kill <pid>` of the test binary). The handler only
//! calls async-signal-safe functions (`kill`, `sigaction`, `raise`): it SIGKILLs every registered
//! process group, restores the default disposition and re-raises the signal, so the process still
//! dies with the usual status. Run directories are removed by a small thread woken through a pipe
//! before the signal is re-raised, when it gets the chance.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static PIPE_W: AtomicI32 = AtomicI32::new(-1);
static RUN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A run directory to remove if the process is killed by a signal.
pub(crate) fn register_dir(dir: PathBuf) {
    install();
    RUN_DIRS.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
}

/// Forgets a run directory (removed or kept on purpose).
pub(crate) fn unregister_dir(dir: &std::path::Path) {
    RUN_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|d| d != dir);
}

/// The QEMU process groups currently alive (listed by the qemu crate from spawn until just
/// before it reaps the process, so a reused pid is never killed).
pub fn registered() -> Vec<u32> {
    machinist_qemu::live_process_groups()
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: SIGKILLs every live QEMU process group.
    machinist_qemu::kill_live_process_groups();
    let w = PIPE_W.load(Ordering::Acquire);
    if w >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the cleanup thread re-raises the signal.
        let n = unsafe { libc::write(w, &b as *const u8 as *const libc::c_void, 1) };
        if n == 1 {
            return;
        }
    }
    reraise(sig);
}

fn reraise(sig: libc::c_int) {
    // SAFETY: resetting to the default disposition and re-raising is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the signal handlers (once).
pub(crate) fn install() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: plain pipe2(2) into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
        let r = fds[0];
        PIPE_W.store(fds[1], Ordering::Release);
        let _ = std::thread::Builder::new()
            .name("machinist-signals".into())
            .spawn(move || {
                let mut b = 0u8;
                // SAFETY: reading one byte from our own pipe.
                let n = unsafe { libc::read(r, &mut b as *mut u8 as *mut libc::c_void, 1) };
                if n == 1 {
                    for d in RUN_DIRS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        let _ = std::fs::remove_dir_all(d);
                    }
                    reraise(b as libc::c_int);
                }
            });
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls async-signal-safe functions. Only if the
        // signal has the default disposition (respect a host program's own handler/ignore).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}
