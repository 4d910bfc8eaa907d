//! The guide's own Python test scripts run unchanged through `machinist run postgrest --script`:
//! `script.py` (its first version, verbatim) and `script-final.py` (the port read from the server
//! node as `nodes.server.config.tutorial.port`, 7-second budget). Plus a script using the NixOS
//! test-script features (`subtest`, `polling_condition`, keyword arguments, `assert`) on `hello`.
//! Each boots real QEMU machines under the host VM lock.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use machinist_tests::postgrest::guide_scripts;

/// Runs `machinist run <test> --script <script>`, asserts it passes, and returns its output
/// directory.
fn run_script(test: &str, script: &Path) -> tempfile::TempDir {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let out = tempfile::tempdir().expect("temp dir");
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_machinist"))
        .args(["run", test, "--script"])
        .arg(script)
        .arg("--output")
        .arg(out.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run the machinist binary");
    let log = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "{} on {test}: exit {:?} in {:.1} s",
        script.display(),
        o.status.code(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{} failed:\n{log}",
        script.display()
    );
    out
}

#[test]
fn vm_guide_script_py_runs_verbatim() {
    let [first, _] = guide_scripts();
    let text = std::fs::read_to_string(&first).unwrap();
    assert!(
        text.contains("http://server:3000/todos"),
        "the guide's first version"
    );
    let _ = run_script("postgrest", &first);
}

#[test]
fn vm_guide_script_final_py_reads_the_port_from_the_node() {
    let [_, last] = guide_scripts();
    let text = std::fs::read_to_string(&last).unwrap();
    assert!(
        text.contains("nodes.server.config.tutorial.port"),
        "the guide's final version"
    );
    let _ = run_script("postgrest", &last);
}

#[test]
fn vm_nixos_script_features_on_hello() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("features.py");
    std::fs::write(
        &script,
        r#"import datetime

start_all()

@polling_condition(seconds_interval=1)
def machine_is_up():
    machine.succeed("true")

with subtest("keyword arguments and timedelta timeouts"):
    status, out = machine.execute("echo hi; exit 3", check_return=True, timeout=10)
    assert (status, out) == (3, "hi\n"), (status, out)
    machine.wait_for_unit("multi-user.target", timeout=datetime.timedelta(seconds=60))
    assert machine.succeed("echo a", "echo b") == "a\nb\n"

with subtest("polling_condition guards a block"):
    with machine_is_up:
        machine.succeed("sleep 2")

with subtest("a failing command raises the driver's error"):
    try:
        machine.succeed("false")
    except AssertionError as e:
        assert "command `false` failed" in str(e), str(e)
    else:
        raise AssertionError("succeed('false') did not raise")

assert nodes.machine.config.memory_mib == 1024, nodes.machine.config.memory_mib
"#,
    )
    .unwrap();
    let out = run_script("hello", &script);
    // Each Python subtest is a JUnit test case, as the driver's own subtests are.
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    for case in [
        "keyword arguments and timedelta timeouts",
        "polling_condition guards a block",
        "a failing command raises the driver",
    ] {
        assert!(
            junit.contains(case),
            "no test case {case:?} in junit.xml:\n{junit}"
        );
    }
}
