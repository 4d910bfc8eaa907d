//! `machinist check`: a test file's declaration and its Python script checked before anything
//! boots, and `machinist stubs`: type stubs from the same introspection.
//!
//! The script is compiled (CPython's `compile()`) and its AST walked by `checker.py`: unknown
//! machine names in `name.method(...)`, unknown `Machine` methods and argument counts that cannot
//! bind to the method's signature (`inspect.signature` of the binding's Machine class), calls of
//! unknown functions and wrong argument counts for the test-level functions.

pub mod stubs;

use std::ffi::CString;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use machinist_testfile::{HostPrograms, TestFile, TestFileError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::python::{self, machine::PyMachine};

/// The Python side of the checks (module `machinist_check`).
const CHECKER: &str = include_str!("checker.py");

/// One mistake found in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptProblem {
    /// The file tracebacks name (the script file, or the test file for an inline script).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScriptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why `check` failed.
#[derive(Debug)]
pub enum CheckError {
    /// The test file did not load (syntax, keys, templates, files, node names...).
    File(TestFileError),
    /// The script has mistakes.
    Script(Vec<ScriptProblem>),
    /// The checker itself failed (a bug, or a broken Python installation).
    Python(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::File(e) => write!(f, "{e}"),
            CheckError::Script(all) => {
                for (i, p) in all.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            CheckError::Python(e) => write!(f, "the script checker failed: {e}"),
        }
    }
}

/// What a successful check saw.
#[derive(Debug)]
pub struct Checked {
    /// The loaded test file.
    pub file: TestFile,
    /// How long loading and checking took.
    pub elapsed: Duration,
}

/// Loads `path` (every template rendered, every file resolved) and checks its script.
pub fn check_file(path: &Path, programs: &dyn HostPrograms) -> Result<Checked, CheckError> {
    let started = Instant::now();
    let file = TestFile::load(path, programs).map_err(CheckError::File)?;
    if let Some(script) = &file.script {
        let names: Vec<&str> = file.nodes.keys().map(String::as_str).collect();
        let problems =
            Python::attach(|py| check_script(py, &script.source, &script.filename, &names))
                .map_err(|e| CheckError::Python(e.to_string()))?;
        if !problems.is_empty() {
            return Err(CheckError::Script(problems));
        }
    }
    Ok(Checked {
        file,
        elapsed: started.elapsed(),
    })
}

/// The checker module.
fn checker(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let code = CString::new(CHECKER).expect("checker has no NUL");
    PyModule::from_code(py, &code, c"<machinist>/checker.py", c"machinist_check")
}

/// The globals a script of a test with these nodes sees (machines as placeholders), and the
/// machines' Python names.
fn script_globals<'py>(
    py: Python<'py>,
    nodes: &[&str],
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let machinist = python::init(py)?;
    let native = py.import("_machinist")?;
    let dict = PyDict::new(py);
    for f in python::FUNCTIONS {
        dict.set_item(*f, native.getattr(*f)?)?;
    }
    for s in python::PRELUDE_SYMBOLS {
        dict.set_item(*s, machinist.getattr(*s)?)?;
    }
    dict.set_item("os", py.import("os")?)?;
    dict.set_item("machines", PyList::empty(py))?;
    dict.set_item("nodes", machinist.getattr("AttrDict")?.call0()?)?;
    dict.set_item("vlans", PyList::empty(py))?;
    let mut idents = Vec::new();
    for n in nodes {
        let ident: String = machinist.call_method1("pythonize_name", (*n,))?.extract()?;
        idents.push(ident);
    }
    if nodes.len() == 1 {
        idents.push("machine".into());
    }
    Ok((dict, idents))
}

/// Checks a script for a test with `nodes`; an empty list means no mistake was found.
pub fn check_script(
    py: Python<'_>,
    source: &str,
    filename: &str,
    nodes: &[&str],
) -> PyResult<Vec<ScriptProblem>> {
    let (globals, machines) = script_globals(py, nodes)?;
    let cls = py.get_type::<PyMachine>();
    let found = checker(py)?.call_method1(
        "check",
        (source, filename, PyList::new(py, &machines)?, globals, cls),
    )?;
    let mut out = Vec::new();
    for item in found.try_iter()? {
        let (line, column, message): (usize, usize, String) = item?.extract()?;
        out.push(ScriptProblem {
            file: filename.to_string(),
            line,
            column,
            message,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
