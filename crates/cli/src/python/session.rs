//! [`Session`] over the driver's running test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::machine::script_error;
use super::{polling, CheckFn, CondHandle, ErrorKind, ScriptError, Session};

/// NixOS' default for retry and waits.
const DEFAULT_TIMEOUT: Duration = machinist::timeouts::DEFAULT_TIMEOUT;

/// The Rust script of a bundled test (what `test_script()` runs).
pub type RustScript = Arc<dyn Fn(&machinist::TestRun) -> machinist::ScriptResult + Send + Sync>;

/// The test-level functions over a `machinist::TestRun`.
pub struct DriverSession {
    run: Arc<machinist::TestRun>,
    script: Option<RustScript>,
    python_script: Option<(String, String)>,
    subtests: Mutex<HashMap<u64, (String, machinist::Span)>>,
    next: AtomicU64,
}

impl DriverSession {
    /// A session for `run`; `test_script()` runs `script` (Rust) or `python_script`
    /// (source, filename).
    pub fn new(
        run: Arc<machinist::TestRun>,
        script: Option<RustScript>,
        python_script: Option<(String, String)>,
    ) -> Self {
        DriverSession {
            run,
            script,
            python_script,
            subtests: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

fn err(e: machinist::Error) -> ScriptError {
    script_error(e)
}

impl Session for DriverSession {
    fn start_all(&self) -> Result<(), ScriptError> {
        self.run.start_all().map_err(err)
    }

    fn join_all(&self) -> Result<(), ScriptError> {
        self.run.join_all().map_err(err)
    }

    fn log(&self, message: &str) {
        self.run.log(message);
    }

    fn serial_stdout(&self, on: bool) {
        if on {
            self.run.serial_stdout_on();
        } else {
            self.run.serial_stdout_off();
        }
    }

    fn subtest_begin(&self, name: &str) -> u64 {
        // The same log block, event and JUnit test case as the driver's `TestRun::subtest`.
        let span = self
            .run
            .logger()
            .begin_event(machinist::log::Event::SubtestStarted {
                subtest: name.to_string(),
            });
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.subtests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, (name.to_string(), span));
        token
    }

    fn subtest_end(&self, token: u64, failure: Option<String>) {
        let entry = self
            .subtests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        if let Some((name, span)) = entry {
            let seconds = span.elapsed().as_secs_f64();
            span.end(machinist::log::Event::SubtestFinished {
                subtest: name,
                ok: failure.is_none(),
                seconds,
                error: failure,
            });
        }
    }

    fn retry(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(bool) -> Result<bool, ScriptError>,
    ) -> Result<(), ScriptError> {
        self.run
            .retry(timeout.unwrap_or(DEFAULT_TIMEOUT), |last| match f(last) {
                Ok(true) => Ok(()),
                Ok(false) => Err("the function returned False".to_string()),
                Err(e) => Err(e.message),
            })
            .map_err(err)
    }

    fn polling_condition(
        &self,
        description: &str,
        interval: Duration,
        check: CheckFn,
    ) -> CondHandle {
        let cond = self.run.polling_condition(description, interval, move || {
            check().map_err(|d| d.unwrap_or_else(|| "the check returned False".into()))
        });
        Arc::new(cond)
    }

    fn polling_enter(&self, cond: &CondHandle) -> u64 {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = cond.downcast_ref::<machinist::PollingCondition>() {
            polling::push(token, c.clone());
        }
        token
    }

    fn polling_exit(&self, token: u64) -> Result<(), ScriptError> {
        polling::pop(token);
        Ok(())
    }

    fn polling_check(&self, cond: &CondHandle, force: bool) -> Result<(), ScriptError> {
        match cond.downcast_ref::<machinist::PollingCondition>() {
            Some(c) => c.check(force).map_err(err),
            None => Ok(()),
        }
    }

    fn polling_wait(
        &self,
        cond: &CondHandle,
        timeout: Option<Duration>,
    ) -> Result<(), ScriptError> {
        match cond.downcast_ref::<machinist::PollingCondition>() {
            Some(c) => self
                .run
                .wait_for_condition(c, timeout.unwrap_or(DEFAULT_TIMEOUT))
                .map_err(err),
            None => Ok(()),
        }
    }

    fn interrupt(&self) {
        // Every command and wait in flight stops (guest commands are killed through the
        // control channel); the machines keep running.
        self.run.interrupt();
    }

    fn test_script(&self) -> Result<(), ScriptError> {
        if let Some(s) = &self.script {
            return s(&self.run).map_err(|e| match e.downcast::<machinist::Error>() {
                Ok(e) => err(*e),
                Err(e) => ScriptError {
                    kind: ErrorKind::Assertion,
                    message: e.to_string(),
                },
            });
        }
        if let Some((source, filename)) = &self.python_script {
            return pyo3::Python::attach(|py| {
                let ns = super::Namespace::current(py)
                    .map_err(|e| ScriptError::machine(e.to_string()))?;
                super::run_script(py, &ns, source, filename).map_err(|f| ScriptError {
                    kind: ErrorKind::Assertion,
                    message: f.report,
                })
            });
        }
        Err(ScriptError::machine("this test has no script of its own"))
    }
}
