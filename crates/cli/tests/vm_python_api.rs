//! The whole Python API on real machines: `scripts/machine_api.py` calls every public `Machine`
//! method and every test-level function (`start_all`, `join_all`, `test_script`, `log`,
//! `serial_stdout_on/off`, `subtest`, `retry`, `polling_condition`) with a check of each result,
//! through `machinist run` (in-process, with a test declared here: `alpha` with a user-mode NIC,
//! `beta`, both on VLAN 1). Methods a Debian guest cannot serve (X11, `switch_root`) must raise
//! `NotSupportedError` at once. A cheap test without VMs keeps the script complete: it fails
//! when `Machine` or the script namespace gains a name the script never uses.

use std::collections::BTreeSet;
use std::time::Instant;

use machinist::{NodeConfig, Test};
use machinist_cli::python::machine::PyMachine;
use machinist_cli::python::{FUNCTIONS, PRELUDE_SYMBOLS};
use machinist_cli::BundledTest;
use pyo3::prelude::*;

/// The script, as the VM test runs it.
const SCRIPT: &str = include_str!("scripts/machine_api.py");

/// What `test_script()` runs (the test's own script): it sets `INNER` for the outer script.
const INNER_SCRIPT: &str = "INNER = beta.succeed('echo inner-ran')\n";

/// The public names of the Python `Machine` class.
fn machine_names(py: Python<'_>) -> BTreeSet<String> {
    machinist_cli::python::init(py).expect("init the machinist modules");
    let names: Vec<String> = py
        .import("builtins")
        .and_then(|b| b.call_method1("dir", (py.get_type::<PyMachine>(),)))
        .and_then(|d| d.extract())
        .expect("dir(Machine)");
    names.into_iter().filter(|n| !n.starts_with('_')).collect()
}

/// Without a VM: every public `Machine` method, every test-level function and exception class
/// a script sees, and the polling condition's methods are used by the script (as `.name` for
/// methods, as a bare identifier for functions), so the VM test covers the whole API.
#[test]
fn python_api_script_covers_every_method() {
    let methods = Python::attach(machine_names);
    assert!(
        methods.len() >= 50 && methods.contains("get_tty_text") && methods.contains("switch_root"),
        "dir(Machine) looks wrong: {methods:?}"
    );
    let word = |name: &str, prefix: &str| {
        regex::Regex::new(&format!(
            r"{}{}\b",
            regex::escape(prefix),
            regex::escape(name)
        ))
        .unwrap()
        .is_match(SCRIPT)
    };
    let mut missing: Vec<String> = methods
        .iter()
        .filter(|m| !word(m, "."))
        .map(|m| format!("Machine.{m}"))
        .collect();
    for f in FUNCTIONS.iter().chain(PRELUDE_SYMBOLS) {
        if !word(f, "") {
            missing.push((*f).to_string());
        }
    }
    for m in ["check", "wait"] {
        if !word(m, ".") {
            missing.push(format!("PollingCondition.{m}"));
        }
    }
    assert!(
        missing.is_empty(),
        "scripts/machine_api.py never uses: {}; call each with a check of its result",
        missing.join(", ")
    );
}

#[test]
fn vm_python_api_every_method_on_two_machines() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let out = tempfile::tempdir().expect("output dir");
    let script = scratch.path().join("machine_api.py");
    std::fs::write(
        &script,
        format!(
            "SCRATCH = {:?}\n{SCRIPT}",
            scratch.path().display().to_string()
        ),
    )
    .unwrap();
    let test = BundledTest::new("python-api", "every Python API method", |_args| {
        Ok(Test::new("python-api")
            .node(
                "alpha",
                NodeConfig::new().user_net(true).open_tcp_port(8123),
            )
            .node("beta", NodeConfig::new()))
    })
    .python_script("inner.py", INNER_SCRIPT);
    let t0 = Instant::now();
    let argv = [
        "machinist",
        "run",
        "python-api",
        "--script",
        script.to_str().unwrap(),
        "--output",
        out.path().to_str().unwrap(),
    ];
    let code = machinist_cli::run_cli(argv, &[test]);
    eprintln!(
        "vm_python_api: exit {code} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(out.path().join("log.jsonl")).unwrap_or_default();
    assert_eq!(code, 0, "the API script failed; log.jsonl:\n{log}");
    // log() and Machine.log() reach the run's log; each subtest is a JUnit test case.
    for line in ["api-machine-log-line", "api-test-log-line"] {
        assert!(log.contains(line), "{line} not in log.jsonl");
    }
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    for case in [
        "start, start_all, name, booted, is_up",
        "not supported here",
        "power: reboot, crash, shutdown",
    ] {
        assert!(junit.contains(case), "no test case {case:?} in junit.xml");
    }
    assert!(!junit.contains("<failure"), "a subtest failed:\n{junit}");
}
