//! `machinist stubs DIR`: `machinist.pyi`, Python type stubs for the Machine API and the globals
//! a test script sees, with their docstrings, so that editors complete `server.wait_for_unit(...)`.
//! Generated from the same introspection as `machinist check`.

use std::fmt::Write as _;

use pyo3::prelude::*;

use super::{checker, script_globals};
use crate::python::machine::PyMachine;

/// The file name `machinist stubs` writes.
pub const STUBS_FILE: &str = "machinist.pyi";

/// A function: name, signature text, docstring.
type Function = (String, Option<String>, String);
/// A Machine attribute: name, signature text, docstring, is a property.
type Method = (String, Option<String>, String, bool);
/// Another global: name, kind (`class Base, ...` or a type name), docstring.
type Other = (String, String, String);

/// The stub text; `nodes` (if any) are declared as `Machine` globals.
pub fn render(py: Python<'_>, nodes: &[&str]) -> PyResult<String> {
    let (globals, _) = script_globals(py, &[])?;
    let cls = py.get_type::<PyMachine>();
    let (methods, functions, others): (Vec<Method>, Vec<Function>, Vec<Other>) = checker(py)?
        .call_method1("api", (cls, globals))?
        .extract()?;
    let mut out = String::new();
    out.push_str(
        "\"\"\"Type stubs for Machinist test scripts (written by `machinist stubs`).\n\n\
         A test script sees these names as globals; `from machinist import *` at the top of a\n\
         script changes nothing at run time and lets an editor find them here.\n\"\"\"\n\n\
         from typing import Any\n\n",
    );
    // Exception classes first: functions may name them.
    // Exception classes first (functions may name them), each after its bases.
    let mut classes: Vec<&(String, String, String)> = others
        .iter()
        .filter(|o| o.1.starts_with("class "))
        .collect();
    let mut emitted: Vec<String> = Vec::new();
    while !classes.is_empty() {
        let ready = classes
            .iter()
            .position(|(_, kind, _)| {
                kind.trim_start_matches("class ").split(", ").all(|b| {
                    emitted.iter().any(|e| e == b) || !classes.iter().any(|(n, _, _)| n == b)
                })
            })
            .unwrap_or(0);
        let (name, kind, doc) = classes.remove(ready);
        let bases = kind.trim_start_matches("class ");
        let _ = writeln!(out, "class {name}({bases}):");
        let _ = writeln!(out, "{}    ...\n", docstring(doc, "    "));
        emitted.push(name.clone());
    }
    out.push_str("class Machine:\n    \"\"\"One machine of the test (NixOS `Machine`).\"\"\"\n\n");
    for (name, sig, doc, is_prop) in &methods {
        if *is_prop {
            let _ = writeln!(out, "    @property\n    def {name}(self) -> Any:");
        } else {
            let sig = sig.as_deref().unwrap_or("(*args, **kwargs)");
            let params = sig.trim_start_matches('(');
            let sep = if params.starts_with(')') { "" } else { ", " };
            let _ = writeln!(out, "    def {name}(self{sep}{params} -> Any:");
        }
        let _ = writeln!(out, "{}        ...\n", docstring(doc, "        "));
    }
    for (name, sig, doc) in &functions {
        let sig = sig.as_deref().unwrap_or("(*args, **kwargs)");
        let _ = writeln!(out, "def {name}{sig} -> Any:");
        let _ = writeln!(out, "{}    ...\n", docstring(doc, "    "));
    }
    for (name, kind, _) in others.iter().filter(|o| !o.1.starts_with("class ")) {
        let ty = match (name.as_str(), kind.as_str()) {
            ("machines", _) => "list[Machine]".to_string(),
            ("nodes", _) => "Any".to_string(),
            ("vlans", _) => "list[Any]".to_string(),
            (_, "module") => "Any".to_string(),
            (_, k) => k.to_string(),
        };
        let _ = writeln!(out, "{name}: {ty}");
    }
    for n in nodes {
        let ident: String = crate::python::init(py)?
            .call_method1("pythonize_name", (*n,))?
            .extract()?;
        let _ = writeln!(out, "{ident}: Machine");
    }
    if nodes.len() == 1 {
        out.push_str("machine: Machine\n");
    }
    Ok(out)
}

/// A docstring block indented by `indent` (empty when there is no doc).
fn docstring(doc: &str, indent: &str) -> String {
    if doc.trim().is_empty() {
        return String::new();
    }
    let body = doc
        .trim()
        .replace('\\', "\\\\")
        .replace("\"\"\"", "\\\"\\\"\\\"");
    let mut s = format!("{indent}\"\"\"");
    for (i, line) in body.lines().enumerate() {
        if i > 0 {
            s.push('\n');
            if !line.is_empty() {
                s.push_str(indent);
            }
        }
        s.push_str(line);
    }
    if body.contains('\n') {
        let _ = write!(s, "\n{indent}");
    }
    s.push_str("\"\"\"\n");
    s
}
