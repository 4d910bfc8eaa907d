//! SIGTERM to a test process kills its QEMU (and removes its run directory). The child process is
//! this same test binary running the ignored test `sigterm_child`, which boots an ad-hoc machine
//! made with `create_machine` and then waits to be killed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use machinist::{NodeConfig, Test};

const CHILD_ENV: &str = "MACHINIST_DRIVER_SIGTERM_CHILD";

#[test]
#[ignore = "run by vm_sigterm_kills_qemu in a child process"]
fn sigterm_child() {
    let Some(info) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let info = PathBuf::from(info);
    Test::new("vm-sigterm-child")
        .node("base", NodeConfig::new())
        .output_dir(info.parent().unwrap().join("out"))
        .serial_stdout(false)
        .script(|t| {
            let m = t.create_machine("adhoc", NodeConfig::new())?;
            assert_eq!(t.get_machine("adhoc")?.name(), "adhoc");
            m.succeed("true")?;
            // The ad-hoc machine is numbered after the declared ones.
            assert_eq!(m.succeed("hostname")?, "adhoc\n");
            std::fs::write(
                &info,
                format!("{} {}", m.pid().unwrap(), t.run_dir().display()),
            )
            .unwrap();
            std::thread::sleep(Duration::from_secs(120));
            Ok(())
        })
        .run()
        .unwrap();
}

#[test]
fn vm_sigterm_kills_qemu() {
    let _lock = common::vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let info = dir.path().join("info");
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigterm_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &info)
        .spawn()
        .unwrap();
    // Whatever happens, the child does not outlive this test.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Reap(child);
    let child = &mut guard.0;
    let start = Instant::now();
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&info) {
            if !t.is_empty() {
                break t;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("child exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "child never booted its machine"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (pid, run_dir) = text.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    assert!(common::alive(pid));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    let t = Instant::now();
    while common::alive(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !common::alive(pid),
        "QEMU {pid} outlived the SIGTERM'd test process"
    );
    assert!(
        !PathBuf::from(run_dir).exists(),
        "run directory {run_dir} left behind"
    );
}
