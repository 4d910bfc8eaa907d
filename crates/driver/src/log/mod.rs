//! The test log: a nested human log on stderr in the NixOS driver's format, the same spans as JSON
//! lines, and JUnit XML.
//!
//! Human format (byte for byte as the NixOS `TerminalLogger`, colours only when stderr is a
//! terminal and `NO_COLOR` is unset):
//!
//! ```text
//! server: must succeed: echo hi                       <- nested block start (bright green)
//! server: waiting for the VM to finish booting
//! server: Guest shell says: b'Spawning backdoor root shell...\n'
//! server: connected to guest root shell
//! server: (connecting took 4.12 seconds)
//! (finished: waiting for the VM to finish booting, in 4.12 seconds)
//! (finished: must succeed: echo hi, in 4.16 seconds)  <- no machine prefix, as in NixOS
//! server # [    2.345678] some serial console line    <- dim; hidden by serial_stdout_off
//! subtest: networking
//! Test "networking" failed with error: "..."          <- red
//! ```
//!
//! Lines are not indented by depth (NixOS does not indent either); the JSON log keeps the tree
//! through `id`/`parent`. A block that fails prints no `(finished: ...)` line (as in NixOS); the
//! JSON log records it with `"ok": false`.
//!
//! Facts that tools read (a machine started warm or cold, its shell connected, a subtest's
//! outcome, the artefacts) are typed [`Event`]s: [`Logger::event`], [`Logger::begin_event`] and
//! [`Span::end`] print their usual human line and attach the event's fields to its JSON record,
//! so a reader of `log.jsonl` never has to match the wording of a line.

mod event;
pub(crate) mod forward;
mod json;
mod junit;
mod terminal;

use serde_json::{json, Value};
use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use event::{ArtefactKind, BootKind, Event};
#[cfg(test)]
use junit::strip_control;
use terminal::{Kind, Terminal};

/// The longest guest line (serial or command output) the log keeps, in bytes; the rest of a
/// longer line is dropped with a marker saying how much (a guest printing megabytes without a
/// newline must not fill the host's memory or the log).
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// `line`, cut at [`MAX_LINE_BYTES`] (on a character boundary) with a marker.
fn clip_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LINE_BYTES {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}... [machinist: {} more bytes of this line dropped]",
        &line[..end],
        line.len() - end
    ))
}

thread_local! {
    static OPEN_SPANS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The test log (cheap to clone; all clones write to the same sinks).
#[derive(Clone)]
pub struct Logger {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    state: Mutex<State>,
    print_serial: AtomicBool,
    print_output: AtomicBool,
    next_id: AtomicU64,
}

struct State {
    terminal: Option<Terminal>,
    json: Option<json::JsonSink>,
    junit: junit::Junit,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").finish_non_exhaustive()
    }
}

impl Default for Logger {
    fn default() -> Self {
        Self::stderr()
    }
}

impl Logger {
    fn with_terminal(terminal: Option<Terminal>) -> Self {
        let start = Instant::now();
        Logger {
            inner: Arc::new(Inner {
                start,
                state: Mutex::new(State {
                    terminal,
                    json: None,
                    junit: junit::Junit::new(start),
                }),
                print_serial: AtomicBool::new(true),
                print_output: AtomicBool::new(
                    std::env::var_os("MACHINIST_PRINT_OUTPUT").is_some_and(|v| v == "1"),
                ),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Logs to stderr; colours when stderr is a terminal and `NO_COLOR` is not set.
    pub fn stderr() -> Self {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self::with_terminal(Some(Terminal {
            out: Box::new(std::io::stderr()),
            color,
        }))
    }

    /// Logs human lines to `out` (colours only if `color`).
    pub fn to_writer(out: impl Write + Send + 'static, color: bool) -> Self {
        Self::with_terminal(Some(Terminal {
            out: Box::new(out),
            color,
        }))
    }

    /// No human log at all (JSON and JUnit are still collected).
    pub fn silent() -> Self {
        Self::with_terminal(None)
    }

    /// Also writes every record as a JSON line to `path` (created or truncated).
    pub fn write_json_to(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        self.state().json = Some(json::JsonSink {
            out: Box::new(std::io::BufWriter::new(f)),
        });
        Ok(())
    }

    /// Also writes JSON lines to an arbitrary writer (tests, custom sinks).
    pub fn write_json_to_writer(&self, out: impl Write + Send + 'static) {
        self.state().json = Some(json::JsonSink { out: Box::new(out) });
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the log lock must not disable logging for the cleanup.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn now(&self) -> Value {
        json::seconds(self.inner.start.elapsed())
    }

    fn parent() -> Option<u64> {
        OPEN_SPANS.with(|s| s.borrow().last().copied())
    }

    fn emit(&self, kind: Kind, ty: &str, machine: Option<&str>, message: &str) {
        let mut st = self.state();
        self.emit_locked(&mut st, kind, ty, machine, message, None);
    }

    /// Prints `message` (terminal and JUnit) and writes its JSON record, with `event` attached.
    fn emit_locked(
        &self,
        st: &mut State,
        kind: Kind,
        ty: &str,
        machine: Option<&str>,
        message: &str,
        event: Option<&Event>,
    ) {
        let plain = terminal::format_line(kind, machine, message, false);
        st.junit.line(plain.trim_end_matches('\n'));
        if let Some(t) = st.terminal.as_mut() {
            t.line(kind, machine, message);
        }
        let mut record = json!({
            "time": self.now(), "type": ty, "parent": Self::parent(),
            "machine": machine, "message": message,
        });
        if let Some(e) = event {
            record["event"] = json::event(e);
        }
        if let Some(j) = st.json.as_mut() {
            j.write(record);
        }
    }

    /// Logs a typed [`Event`]: its human line(s) exactly as [`Logger::log`] would print them
    /// (an error line for a failed subtest), and one JSON record carrying the event (an `event`
    /// record for an event without a human line). A subtest's start and end also open and close
    /// its JUnit test case; for the blocks (`start all VMs`, the script, subtests) use
    /// [`Logger::begin_event`] and [`Span::end`] instead.
    pub fn event(&self, event: Event) {
        let mut st = self.state();
        self.emit_event_locked(&mut st, &event, true);
    }

    /// The lines of `event`; the first record carries the event when `attach` (otherwise the
    /// event is on a record of its own already). Opens / closes the JUnit case of a subtest.
    fn emit_event_locked(&self, st: &mut State, event: &Event, attach: bool) {
        if let Event::SubtestStarted { subtest } = event {
            st.junit.begin(subtest, Instant::now());
        }
        let machine = event.machine();
        let (kind, ty) = match event.kind() {
            Kind::Error => (Kind::Error, "error"),
            _ => (Kind::Info, "log"),
        };
        let lines = event.lines();
        if lines.is_empty() && attach {
            let record = json!({
                "time": self.now(), "type": "event", "parent": Self::parent(),
                "machine": machine, "event": json::event(event),
            });
            if let Some(j) = st.json.as_mut() {
                j.write(record);
            }
        }
        for (i, line) in lines.iter().enumerate() {
            let with = (attach && i == 0).then_some(event);
            self.emit_locked(st, kind, ty, machine, line, with);
        }
        if let Event::SubtestFinished { error, .. } = event {
            st.junit.end(error.clone(), Instant::now());
        }
    }

    /// A plain log line, prefixed `<machine>: ` when `machine` is given.
    pub fn log(&self, machine: Option<&str>, message: &str) {
        self.emit(Kind::Info, "log", machine, message);
    }

    /// A warning (yellow on a terminal).
    pub fn warning(&self, machine: Option<&str>, message: &str) {
        self.emit(Kind::Warning, "warning", machine, message);
    }

    /// An error (red on a terminal).
    pub fn error(&self, machine: Option<&str>, message: &str) {
        self.emit(Kind::Error, "error", machine, message);
    }

    /// A serial console line: `<machine> # <line>` on the terminal unless serial output is off;
    /// always in the JSON log.
    pub fn serial(&self, machine: &str, line: &str) {
        let print = self.inner.print_serial.load(Ordering::Relaxed);
        self.emit_machine_line(Kind::Serial, "serial", print, machine, line);
    }

    /// One line a guest command printed, as it arrives: always in the JSON log (`"type":
    /// "output"`); on the terminal as `<machine> | <line>` only when output printing is on
    /// ([`Logger::set_print_output`], or `MACHINIST_PRINT_OUTPUT=1`).
    pub fn output(&self, machine: &str, line: &str) {
        let print = self.inner.print_output.load(Ordering::Relaxed);
        self.emit_machine_line(Kind::Output, "output", print, machine, line);
    }

    /// A line a machine produced (serial console or command output): on the terminal and in
    /// JUnit only when `print`, always in the JSON log as `{"type": ty, "machine", "line"}`.
    fn emit_machine_line(&self, kind: Kind, ty: &str, print: bool, machine: &str, line: &str) {
        let line = &*clip_line(line);
        let mut st = self.state();
        if print {
            let plain = terminal::format_line(kind, Some(machine), line, false);
            st.junit.line(plain.trim_end_matches('\n'));
            if let Some(t) = st.terminal.as_mut() {
                t.line(kind, Some(machine), line);
            }
        }
        let record = json!({"time": self.now(), "type": ty, "machine": machine, "line": line});
        if let Some(j) = st.json.as_mut() {
            j.write(record);
        }
    }

    /// Shows (`true`) or hides guest command output lines on the terminal as they arrive.
    pub fn set_print_output(&self, on: bool) {
        self.inner.print_output.store(on, Ordering::Relaxed);
    }

    /// Shows (`true`) or hides serial console lines on the terminal (`serial_stdout_on/off`).
    pub fn set_print_serial(&self, on: bool) {
        self.inner.print_serial.store(on, Ordering::Relaxed);
    }

    /// Whether serial lines are currently shown.
    pub fn print_serial(&self) -> bool {
        self.inner.print_serial.load(Ordering::Relaxed)
    }

    /// Opens a nested block: prints `[<machine>: ]<message>`; [`Span::finish`] prints
    /// `(finished: <message>, in N.NN seconds)`. Dropping the span without finishing records a
    /// failed block in the JSON log only.
    pub fn begin(&self, machine: Option<&str>, message: &str) -> Span {
        self.open(machine, message, None)
    }

    /// Opens a nested block for an event that starts one ([`Event::StartAll`],
    /// [`Event::ScriptStarted`], [`Event::SubtestStarted`]): prints the event's line as the block
    /// start and attaches the event to the block's `nest` record; a subtest also opens its JUnit
    /// test case (so do not call [`Logger::junit_begin`] for it). Close the block with
    /// [`Span::end`] and the matching finished event.
    pub fn begin_event(&self, event: Event) -> Span {
        let message = event.message().unwrap_or_default();
        self.open(event.machine(), &message, Some(&event))
    }

    fn open(&self, machine: Option<&str>, message: &str, event: Option<&Event>) -> Span {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.state();
            if let Some(Event::SubtestStarted { subtest }) = event {
                st.junit.begin(subtest, Instant::now());
            }
            let plain = terminal::format_line(Kind::Nest, machine, message, false);
            st.junit.line(plain.trim_end_matches('\n'));
            if let Some(t) = st.terminal.as_mut() {
                t.line(Kind::Nest, machine, message);
            }
            let mut record = json!({
                "time": self.now(), "type": "nest", "id": id, "parent": Self::parent(),
                "machine": machine, "message": message,
            });
            if let Some(e) = event {
                record["event"] = json::event(e);
            }
            if let Some(j) = st.json.as_mut() {
                j.write(record);
            }
        }
        OPEN_SPANS.with(|s| s.borrow_mut().push(id));
        Span {
            logger: self.clone(),
            id,
            start: Instant::now(),
            message: message.to_string(),
            done: false,
        }
    }

    /// Runs `f` inside a nested block; prints the `(finished: ...)` line only if `f` succeeds.
    pub fn nested<T, E>(
        &self,
        machine: Option<&str>,
        message: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let span = self.begin(machine, message);
        let r = f();
        if r.is_ok() {
            span.finish();
        }
        r
    }

    /// Opens a JUnit test case `name` (a subtest); lines logged until [`Logger::junit_end`] go
    /// into its output. [`crate::TestRun::subtest`] does this; other front ends (Python) too.
    pub fn junit_begin(&self, name: &str) {
        self.state().junit.begin(name, Instant::now());
    }

    /// Closes the open JUnit test case, failed with `failure` when given.
    pub fn junit_end(&self, failure: Option<String>) {
        self.state().junit.end(failure, Instant::now());
    }

    pub(crate) fn junit_fail_current(&self, message: &str) {
        self.state().junit.fail_current(message);
    }

    /// The JUnit XML report so far (suite named `suite`); `redact_times` zeroes every duration
    /// (for snapshots).
    pub fn junit_xml(&self, suite: &str, redact_times: bool) -> String {
        let report = self
            .state()
            .junit
            .report(suite, Instant::now(), redact_times);
        report
            .to_string()
            .unwrap_or_else(|e| format!("<!-- cannot serialize JUnit report: {e} -->"))
    }

    /// Flushes the JSON log.
    pub fn flush(&self) {
        if let Some(j) = self.state().json.as_mut() {
            j.flush();
        }
    }

    /// Time since the logger was created.
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }
}

/// An open nested block (see [`Logger::begin`]).
#[must_use = "a span prints its (finished: ...) line only when finished"]
pub struct Span {
    logger: Logger,
    id: u64,
    start: Instant,
    message: String,
    done: bool,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("id", &self.id)
            .field("message", &self.message)
            .finish()
    }
}

impl Span {
    /// Time since the block started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Closes the block successfully: `(finished: <message>, in N.NN seconds)`.
    pub fn finish(mut self) {
        self.close(true, None);
    }

    /// Closes the block with the event that ends it ([`Event::ScriptFinished`],
    /// [`Event::SubtestFinished`]; the block failed when the event says `ok: false`): the
    /// `(finished: ...)` line when it succeeded, the event on the block's `finished` record, then
    /// the event's own line (`Test "NAME" failed with error: "..."` for a failed subtest); a
    /// subtest's end also closes its JUnit test case (so do not call [`Logger::junit_end`] for
    /// it).
    pub fn end(mut self, event: Event) {
        let ok = event.ok().unwrap_or(true);
        self.close(ok, Some(&event));
        let lg = self.logger.clone();
        let mut st = lg.state();
        lg.emit_event_locked(&mut st, &event, false);
    }

    fn close(&mut self, ok: bool, event: Option<&Event>) {
        if self.done {
            return;
        }
        self.done = true;
        OPEN_SPANS.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(pos) = s.iter().rposition(|&x| x == self.id) {
                s.remove(pos);
            }
        });
        let d = self.start.elapsed();
        let lg = &self.logger;
        let mut st = lg.state();
        if ok {
            let msg = format!(
                "(finished: {}, in {:.2} seconds)",
                self.message,
                d.as_secs_f64()
            );
            st.junit.line(&msg);
            if let Some(t) = st.terminal.as_mut() {
                t.line(Kind::Info, None, &msg);
            }
        }
        let mut record = json!({
            "time": lg.now(), "type": "finished", "id": self.id, "ok": ok,
            "duration": json::seconds(d),
        });
        if let Some(e) = event {
            record["event"] = json::event(e);
        }
        if let Some(j) = st.json.as_mut() {
            j.write(record);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.close(false, None);
    }
}

#[cfg(test)]
mod tests;
