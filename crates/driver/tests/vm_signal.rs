//! A killed test process leaves nothing running: SIGTERM kills its QEMU and removes its run
//! directory at once; after SIGKILL (nothing can run in the process) QEMU dies with its parent and
//! the next run removes the run directory. The process killed is the helper binary
//! `machinist-driver-test-killed` (`tests/helpers/killed_test.rs`), which boots an ad-hoc machine
//! made with `create_machine` and then waits.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the helper, waits until its machine answers; returns it with the QEMU pid and the run
/// directory.
fn start_killed_test(dir: &Path) -> (Reap, u32, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let info = dir.join("info");
    let child = Command::new(env!("CARGO_BIN_EXE_machinist-driver-test-killed"))
        .arg(&info)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Reap(child);
    let start = Instant::now();
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&info) {
            if t.ends_with('\n') {
                break t;
            }
        }
        if let Ok(Some(st)) = guard.0.try_wait() {
            panic!("the helper test process exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the helper never booted its machine"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (pid, run_dir) = text.trim_end().split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    assert!(common::alive(pid));
    (guard, pid, PathBuf::from(run_dir))
}

/// Whatever happens, the helper does not outlive this test.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let t = Instant::now();
    while common::alive(pid) && t.elapsed() < within {
        std::thread::sleep(Duration::from_millis(50));
    }
    !common::alive(pid)
}

#[test]
fn vm_sigterm_and_sigkill_leave_nothing() {
    let _lock = common::vm_lock();
    let dir = tempfile::tempdir().unwrap();

    // SIGTERM: the handler kills QEMU and removes the run directory before the process dies.
    let (mut guard, pid, run_dir) = start_killed_test(&dir.path().join("term"));
    signal(&guard.0, libc::SIGTERM);
    assert!(!guard.0.wait().unwrap().success());
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "QEMU {pid} outlived the SIGTERM'd test process"
    );
    assert!(
        !run_dir.exists(),
        "run directory {} left behind",
        run_dir.display()
    );

    // SIGKILL: QEMU dies with its parent (parent-death signal); the run directory stays until
    // the next run sweeps it, since its owner is gone.
    let (mut guard, pid, run_dir) = start_killed_test(&dir.path().join("kill"));
    signal(&guard.0, libc::SIGKILL);
    let _ = guard.0.wait();
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "QEMU {pid} outlived the SIGKILLed test process"
    );
    assert!(run_dir.exists(), "nothing can remove it during a SIGKILL");
    let base = run_dir.parent().unwrap();
    let removed = machinist::stale::remove_stale_run_dirs(base);
    assert!(removed.contains(&run_dir), "{removed:?}");
    assert!(!run_dir.exists());
}
