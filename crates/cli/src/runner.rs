//! Running a bundled test: its own script, a Python `--script`, or the REPL.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::args::RunArgs;
use crate::python::{self, machine::PyMachine, session::DriverSession, Namespace};
use crate::registry::{BundledTest, Script};
use crate::{EXIT_FAILURE, EXIT_PASS, EXIT_USAGE};

/// What to run once the machines are declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The test's own script, or `--script`.
    Run,
    /// The REPL (`machinist interactive`).
    Interactive,
}

/// The REPL's history file (in the current directory, like NixOS' `.nixos-test-history`).
pub const HISTORY_FILE: &str = ".machinist-history";

/// Runs `test` and returns the exit code.
pub fn run(test: &BundledTest, args: &RunArgs, mode: Mode) -> u8 {
    let script_file = match &args.script {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => Some((s, p.display().to_string())),
            Err(e) => {
                eprintln!("machinist: --script {}: {e}", p.display());
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let mut decl = match (test.declare)(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("machinist: {}: {e}", test.name);
            return EXIT_USAGE;
        }
    };
    if let Some(o) = &args.output {
        decl = decl.output_dir(o);
    }
    if let Some(t) = args.global_timeout {
        decl = decl.global_timeout(t);
    }
    decl = decl.keep_state(args.keep_state);
    if args.cold_boot {
        decl = decl.warm_start(false);
    }
    if let Some(b) = args.backend {
        decl = decl.backend(b.kind());
    }
    let run = match decl.start() {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("machinist: {}: could not set the test up: {e}", test.name);
            return EXIT_USAGE;
        }
    };
    let (rust, py_script) = match &test.script {
        Script::Rust(f) => (Some(f.clone()), None),
        Script::Python { filename, source } => (None, Some((source.clone(), filename.clone()))),
        Script::None => (None, None),
    };
    python::set_session(Arc::new(DriverSession::new(
        run.clone(),
        rust.clone(),
        py_script.clone(),
    )));
    let outcome = Python::attach(|py| -> machinist::Result<()> {
        let ns = namespace(py, &run).map_err(|e| machinist::Error::Script(e.to_string()))?;
        let outcome = match mode {
            Mode::Interactive => {
                if args.global_timeout.is_none() {
                    run.disarm_global_timeout();
                }
                repl(py, &ns, &test.name, &run);
                Ok(())
            }
            Mode::Run => {
                let chosen = script_file.clone().or(py_script.clone());
                let r = match (&chosen, &rust) {
                    (Some((source, filename)), _) => run.run_script(|_t| {
                        python::run_script(py, &ns, source, filename).map_err(|f| f.report.into())
                    }),
                    (None, Some(f)) => run.run_script(|t| f(t)),
                    (None, None) => Err(machinist::Error::Invalid(format!(
                        "test `{}` has no script of its own: give one with --script FILE.py",
                        test.name
                    ))),
                };
                if r.is_err() && args.debug_on_failure {
                    eprintln!("machinist: the test failed; the machines are still running. Ctrl-D ends the session.");
                    run.disarm_global_timeout();
                    repl(py, &ns, &test.name, &run);
                }
                r
            }
        };
        outcome
    });
    python::clear_session();
    let failed = outcome.is_err();
    let report = match Arc::try_unwrap(run) {
        Ok(run) => run.finish(outcome),
        // Something still holds the run (a Python thread?): dropping it cleans up without a report.
        Err(_) => outcome.map(|_| unreachable_report()),
    };
    // The machines are gone: bound the cache (MACHINIST_CACHE_MAX_BYTES).
    crate::cache::bound_after_run();
    match report {
        Ok(r) => {
            if let Some(j) = &args.junit {
                if let Err(e) = copy(&r.junit, j) {
                    eprintln!("machinist: writing --junit {}: {e}", j.display());
                }
            }
            EXIT_PASS
        }
        Err(e) => {
            if !failed {
                eprintln!("machinist: {}: {e}", test.name);
            }
            EXIT_FAILURE
        }
    }
}

fn unreachable_report() -> machinist::Report {
    machinist::Report {
        name: String::new(),
        output_dir: PathBuf::new(),
        json_log: PathBuf::new(),
        junit: PathBuf::new(),
        artefacts: Vec::new(),
        duration: Default::default(),
    }
}

fn copy(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).map(|_| ())
}

fn namespace<'py>(py: Python<'py>, run: &machinist::TestRun) -> PyResult<Namespace<'py>> {
    let ns = Namespace::new(py)?;
    for m in run.machines() {
        let name = m.name().to_string();
        ns.add_machine(&name, Bound::new(py, PyMachine::new(m))?.into_any())?;
    }
    for node in run.nodes() {
        let config = serde_json::to_value(node.config())
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        ns.add_node(node.name(), &config)?;
    }
    Ok(ns)
}

fn repl(py: Python<'_>, ns: &Namespace<'_>, name: &str, run: &machinist::TestRun) {
    let machines: Vec<String> = run
        .machines()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let first = machines
        .first()
        .cloned()
        .unwrap_or_else(|| "machine".into());
    let banner = format!(
        "Machinist interactive driver: test `{name}`, machines: {}.\n\
         Try: start_all(), {first}.succeed('echo \"Hello, world!\"'), help({first}).\n\
         A failing command raises and leaves the machines running; Ctrl-C interrupts the command;\n\
         Ctrl-D stops every machine and exits.",
        machines.join(", ")
    );
    if let Err(e) = python::repl(py, ns, Some(std::path::Path::new(HISTORY_FILE)), &banner) {
        eprintln!("machinist: the REPL failed: {e}");
    }
}
