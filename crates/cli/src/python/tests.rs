//! The binding with a recording session (the driver adapter is tested with real VMs).

use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn push(&self, s: impl Into<String>) {
        self.calls.lock().unwrap().push(s.into());
    }
}

impl Session for Recorder {
    fn start_all(&self) -> Result<(), ScriptError> {
        self.push("start_all");
        Ok(())
    }
    fn join_all(&self) -> Result<(), ScriptError> {
        Err(ScriptError::machine(
            "server: QEMU exited unexpectedly (status 1)",
        ))
    }
    fn log(&self, message: &str) {
        self.push(format!("log {message}"));
    }
    fn serial_stdout(&self, on: bool) {
        self.push(format!("serial {on}"));
    }
    fn subtest_begin(&self, name: &str) -> u64 {
        self.push(format!("subtest_begin {name}"));
        7
    }
    fn subtest_end(&self, token: u64, failure: Option<String>) {
        self.push(format!("subtest_end {token} {failure:?}"));
    }
    fn retry(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(bool) -> Result<bool, ScriptError>,
    ) -> Result<(), ScriptError> {
        self.push(format!("retry {timeout:?}"));
        for _ in 0..3 {
            if f(false)? {
                return Ok(());
            }
        }
        if f(true)? {
            Ok(())
        } else {
            Err(ScriptError {
                kind: ErrorKind::Assertion,
                message: "action timed out".into(),
            })
        }
    }
    fn polling_condition(
        &self,
        description: &str,
        interval: Duration,
        check: CheckFn,
    ) -> CondHandle {
        self.push(format!("cond {description} {interval:?}"));
        Arc::new(Mutex::new(check))
    }
    fn polling_enter(&self, _cond: &CondHandle) -> u64 {
        self.push("enter");
        1
    }
    fn polling_exit(&self, token: u64) -> Result<(), ScriptError> {
        self.push(format!("exit {token}"));
        Ok(())
    }
    fn polling_check(&self, cond: &CondHandle, _force: bool) -> Result<(), ScriptError> {
        let check = cond
            .downcast_ref::<Mutex<CheckFn>>()
            .unwrap()
            .lock()
            .unwrap();
        check().map_err(|d| ScriptError {
            kind: ErrorKind::Polling,
            message: format!("{d:?}"),
        })
    }
    fn polling_wait(
        &self,
        _cond: &CondHandle,
        _timeout: Option<Duration>,
    ) -> Result<(), ScriptError> {
        Ok(())
    }
    fn interrupt(&self) {}
    fn test_script(&self) -> Result<(), ScriptError> {
        Ok(())
    }
}

/// One test only: the session is process-global.
#[test]
fn script_sees_nixos_symbols_nodes_and_exceptions() {
    let rec = Arc::new(Recorder::default());
    set_session(rec.clone());
    Python::attach(|py| {
        let ns = Namespace::new(py).unwrap();
        ns.add_node(
            "server",
            &serde_json::json!({"memory_mib": 1024, "options": {"tutorial": {"port": 3000, "user": "authenticator"}}}),
        )
        .unwrap();
        let script = r#"
import json, datetime
start_all()
serial_stdout_off()
log("hello")
assert nodes.server.config.tutorial.port == 3000
assert nodes["server"].config["tutorial"]["user"] == "authenticator"
assert nodes.server.config.memory_mib == 1024
try:
    nodes.server.config.nosuch
    raise SystemExit("no AttributeError")
except AttributeError as e:
    assert "memory_mib" in str(e) and "tutorial" in str(e), e

with subtest("the API answers"):
    pass
try:
    with subtest("fails"):
        assert 1 == 2, "one is not two"
except AssertionError:
    pass

calls = []
def attempt(last):
    calls.append(last)
    return len(calls) == 2
retry(attempt, timeout_seconds=datetime.timedelta(seconds=5))
assert calls == [False, False], calls

@polling_condition(seconds_interval=0.5)
def server_up():
    "the server is up"
    return True
with server_up:
    pass
assert server_up.check()

@polling_condition
def down():
    return False
assert not down.check()

try:
    join_all()
except MachineError as e:
    assert "QEMU exited" in str(e)
    assert isinstance(e, MachinistError)
else:
    raise SystemExit("no MachineError")
"#;
        if let Err(f) = run_script(py, &ns, script, "script.py") {
            panic!("{}", f.report);
        }
        let failing = "x = 1\nassert x == 2, 'x should be 2'\n";
        let err = run_script(py, &ns, failing, "bad.py").unwrap_err();
        assert!(err.report.contains("bad.py\", line 2"), "{}", err.report);
        assert!(
            err.report.contains("AssertionError: x should be 2"),
            "{}",
            err.report
        );
        assert!(!err.interrupted);
        insta::assert_snapshot!("script_failure_report", err.report);
    });
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "start_all",
            "serial false",
            "log hello",
            "subtest_begin the API answers",
            "subtest_end 7 None",
            "subtest_begin fails",
            "subtest_end 7 Some(\"AssertionError: one is not two\")",
            "retry Some(5s)",
            "cond the server is up 500ms",
            "enter",
            "exit 1",
            "cond down 2s",
        ]
    );
    clear_session();
}
