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
# `t`: unittest's assertions, failing as the driver's own checks do.
t.assertEqual(1 + 1, 2)
t.assertIn("a", "abc")
try:
    t.assertEqual(1, 2)
    raise SystemExit("t.assertEqual did not fail")
except RequestedAssertionFailed as e:
    assert "1 != 2" in str(e), e
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

# Bad numbers are ValueErrors (they used to panic when converted to a Duration).
for bad in (1e20, float("nan"), float("inf"), -1):
    for call in (
        lambda: retry(attempt, timeout_seconds=bad),
        lambda: polling_condition(seconds_interval=bad)(lambda: True),
    ):
        try:
            call()
        except ValueError as e:
            assert "None" in str(e), e
        else:
            raise SystemExit(f"no ValueError for {bad}")

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

/// Every method of `Machine` takes the NixOS driver's parameters, in its order, with its
/// defaults (nixos-test-driver `machine/__init__.py`), as Python's `inspect` sees them. `None`
/// for a wait's timeout means the NixOS default (900 s; 600 s for QMP events).
const NIXOS_SIGNATURES: &[&str] = &[
    "block()",
    "block_at_switch()",
    "console_interact()",
    "copy_from_host(source, target)",
    "copy_from_host_via_shell(source, target)",
    "copy_from_machine(source, target_dir='')",
    "copy_from_vm(source, target_dir='')",
    "crash()",
    "dump_tty_contents(tty)",
    "execute(command, check_return=True, check_output=True, timeout=900)",
    "fail(*commands, timeout=None)",
    "forward_port(host_port=8080, guest_port=80)",
    "get_console_log()",
    "get_screen_text()",
    "get_screen_text_variants()",
    "get_tty_text(tty)",
    "get_unit_info(unit, user=None)",
    "get_unit_property(unit, property, user=None)",
    "get_window_names()",
    "is_up()",
    "log(msg)",
    "qmp_command(command, arguments=None)",
    "reboot()",
    "require_unit_state(unit, require_state='active')",
    "screenshot(filename)",
    "send_chars(chars, delay=0.01)",
    "send_console(chars)",
    "send_key(key, delay=0.01, log=True)",
    "send_monitor_command(command)",
    "shell_interact(address=None)",
    "shutdown()",
    "sleep(secs)",
    "start(allow_reboot=False)",
    "start_job(job, user=None)",
    "stop_job(job, user=None)",
    "succeed(*commands, timeout=None)",
    "switch_root()",
    "systemctl(q, user=None)",
    "unblock()",
    "unblock_at_switch()",
    "wait_for_closed_port(port, addr='localhost', timeout=None)",
    "wait_for_console_text(regex, timeout=None)",
    "wait_for_file(filename, timeout=None)",
    "wait_for_open_port(port, addr='localhost', timeout=None)",
    "wait_for_open_unix_socket(addr, is_datagram=False, timeout=None)",
    "wait_for_qmp_event(event_filter, timeout=None)",
    "wait_for_shutdown()",
    "wait_for_text(regex, timeout=None)",
    "wait_for_unit(unit, user=None, timeout=None)",
    "wait_for_window(regexp, timeout=None)",
    "wait_for_x(timeout=None)",
    "wait_until_fails(command, timeout=None)",
    "wait_until_succeeds(command, timeout=None)",
    "wait_until_tty_matches(tty, regexp, timeout=None)",
];

#[test]
fn machine_signatures_match_the_nixos_driver() {
    Python::attach(|py| {
        init(py).unwrap();
        let cls = py.get_type::<machine::PyMachine>();
        let check = c"
import inspect
def signatures(cls):
    out = []
    for n in dir(cls):
        attr = getattr(cls, n)
        if n.startswith('_') or not callable(attr):
            continue
        params = list(inspect.signature(attr).parameters.values())[1:]
        out.append(n + '(' + ', '.join(str(p) for p in params) + ')')
    return out
";
        let ns = pyo3::types::PyDict::new(py);
        py.run(check, Some(&ns), None).unwrap();
        let got: Vec<String> = ns
            .get_item("signatures")
            .unwrap()
            .unwrap()
            .call1((cls.clone(),))
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(got, NIXOS_SIGNATURES);
        for getter in ["name", "booted"] {
            assert!(cls.hasattr(getter).unwrap(), "{getter}");
        }
    });
}

/// `Error::NotSupported` becomes `NotSupportedError`, a `MachineError`, with the driver's message.
#[test]
fn exception_classes_form_the_documented_hierarchy() {
    Python::attach(|py| {
        let m = init(py).unwrap();
        let code = c"
import machinist as m
assert issubclass(m.NotSupportedError, m.MachineError)
assert issubclass(m.MachineError, m.MachinistError)
assert issubclass(m.MachinistError, Exception)
assert issubclass(m.RequestedAssertionFailed, AssertionError)
";
        py.run(code, None, None).unwrap();
        let e = ScriptError {
            kind: ErrorKind::NotSupported,
            message: "m: wait_for_x is not supported here: no X".into(),
        }
        .to_py(py);
        assert!(e.is_instance(py, &m.getattr("NotSupportedError").unwrap()));
        assert_eq!(
            e.value(py).str().unwrap().to_string(),
            "m: wait_for_x is not supported here: no X"
        );
        let err = machine::script_error(machinist::Error::NotSupported {
            machine: "m".into(),
            what: "switch_root".into(),
            why: "no initrd backdoor".into(),
        });
        assert_eq!(err.kind, ErrorKind::NotSupported);
    });
}
