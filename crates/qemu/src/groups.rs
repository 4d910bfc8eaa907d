//! The process groups of live QEMU processes (and other supervised children, such as container
//! nodes), for fatal-signal handlers.
//!
//! A [`crate::QemuProcess`] registers its process group when it starts, and its reaper thread
//! unregisters it while QEMU is still a zombie, *before* reaping it. So a signal handler that
//! kills every registered group ([`kill_live_process_groups`]) can never hit a reused pid: as long
//! as a group is listed, its leader's pid is reserved. An unregistration also waits for a kill
//! pass that is in progress on another thread (it may have read the group just before).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SLOTS: usize = 256;
static GROUPS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
/// Kill passes in progress (signal handlers running on any thread).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Lists `pgid` as a live group to kill on a fatal signal. Returns false if the table is full
/// (then only the parent-death signal and `Drop` stop that group). A supervisor outside this
/// crate (e.g. of a container node) registers its child's group right after spawning it.
pub fn register(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    for slot in &GROUPS {
        if slot
            .compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return true;
        }
    }
    tracing::warn!(
        pgid,
        "more than {SLOTS} live QEMU processes: process group {pgid} is not killed on a fatal \
         signal (its parent-death signal still applies)"
    );
    false
}

/// Removes `pgid` and waits (at most 1 s) until no kill pass that might have read it is still
/// running. Call before reaping the group leader.
pub fn unregister(pgid: i32) {
    for slot in &GROUPS {
        let _ = slot.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
    // A pass that increments IN_FLIGHT after this point reads the slot after it was cleared.
    let deadline = Instant::now() + Duration::from_secs(1);
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                pgid,
                "a fatal-signal kill pass did not finish within 1 s; reaping anyway"
            );
            return;
        }
        std::thread::yield_now();
    }
}

/// The process groups of QEMU processes started by this process that have not been reaped.
pub fn live_process_groups() -> Vec<u32> {
    GROUPS
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .filter(|&p| p > 0)
        .map(|p| p as u32)
        .collect()
}

/// Sends SIGKILL to every live QEMU process group. Async-signal-safe (atomics and `kill(2)`
/// only): meant for SIGINT/SIGTERM handlers, where destructors will not run. Never signals a
/// group whose leader has been reaped.
pub fn kill_live_process_groups() {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    for slot in &GROUPS {
        let p = slot.load(Ordering::SeqCst);
        if p > 0 {
            // SAFETY: kill(2) is async-signal-safe; `p` is a registered, unreaped group.
            unsafe {
                libc::kill(-p, libc::SIGKILL);
            }
        }
    }
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregister_waits_for_a_kill_pass_in_progress() {
        // A pid no process can have (above pid_max's hard limit of 2^22).
        let fake = (1 << 22) + 12_345;
        assert!(register(fake));
        assert!(live_process_groups().contains(&(fake as u32)));
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            unregister(fake);
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!live_process_groups().contains(&(fake as u32)));
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        let waited = t.join().unwrap();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(1),
            "unregister returned after {waited:?}; it must wait for the pass in progress"
        );
    }
}
