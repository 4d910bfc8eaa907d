//! No QEMU survives a panicking script, and a global timeout ends a hanging run in time.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use machinist::{Error, NodeConfig, Test};

#[test]
fn vm_panic_and_global_timeout_leave_nothing() {
    let _lock = common::vm_lock();

    // 1. A panic in the middle of the script.
    let out = common::out_dir("vm_cleanup_panic");
    let pid = AtomicU32::new(0);
    let mut run_dir = None;
    let r = Test::new("vm-panic")
        .node("victim", NodeConfig::new())
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let m = t.machine("victim");
            m.succeed("true")?;
            pid.store(m.pid().unwrap(), Ordering::SeqCst);
            run_dir = Some(t.run_dir().to_path_buf());
            panic!("boom in the middle of the script");
        })
        .run();
    let e = r.unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
    let pid = pid.load(Ordering::SeqCst);
    assert!(pid > 0);
    assert!(!common::alive(pid), "QEMU {pid} survived the panic");
    assert!(!run_dir.unwrap().exists(), "run directory left behind");
    assert!(out.join("victim-final.png").exists(), "final screenshot");
    // The machine was still up: its whole journal is saved next to its console log.
    let journal = std::fs::read_to_string(out.join("victim-journal.log")).expect("journal saved");
    assert!(journal.contains("Reached target"), "{journal}");
    assert!(out.join("vlan1.pcap").exists(), "pcap kept on failure");
    assert!(out.join("junit.xml").exists());

    // 2. A command that hangs, under a global timeout of a few seconds (after the boot).
    let out = common::out_dir("vm_cleanup_timeout");
    let pid = AtomicU32::new(0);
    let start = Instant::now();
    let r = Test::new("vm-global-timeout")
        .node("hang", NodeConfig::new())
        .output_dir(&out)
        .global_timeout(Duration::from_secs(25))
        .serial_stdout(false)
        .script(|t| {
            let m = t.machine("hang");
            m.succeed("true")?;
            pid.store(m.pid().unwrap(), Ordering::SeqCst);
            m.succeed("sleep 1000")?;
            Ok(())
        })
        .run();
    let took = start.elapsed();
    let e = r.unwrap_err();
    assert!(matches!(e, Error::GlobalTimeout { .. }), "{e}");
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert!(!common::alive(pid.load(Ordering::SeqCst)));
    eprintln!(
        "METRIC global timeout 25 s ended the run after {:.2} s",
        took.as_secs_f64()
    );
}
