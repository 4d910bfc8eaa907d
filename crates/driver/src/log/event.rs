//! Typed log events: the facts a test run reports (a machine started, its shell connected, a
//! subtest finished, an artefact was kept), with their values as fields, so that tools read the
//! JSON log without matching the wording of human lines.

use serde::{Serialize, Serializer};
use std::path::PathBuf;

use super::terminal::Kind;

/// One fact of a test run, logged with [`crate::Logger::event`] (or, for the start and end of
/// a block, [`crate::Logger::begin_event`] and [`crate::Span::end`]).
///
/// # In the JSON log
///
/// The record of an event is the record its human line would have anyway, plus an `event`
/// object holding the variant's name (snake case) and its fields:
///
/// ```json
/// {"time":4.2,"type":"log","parent":3,"machine":"server","message":"connected to guest root shell",
///  "event":{"name":"connected","machine":"server","seconds":4.12}}
/// ```
///
/// * an event with a human line ([`Event::message`] is `Some`) is a `log` record (an `error`
///   record for a failed subtest) with `parent`, `machine` and `message`;
/// * an event without one (JSON only: [`Event::Command`], [`Event::Settle`],
///   [`Event::ImageReady`]) is an `event` record with `parent` and `machine`, no `message`;
/// * [`Event::StartAll`], [`Event::ScriptStarted`] and [`Event::SubtestStarted`] open a block:
///   they ride on its `nest` record; [`Event::ScriptFinished`] and [`Event::SubtestFinished`] close
///   it and ride on its `finished` record.
///
/// `machine` is the machine the event is about (`null` for events about the run). Durations
/// (`seconds`) are seconds with millisecond precision; paths are strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A machine is being started (`starting vm`, `starting container`).
    Starting {
        /// The machine.
        machine: String,
        /// What it runs on.
        backend: machinist_guest::NodeBackend,
    },
    /// A machine's runtime runs (`QEMU running (pid N)`, `container running (pid N)`); the
    /// guest is booting or restored.
    Started {
        /// The machine.
        machine: String,
        /// What it runs on.
        backend: machinist_guest::NodeBackend,
        /// Restored from a snapshot, or booted from scratch.
        kind: BootKind,
        /// The process id of QEMU, or of the container's host process.
        pid: u32,
        /// Seconds from starting to QEMU running (for a warm start: the restore).
        #[serde(serialize_with = "millis")]
        seconds: f64,
        /// Why the machine boots cold, or the snapshot key it was restored from.
        reason: Option<String>,
        /// This start built the node snapshot it was restored from (the node's first run).
        built_snapshot: bool,
    },
    /// The guest's root shell answered (`connected to guest root shell`, then `(connecting took
    /// N.NN seconds)`).
    Connected {
        /// The machine.
        machine: String,
        /// Seconds spent connecting.
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    /// A timed wait first let every booting machine finish booting (JSON only).
    Settle {
        /// The machines that were still booting, in name order.
        machines: Vec<String>,
        /// What waited (the timed wait's description).
        reason: String,
        /// Seconds spent settling.
        #[serde(serialize_with = "millis")]
        seconds: f64,
        /// Whether every machine finished booting.
        ok: bool,
    },
    /// A guest command ended (JSON only).
    Command {
        /// The machine.
        machine: String,
        /// The command line as given.
        command: String,
        /// Its exit code.
        code: i32,
        /// Seconds it ran (host side, round trip included).
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    /// A disk image is ready for the run (JSON only; its block is `ensuring image NAME`).
    ImageReady {
        /// The image's name.
        image: String,
        /// Whether the run built it (`false`: taken from the cache).
        built: bool,
        /// Seconds spent getting it.
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    /// Every machine is being started (the block `start all VMs`).
    StartAll,
    /// The test script starts (the block `run the VM test script`).
    ScriptStarted,
    /// The test script ended (closes its block).
    ScriptFinished {
        /// Whether it succeeded.
        ok: bool,
        /// Seconds it ran.
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    /// A subtest starts (the block `subtest: NAME`; opens its JUnit test case).
    SubtestStarted {
        /// The subtest's name (not `name`: that key is the event's own name).
        subtest: String,
    },
    /// A subtest ended (closes its block and JUnit test case; a failure prints `Test "NAME"
    /// failed with error: "ERROR"`).
    SubtestFinished {
        /// The subtest's name.
        subtest: String,
        /// Whether it succeeded.
        ok: bool,
        /// Seconds it ran.
        #[serde(serialize_with = "millis")]
        seconds: f64,
        /// Why it failed.
        error: Option<String>,
    },
    /// Where the run's artefacts are (`output directory: PATH`); its [`Event::Artefact`]s follow.
    OutputDirectory {
        /// The output directory.
        path: PathBuf,
    },
    /// A file the run kept for the user (`  PATH`, listed after the output directory).
    Artefact {
        /// The file.
        path: PathBuf,
        /// What it holds.
        kind: ArtefactKind,
    },
}

/// How a machine started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootKind {
    /// Restored from a warm-start snapshot.
    Warm,
    /// Booted from scratch.
    Cold,
}

/// What an artefact file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArtefactKind {
    /// A machine's serial console log.
    ConsoleLog,
    /// A machine's systemd journal.
    Journal,
    /// A screenshot.
    Screenshot,
    /// A packet capture of a network.
    Pcap,
    /// The JUnit XML report.
    Junit,
    /// The JSON-lines log.
    JsonLog,
    /// Anything else.
    Other,
}

impl Event {
    /// The human line of this event (printed on the terminal after `<machine>: `, and kept as the
    /// record's `message`), or `None` for an event that is only in the JSON log.
    pub fn message(&self) -> Option<String> {
        self.lines().into_iter().next()
    }

    /// Every human line of this event, in order (the first is [`Event::message`]; a following
    /// one is a plain log line of its own, as before events existed).
    pub(crate) fn lines(&self) -> Vec<String> {
        match self {
            Event::Starting { backend, .. } => vec![format!("starting {backend}")],
            Event::Started {
                backend: machinist_guest::NodeBackend::Vm,
                pid,
                ..
            } => vec![format!("QEMU running (pid {pid})")],
            Event::Started { backend, pid, .. } => vec![format!("{backend} running (pid {pid})")],
            Event::Connected { seconds, .. } => vec![
                "connected to guest root shell".into(),
                format!("(connecting took {seconds:.2} seconds)"),
            ],
            Event::Settle { .. } | Event::Command { .. } | Event::ImageReady { .. } => vec![],
            Event::StartAll => vec!["start all VMs".into()],
            Event::ScriptStarted => vec!["run the VM test script".into()],
            Event::ScriptFinished { .. } => vec![],
            Event::SubtestStarted { subtest } => vec![format!("subtest: {subtest}")],
            Event::SubtestFinished {
                subtest,
                ok: false,
                error,
                ..
            } => vec![format!(
                "Test \"{subtest}\" failed with error: \"{}\"",
                error.as_deref().unwrap_or("")
            )],
            Event::SubtestFinished { .. } => vec![],
            Event::OutputDirectory { path } => {
                vec![format!("output directory: {}", path.display())]
            }
            Event::Artefact { path, .. } => vec![format!("  {}", path.display())],
        }
    }

    /// The machine the event is about (the record's `machine`).
    pub fn machine(&self) -> Option<&str> {
        match self {
            Event::Starting { machine, .. }
            | Event::Started { machine, .. }
            | Event::Connected { machine, .. }
            | Event::Command { machine, .. } => Some(machine),
            _ => None,
        }
    }

    /// For an event that ends a block: whether the block succeeded.
    pub(crate) fn ok(&self) -> Option<bool> {
        match self {
            Event::ScriptFinished { ok, .. } | Event::SubtestFinished { ok, .. } => Some(*ok),
            _ => None,
        }
    }

    /// How its human line looks on the terminal.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Event::SubtestFinished { ok: false, .. } => Kind::Error,
            Event::StartAll | Event::ScriptStarted | Event::SubtestStarted { .. } => Kind::Nest,
            _ => Kind::Info,
        }
    }
}

fn millis<S: Serializer>(seconds: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((seconds * 1000.0).round() / 1000.0)
}
