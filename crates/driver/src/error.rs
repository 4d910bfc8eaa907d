//! The driver's error type.
//!
//! Every error belongs to one [`ErrorKind`]: the declaration (nothing booted), the script's own
//! checks and calls at run time, the host (files, processes, tools), or a backend crate (QEMU,
//! the backdoor, the switch, images, OCR). A backend's or the host's typed error is kept as the
//! variant's `cause` and printed once, in the variant's message (it is not repeated as
//! `source()`, so a chain printer such as anyhow's `{:#}` shows it once).

use std::path::PathBuf;
use std::time::Duration;

/// A boxed error from a script or a backend crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which part of a run an [`Error`] comes from ([`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The test declaration (nodes, templates, the timeout scale): nothing was booted; fix the
    /// declaration.
    Declaration,
    /// The script at run time: a check failed, a wait timed out, a call was given a bad
    /// argument, a machine was not running, the run was interrupted or timed out.
    Runtime,
    /// The host: a file or directory could not be read or written.
    Host,
    /// A backend crate (QEMU, the backdoor, the switch, images, OCR) failed.
    Backend,
    /// A bug in the driver.
    Internal,
}

/// Result alias used throughout the driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a test run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command exited non-zero where success was required (`succeed`, `systemctl`, ...).
    #[error("{machine}: command `{command}` failed (exit code {code}){}", output_tail(.output))]
    CommandFailed {
        /// Machine the command ran on.
        machine: String,
        /// The command.
        command: String,
        /// Its exit code (124 = the guest-side `timeout` expired).
        code: i32,
        /// Its standard output (lossy UTF-8).
        output: String,
    },

    /// A command exited but left background processes holding its standard output (a process
    /// started with `&` without redirecting its output); under NixOS this hangs until the timeout.
    #[error("{machine}: command `{command}` exited (code {code}) but left background process(es) \
             {pids:?} holding its standard output; redirect their output, e.g. \
             `cmd >/dev/null 2>&1 &`, or start them as a systemd unit{}", output_tail(.output))]
    BackgroundProcess {
        /// Machine the command ran on.
        machine: String,
        /// The command.
        command: String,
        /// Its exit code.
        code: i32,
        /// The processes still holding the output.
        pids: Vec<u32>,
        /// Its standard output.
        output: String,
    },

    /// A command succeeded where failure was required (`fail`).
    #[error("{machine}: command `{command}` unexpectedly succeeded{}", output_tail(.output))]
    UnexpectedSuccess {
        /// Machine the command ran on.
        machine: String,
        /// The command.
        command: String,
        /// Its standard output.
        output: String,
    },

    /// A wait or retry loop ran out of time (`wait_until_succeeds`, `wait_for_unit`, `retry`, ...).
    #[error("{}action timed out after {:.1} seconds (timeout={:.1}): {what}{}",
        machine_prefix(.machine), .elapsed.as_secs_f64(), .timeout.as_secs_f64(), output_tail(.last_output))]
    Timeout {
        /// Machine, if the wait was on one.
        machine: Option<String>,
        /// What was being waited for (the command, the unit, ...).
        what: String,
        /// The timeout (after `MACHINIST_TIMEOUT_SCALE`).
        timeout: Duration,
        /// Time actually spent.
        elapsed: Duration,
        /// The last attempt's output, if any.
        last_output: String,
    },

    /// The machine did not finish booting (backdoor greeting) within its boot deadline.
    #[error("{machine}: the VM did not finish booting within {:.0} seconds (boot deadline): {reason}; \
             see the `{machine} # ...` serial lines above or {console_log}", .deadline.as_secs_f64(), console_log = .console_log.display())]
    BootTimeout {
        /// Machine.
        machine: String,
        /// The (scaled) boot deadline.
        deadline: Duration,
        /// What was still missing.
        reason: String,
        /// Where the console log is saved.
        console_log: PathBuf,
    },

    /// A systemd unit reached a state from which `wait_for_unit` cannot succeed.
    #[error("{machine}: unit \"{unit}\" {reason}{}", details_block(.details))]
    Unit {
        /// Machine.
        machine: String,
        /// The unit.
        unit: String,
        /// e.g. `reached state "failed"`, `is inactive and there are no pending jobs`.
        reason: String,
        /// What the guest says about it: `systemctl status` and the unit's last journal lines
        /// (empty when there is nothing to add).
        details: String,
    },

    /// A check on a machine failed (unit state, window, tty text, ...).
    #[error("{machine}: {message}")]
    Assertion {
        /// Machine.
        machine: String,
        /// What was expected and what was found.
        message: String,
    },

    /// The operation cannot work on this machine (e.g. `wait_for_x` on a guest without an X
    /// server); nothing was attempted.
    #[error("{machine}: {what} is not supported here: {why}")]
    NotSupported {
        /// Machine.
        machine: String,
        /// The operation (the method name).
        what: String,
        /// Why, and what to do instead.
        why: String,
    },

    /// The machine is not running (and the operation needs it running).
    #[error("{machine}: {message}")]
    NotRunning {
        /// Machine.
        machine: String,
        /// What was attempted.
        message: String,
    },

    /// The QEMU process of a machine exited while we were waiting for it.
    #[error("{machine}: QEMU exited unexpectedly ({status}) while {during}{}", stderr_tail(.stderr))]
    QemuExited {
        /// Machine.
        machine: String,
        /// Exit status description.
        status: String,
        /// What the driver was doing.
        during: String,
        /// The end of QEMU's stderr.
        stderr: String,
    },

    /// A backend crate (qemu, backdoor, netsim, ocr, guest) reported an error.
    #[error("{}{what}: {cause}", machine_prefix(.machine))]
    Backend {
        /// Machine, if any.
        machine: Option<String>,
        /// What the driver was doing.
        what: String,
        /// The backend's typed error (downcast it to inspect it).
        cause: BoxError,
    },

    /// A polling condition failed.
    #[error("Polling condition failed: {description}")]
    PollingCondition {
        /// The condition's description.
        description: String,
        /// Why the last check failed, if it said.
        detail: Option<String>,
    },

    /// The global timeout expired; every machine was stopped.
    #[error("global timeout of {:.0} seconds reached: every machine was stopped; raise it with Test::global_timeout or MACHINIST_TIMEOUT_SCALE", .timeout.as_secs_f64())]
    GlobalTimeout {
        /// The (scaled) global timeout.
        timeout: Duration,
    },

    /// The test declaration is invalid (nothing was booted).
    #[error("invalid test declaration: {0}")]
    Invalid(String),

    /// A call of the script has an argument that cannot work (a bad regex, a VLAN the machine is
    /// not on, a target that is not a directory...); nothing was done.
    #[error("{}{message}", machine_prefix(.machine))]
    BadArgument {
        /// Machine, if the call was on one.
        machine: Option<String>,
        /// What is wrong and what to give instead.
        message: String,
    },

    /// The driver broke one of its own rules (a bug: please report it with the log).
    #[error("internal error: {0}")]
    Internal(String),

    /// A template could not be rendered.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),

    /// `MACHINIST_TIMEOUT_SCALE` is invalid.
    #[error(transparent)]
    TimeoutScale(#[from] crate::timeouts::TimeoutScaleError),

    /// No machine with that name.
    #[error("no machine named `{name}`; machines are: {known}")]
    NoSuchMachine {
        /// The requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },

    /// A host-side I/O operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was attempted, naming the path.
        what: String,
        /// The OS error.
        cause: std::io::Error,
    },

    /// The call was stopped by [`crate::TestRun::interrupt`] (Ctrl-C); the machines keep running.
    #[error("interrupted: the command was cancelled in the guest; the machines are still running")]
    Interrupted,

    /// The test script returned an error or panicked.
    #[error("{0}")]
    Script(String),
}

fn machine_prefix(m: &Option<String>) -> String {
    m.as_ref().map(|m| format!("{m}: ")).unwrap_or_default()
}

/// At most the last 10 lines of a command's output, for error messages.
fn output_tail(out: &str) -> String {
    let trimmed = out.trim_end();
    if trimmed.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = trimmed.lines().collect();
    let start = lines.len().saturating_sub(10);
    let mut s = String::from("; output");
    if start > 0 {
        s.push_str(&format!(" (last 10 of {} lines)", lines.len()));
    }
    s.push_str(":\n");
    s.push_str(&lines[start..].join("\n"));
    s
}

fn details_block(details: &str) -> String {
    let t = details.trim_end();
    if t.is_empty() {
        String::new()
    } else {
        format!("\n{t}")
    }
}

fn stderr_tail(err: &str) -> String {
    let t = err.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {t}")
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            cause,
        }
    }

    /// A bad argument of a call on `machine`.
    pub(crate) fn bad_argument(machine: Option<&str>, message: impl Into<String>) -> Self {
        Error::BadArgument {
            machine: machine.map(str::to_string),
            message: message.into(),
        }
    }

    /// Which part of a run the error comes from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::Template(_) | Error::TimeoutScale(_) => {
                ErrorKind::Declaration
            }
            Error::Io { .. } => ErrorKind::Host,
            Error::Backend { .. } | Error::QemuExited { .. } => ErrorKind::Backend,
            Error::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::Runtime,
        }
    }

    pub(crate) fn backend(
        machine: Option<&str>,
        what: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            machine: machine.map(str::to_string),
            what: what.into(),
            cause: source.into(),
        }
    }

    /// The machine this error is about, if any.
    pub fn machine(&self) -> Option<&str> {
        match self {
            Error::CommandFailed { machine, .. }
            | Error::UnexpectedSuccess { machine, .. }
            | Error::BackgroundProcess { machine, .. }
            | Error::BootTimeout { machine, .. }
            | Error::Unit { machine, .. }
            | Error::Assertion { machine, .. }
            | Error::NotRunning { machine, .. }
            | Error::NotSupported { machine, .. }
            | Error::QemuExited { machine, .. } => Some(machine),
            Error::Timeout { machine, .. }
            | Error::Backend { machine, .. }
            | Error::BadArgument { machine, .. } => machine.as_deref(),
            _ => None,
        }
    }

    /// True for the global-timeout error (and errors caused by the abort it triggers).
    pub fn is_global_timeout(&self) -> bool {
        matches!(self, Error::GlobalTimeout { .. })
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let e = Error::CommandFailed {
            machine: "server".into(),
            command: "false".into(),
            code: 1,
            output: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "server: command `false` failed (exit code 1)"
        );
        let e = Error::CommandFailed {
            machine: "server".into(),
            command: "seq 20".into(),
            code: 2,
            output: (1..=20).map(|i| format!("{i}\n")).collect(),
        };
        insta::assert_snapshot!(e.to_string());
        let e = Error::Timeout {
            machine: Some("client".into()),
            what: "curl --fail http://server:3000/todos".into(),
            timeout: Duration::new(7, 0),
            elapsed: Duration::new(7, 50_000_000),
            last_output: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "client: action timed out after 7.0 seconds (timeout=7.0): curl --fail http://server:3000/todos"
        );
    }
}
