//! The Python scripting layer: CPython embedded with PyO3 over the driver.
//!
//! - [`Session`]: what the test-level functions (`start_all`, `subtest`, `retry`, ...) call; the
//!   driver adapter implements it for a running test.
//! - [`init`]: builds the `_machinist` (Rust) and `machinist` (Python, `prelude.py`) modules and
//!   installs the Ctrl-C handling ([`interrupt`]).
//! - [`Namespace`]: the globals a test script or the REPL sees (machines, `nodes`, functions).
//! - [`run_script`] and [`repl`].

pub mod convert;
pub mod interrupt;
pub mod machine;
mod polling;
pub mod session;

use std::ffi::CString;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The Python side of the layer (module `machinist`).
const PRELUDE: &str = include_str!("prelude.py");

/// What kind of failure a driver error is; decides the Python exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A check failed (command failed / unexpectedly succeeded, wait timed out): Python
    /// `RequestedAssertionFailed` (an `AssertionError`).
    Assertion,
    /// The machine could not do it (QEMU exited, boot timeout, backend error): `MachineError`.
    Machine,
    /// A polling condition failed: `PollingConditionError`.
    Polling,
    /// The operation cannot work on this machine (e.g. `wait_for_x` without an X server):
    /// `NotSupportedError` (a `MachineError`).
    NotSupported,
    /// Ctrl-C cancelled the command: `KeyboardInterrupt`.
    Interrupted,
}

/// A driver error as the binding sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// Which Python exception it becomes.
    pub kind: ErrorKind,
    /// The driver's message (what failed, where, what to do next).
    pub message: String,
}

impl ScriptError {
    /// A `MachineError`.
    pub fn machine(message: impl Into<String>) -> Self {
        ScriptError {
            kind: ErrorKind::Machine,
            message: message.into(),
        }
    }

    /// The Python exception for this error.
    pub fn to_py(&self, py: Python<'_>) -> PyErr {
        let class = match self.kind {
            ErrorKind::Assertion => "RequestedAssertionFailed",
            ErrorKind::Machine => "MachineError",
            ErrorKind::Polling => "PollingConditionError",
            ErrorKind::NotSupported => "NotSupportedError",
            ErrorKind::Interrupted => {
                return pyo3::exceptions::PyKeyboardInterrupt::new_err(self.message.clone())
            }
        };
        match py.import("machinist").and_then(|m| m.getattr(class)) {
            Ok(cls) => PyErr::from_type(
                cls.cast_into().expect("exception class"),
                self.message.clone(),
            ),
            Err(e) => e,
        }
    }
}

/// A polling condition created by the session (opaque to the binding).
pub type CondHandle = Arc<dyn std::any::Any + Send + Sync>;

/// A polling condition's check: `Ok(())` passed, `Err(detail)` failed.
pub type CheckFn = Box<dyn Fn() -> Result<(), Option<String>> + Send + Sync>;

/// The test-level functions of a running test (NixOS names). Implemented over the driver's
/// `TestRun`; every blocking method is called with the GIL released.
pub trait Session: Send + Sync {
    /// `start_all()`.
    fn start_all(&self) -> Result<(), ScriptError>;
    /// `join_all()`.
    fn join_all(&self) -> Result<(), ScriptError>;
    /// `log(message)`.
    fn log(&self, message: &str);
    /// `serial_stdout_on()` / `serial_stdout_off()`.
    fn serial_stdout(&self, on: bool);
    /// Opens a subtest (log block + JUnit case); returns a token for [`Session::subtest_end`].
    fn subtest_begin(&self, name: &str) -> u64;
    /// Closes a subtest, failed with `failure` if given.
    fn subtest_end(&self, token: u64, failure: Option<String>);
    /// `retry(fn, timeout)`: calls `f(last_try)` until it returns true.
    fn retry(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(bool) -> Result<bool, ScriptError>,
    ) -> Result<(), ScriptError>;
    /// Declares a polling condition.
    fn polling_condition(
        &self,
        description: &str,
        interval: Duration,
        check: CheckFn,
    ) -> CondHandle;
    /// Activates a condition (`with cond:`); returns a token for [`Session::polling_exit`].
    fn polling_enter(&self, cond: &CondHandle) -> u64;
    /// Deactivates it; the latched failure, if any.
    fn polling_exit(&self, token: u64) -> Result<(), ScriptError>;
    /// Runs the check now (if overdue or `force`).
    fn polling_check(&self, cond: &CondHandle, force: bool) -> Result<(), ScriptError>;
    /// Waits until the condition passes.
    fn polling_wait(&self, cond: &CondHandle, timeout: Option<Duration>)
        -> Result<(), ScriptError>;
    /// Cancels every command in flight (Ctrl-C); called from another thread.
    fn interrupt(&self);
    /// `test_script()`: runs the test's own script.
    fn test_script(&self) -> Result<(), ScriptError>;
}

static SESSION: RwLock<Option<Arc<dyn Session>>> = RwLock::new(None);

/// The globals of the current script/REPL (for `test_script()` of a Python test).
static CURRENT_NS: std::sync::Mutex<Option<Py<PyDict>>> = std::sync::Mutex::new(None);

/// Makes `session` the one the test-level functions use (until [`clear_session`]).
pub fn set_session(session: Arc<dyn Session>) {
    let s = session.clone();
    interrupt::set_canceller(Some(Arc::new(move || s.interrupt())));
    *SESSION.write().unwrap_or_else(|p| p.into_inner()) = Some(session);
}

/// Forgets the current session (the test run ended).
pub fn clear_session() {
    interrupt::set_canceller(None);
    polling::clear();
    *CURRENT_NS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    *SESSION.write().unwrap_or_else(|p| p.into_inner()) = None;
}

fn session() -> PyResult<Arc<dyn Session>> {
    SESSION
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| PyRuntimeError::new_err("no test is running (the machines are gone)"))
}

/// Runs a blocking session call with the GIL released and maps its error.
fn call<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&dyn Session) -> Result<T, ScriptError> + Send,
) -> PyResult<T> {
    let s = session()?;
    interrupt::blocking(py, || f(s.as_ref()))?.map_err(|e| e.to_py(py))
}

/// Wraps a session's polling condition for Python.
#[pyclass(name = "_Cond", module = "_machinist", frozen)]
struct PyCond(CondHandle);

mod functions {
    use super::convert::Seconds;
    use super::*;

    /// Start every machine concurrently (returns without waiting for the guests to boot).
    #[pyfunction]
    pub fn start_all(py: Python<'_>) -> PyResult<()> {
        call(py, |s| s.start_all())
    }

    /// Wait for every machine to shut down.
    #[pyfunction]
    pub fn join_all(py: Python<'_>) -> PyResult<()> {
        call(py, |s| s.join_all())
    }

    /// Write a line to the test log.
    #[pyfunction]
    pub fn log(message: &str) -> PyResult<()> {
        session()?.log(message);
        Ok(())
    }

    /// Show serial console lines on the terminal.
    #[pyfunction]
    pub fn serial_stdout_on() -> PyResult<()> {
        session()?.serial_stdout(true);
        Ok(())
    }

    /// Hide serial console lines on the terminal (they stay in the logs).
    #[pyfunction]
    pub fn serial_stdout_off() -> PyResult<()> {
        session()?.serial_stdout(false);
        Ok(())
    }

    /// Run the test's own script.
    #[pyfunction]
    pub fn test_script(py: Python<'_>) -> PyResult<()> {
        call(py, |s| s.test_script())
    }

    #[pyfunction]
    pub fn subtest_begin(name: &str) -> PyResult<u64> {
        Ok(session()?.subtest_begin(name))
    }

    #[pyfunction]
    #[pyo3(signature = (token, failure=None))]
    pub fn subtest_end(token: u64, failure: Option<String>) -> PyResult<()> {
        session()?.subtest_end(token, failure);
        Ok(())
    }

    #[pyfunction]
    #[pyo3(signature = (fun, timeout=None))]
    pub fn retry(py: Python<'_>, fun: Py<PyAny>, timeout: Option<Seconds>) -> PyResult<()> {
        let timeout = timeout.map(|s| s.0);
        call(py, move |s| {
            s.retry(timeout, &mut |last| {
                Python::attach(|py| {
                    fun.call1(py, (last,))
                        .and_then(|r| r.bind(py).is_truthy())
                        .map_err(|e| py_error_to_script(py, &e))
                })
            })
        })
    }

    #[pyfunction]
    pub fn polling_condition(
        description: &str,
        interval: Option<Seconds>,
        fun: Py<PyAny>,
    ) -> PyResult<PyCond> {
        let interval = interval.map_or(machinist::timeouts::DEFAULT_POLLING_INTERVAL, |s| s.0);
        let check: CheckFn = Box::new(move || {
            Python::attach(|py| match fun.call0(py) {
                // NixOS: None counts as success, exceptions as failure.
                Ok(r) if r.is_none(py) => Ok(()),
                Ok(r) => match r.bind(py).is_truthy() {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                },
                Err(e) => Err(Some(e.to_string())),
            })
        });
        Ok(PyCond(session()?.polling_condition(
            description,
            interval,
            check,
        )))
    }

    #[pyfunction]
    pub fn polling_enter(cond: &PyCond) -> PyResult<u64> {
        Ok(session()?.polling_enter(&cond.0))
    }

    #[pyfunction]
    #[pyo3(signature = (token, body_failed=false))]
    pub fn polling_exit(py: Python<'_>, token: u64, body_failed: bool) -> PyResult<()> {
        let _ = body_failed;
        session()?.polling_exit(token).map_err(|e| e.to_py(py))
    }

    #[pyfunction]
    pub fn polling_check(py: Python<'_>, cond: &PyCond, force: bool) -> PyResult<bool> {
        let c = cond.0.clone();
        match call(py, move |s| s.polling_check(&c, force)) {
            Ok(()) => Ok(true),
            Err(e)
                if e.is_instance(
                    py,
                    &py.import("machinist")?.getattr("PollingConditionError")?,
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    #[pyfunction]
    #[pyo3(signature = (cond, timeout=None))]
    pub fn polling_wait(py: Python<'_>, cond: &PyCond, timeout: Option<Seconds>) -> PyResult<()> {
        let c = cond.0.clone();
        let timeout = timeout.map(|s| s.0);
        call(py, move |s| s.polling_wait(&c, timeout))
    }
}

/// A Python exception raised inside a callback, as a driver-side error message.
pub fn py_error_to_script(py: Python<'_>, e: &PyErr) -> ScriptError {
    if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
        return ScriptError {
            kind: ErrorKind::Interrupted,
            message: "interrupted".into(),
        };
    }
    ScriptError {
        kind: ErrorKind::Assertion,
        message: e.to_string(),
    }
}

/// Initialises the interpreter's Machinist modules (idempotent) and returns `machinist`.
pub fn init(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    static BUSY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let sys = py.import("sys")?;
    let modules = sys.getattr("modules")?;
    if DONE.load(Ordering::Acquire) {
        if let Ok(m) = modules.get_item("machinist") {
            return Ok(m.cast_into()?);
        }
    }
    // One thread builds the modules; the prelude's imports release the GIL, so another thread
    // could otherwise see a half-executed `machinist` module. Wait without holding the GIL.
    let _busy = loop {
        match BUSY.try_lock() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                py.detach(|| std::thread::sleep(Duration::from_millis(1)))
            }
        }
    };
    if DONE.load(Ordering::Acquire) {
        if let Ok(m) = modules.get_item("machinist") {
            return Ok(m.cast_into()?);
        }
    }
    let native = PyModule::new(py, "_machinist")?;
    native.add_class::<PyCond>()?;
    native.add_function(wrap_pyfunction!(functions::start_all, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::join_all, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::log, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::serial_stdout_on, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::serial_stdout_off, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::test_script, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::subtest_begin, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::subtest_end, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::retry, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::polling_condition, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::polling_enter, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::polling_exit, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::polling_check, &native)?)?;
    native.add_function(wrap_pyfunction!(functions::polling_wait, &native)?)?;
    modules.set_item("_machinist", &native)?;
    let prelude = CString::new(PRELUDE).expect("prelude has no NUL");
    let m = PyModule::from_code(py, &prelude, c"<machinist>/prelude.py", c"machinist")?;
    interrupt::install(py)?;
    DONE.store(true, Ordering::Release);
    Ok(m)
}

/// The globals of a test script / the REPL.
pub struct Namespace<'py> {
    dict: Bound<'py, PyDict>,
    machines: Bound<'py, PyList>,
}

/// The functions every script sees (NixOS `test_symbols`), from the Rust module.
pub const FUNCTIONS: &[&str] = &[
    "start_all",
    "join_all",
    "test_script",
    "log",
    "serial_stdout_on",
    "serial_stdout_off",
];
/// The symbols every script sees from the Python prelude (functions and exception classes).
pub const PRELUDE_SYMBOLS: &[&str] = &[
    "subtest",
    "retry",
    "polling_condition",
    "t",
    "MachinistError",
    "MachineError",
    "RequestedAssertionFailed",
    "PollingConditionError",
    "NotSupportedError",
];

impl<'py> Namespace<'py> {
    /// A namespace with the test-level functions.
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        let m = init(py)?;
        let native = py.import("_machinist")?;
        let dict = PyDict::new(py);
        dict.set_item("__name__", "__main__")?;
        for f in FUNCTIONS {
            dict.set_item(*f, native.getattr(*f)?)?;
        }
        for s in PRELUDE_SYMBOLS {
            dict.set_item(*s, m.getattr(*s)?)?;
        }
        dict.set_item("os", py.import("os")?)?;
        let machines = PyList::empty(py);
        dict.set_item("machines", &machines)?;
        dict.set_item("nodes", m.getattr("AttrDict")?.call0()?)?;
        dict.set_item("vlans", PyList::empty(py))?;
        *CURRENT_NS.lock().unwrap_or_else(|p| p.into_inner()) = Some(dict.clone().unbind());
        Ok(Namespace { dict, machines })
    }

    /// The namespace most recently created (the running script's or REPL's).
    pub fn current(py: Python<'py>) -> PyResult<Self> {
        let dict = CURRENT_NS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|d| d.bind(py).clone())
            .ok_or_else(|| PyRuntimeError::new_err("no script namespace"))?;
        let machines = dict
            .get_item("machines")?
            .ok_or_else(|| PyRuntimeError::new_err("no machines"))?
            .cast_into()?;
        Ok(Namespace { dict, machines })
    }

    /// Adds a machine object under its pythonized name (and to `machines`); a single machine is
    /// also `machine`.
    pub fn add_machine(&self, name: &str, object: Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.dict.py();
        let ident: String = py
            .import("machinist")?
            .call_method1("pythonize_name", (name,))?
            .extract()?;
        self.dict.set_item(&ident, &object)?;
        self.machines.append(&object)?;
        // `machine` is also the single machine's alias (as in NixOS); a node *named* `machine`
        // keeps its name whatever else is declared.
        let machinist = py.import("machinist")?;
        let mut named_machine = false;
        for m in self.machines.iter() {
            let name: String = m.getattr("name")?.extract()?;
            let ident: String = machinist
                .call_method1("pythonize_name", (name,))?
                .extract()?;
            named_machine |= ident == "machine";
        }
        if self.machines.len() == 1 {
            self.dict.set_item("machine", &object)?;
        } else if !named_machine {
            self.dict.del_item("machine").ok();
        }
        Ok(())
    }

    /// Adds a node's configuration (`nodes.<name>.config.<option>`): the node's configuration as
    /// JSON, with its typed `options` merged at the top level.
    pub fn add_node(&self, name: &str, config: &serde_json::Value) -> PyResult<()> {
        let py = self.dict.py();
        let mut merged = config.clone();
        if let Some(obj) = merged.as_object_mut() {
            if let Some(serde_json::Value::Object(options)) = obj.remove("options") {
                for (k, v) in options {
                    obj.entry(k).or_insert(v);
                }
            }
        }
        let value = py
            .import("json")?
            .call_method1("loads", (merged.to_string(),))?;
        let node = py
            .import("machinist")?
            .getattr("Node")?
            .call1((name, value))?;
        self.dict
            .get_item("nodes")?
            .expect("nodes")
            .set_item(name, node)?;
        Ok(())
    }

    /// Adds a VLAN object as `vlan<N>` and to `vlans`.
    pub fn add_vlan(&self, nr: u8, object: Bound<'py, PyAny>) -> PyResult<()> {
        self.dict.set_item(format!("vlan{nr}"), &object)?;
        self.dict
            .get_item("vlans")?
            .expect("vlans")
            .call_method1("append", (object,))?;
        Ok(())
    }

    /// The globals dict.
    pub fn dict(&self) -> &Bound<'py, PyDict> {
        &self.dict
    }
}

/// How a script ended badly.
#[derive(Debug)]
pub struct ScriptFailure {
    /// The script's frames and the error, ready to print.
    pub report: String,
    /// True when the error was a KeyboardInterrupt (Ctrl-C).
    pub interrupted: bool,
}

/// Runs `source` (named `filename` in tracebacks) in `ns`.
pub fn run_script(
    py: Python<'_>,
    ns: &Namespace<'_>,
    source: &str,
    filename: &str,
) -> Result<(), ScriptFailure> {
    let m = init(py).map_err(|e| failure(py, e))?;
    m.call_method1("run_script", (source, filename, ns.dict()))
        .map(|_| ())
        .map_err(|e| failure(py, e))
}

fn failure(py: Python<'_>, e: PyErr) -> ScriptFailure {
    let interrupted = e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py);
    let value = e.value(py);
    if let Some(tb) = e.traceback(py) {
        let _ = value.setattr("__traceback__", tb);
    }
    let report = py
        .import("machinist")
        .and_then(|m| m.call_method1("format_exception", (value,)))
        .and_then(|r| r.extract::<String>())
        .unwrap_or_else(|_| e.to_string());
    ScriptFailure {
        report,
        interrupted,
    }
}

/// Opens the REPL on `ns` (history in `history`, created mode 0600); returns at Ctrl-D.
pub fn repl(
    py: Python<'_>,
    ns: &Namespace<'_>,
    history: Option<&Path>,
    banner: &str,
) -> PyResult<()> {
    let m = init(py)?;
    let history = history.map(|p| p.to_string_lossy().into_owned());
    m.call_method1("interact", (ns.dict(), history, banner))?;
    Ok(())
}

#[cfg(test)]
mod tests;
