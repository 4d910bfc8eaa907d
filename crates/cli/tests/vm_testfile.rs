//! A test file end to end: `machinist new` writes one into a temporary directory and the built
//! binary runs it (one real QEMU machine, under the host VM lock).

use std::process::Command;
use std::time::Instant;

#[test]
fn vm_new_test_file_runs_and_passes() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_machinist");
    let o = Command::new(exe)
        .args(["new", "smoke"])
        .current_dir(tmp.path())
        .output()
        .expect("run machinist new");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let t0 = Instant::now();
    let o = Command::new(exe)
        .args(["run", "smoke/test.toml", "--output"])
        .arg(tmp.path().join("out"))
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run machinist run");
    let log = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "machinist run smoke/test.toml: exit {:?} in {:.1} s",
        o.status.code(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(o.status.code(), Some(0), "the new test failed:\n{log}");
    // The script really ran on the machine.
    assert!(log.contains("echo hello"), "{log}");
}

/// Two test files as a suite, both at once (`--jobs 2`): each boots its machine and passes, the
/// suite's JUnit report holds both.
#[test]
fn vm_suite_runs_two_test_files_at_once() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_machinist");
    for name in ["one", "two"] {
        let o = Command::new(exe)
            .args(["new", &format!("suite/{name}")])
            .current_dir(tmp.path())
            .output()
            .expect("run machinist new");
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    }
    let o = Command::new(exe)
        .args([
            "run",
            "suite",
            "--jobs",
            "2",
            "--output",
            "out",
            "--junit",
            "suite.xml",
        ])
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run the suite");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("2 of 2 passed"), "{out}");
    let xml = std::fs::read_to_string(tmp.path().join("suite.xml")).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
}
