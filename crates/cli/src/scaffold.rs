//! `machinist new NAME` (a runnable test directory) and `machinist stubs DIR` (Python type stubs).

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

use crate::check::stubs;

/// The script `machinist new` writes.
pub const NEW_SCRIPT: &str = "\
# The test script: Python, with the NixOS test driver's API (`machinist stubs .` writes type
# stubs for editors). Each machine is a global named like its node.
start_all()
machine.wait_for_unit(\"multi-user.target\")
machine.succeed(\"true\")
assert machine.succeed(\"echo hello\") == \"hello\\n\"
";

/// The test file `machinist new NAME` writes.
pub fn new_test_toml(name: &str) -> String {
    format!(
        "# A Machinist test file: `machinist run {name}/test.toml`, `machinist check {name}`.\n\
         # Keys: see the machinist-testfile README (nodes, files, services, users, vars, ...).\n\
         name = \"{name}\"\n\
         script_file = \"script.py\"\n\
         \n\
         [nodes.machine]\n\
         # packages = [\"curl\"]\n\
         # memory_mib = 1024\n"
    )
}

/// Writes `dir/test.toml` and `dir/script.py`; refuses if `dir` exists. Returns the files.
pub fn new_test(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: give a directory name for the new test", dir.display()))?;
    if name.is_empty() || name.contains(['"', '\\']) || name.chars().any(char::is_control) {
        return Err(format!("{name:?}: not usable as a test name"));
    }
    if dir.exists() {
        return Err(format!(
            "{}: already exists; `machinist new` never overwrites (choose another name or remove it)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let files = [
        (
            dir.join(machinist_testfile::DEFAULT_FILE),
            new_test_toml(name),
        ),
        (dir.join("script.py"), NEW_SCRIPT.to_string()),
    ];
    for (p, text) in &files {
        write_new(p, text)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Creates `path` with `text`, failing if it exists.
fn write_new(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// Writes `dir/machinist.pyi` (replacing an older one); with `dir/test.toml`, its machines are
/// declared too.
pub fn write_stubs(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let toml = dir.join(machinist_testfile::DEFAULT_FILE);
    let nodes = if toml.is_file() {
        let text =
            std::fs::read_to_string(&toml).map_err(|e| format!("{}: {e}", toml.display()))?;
        machinist_testfile::node_names(&text)
    } else {
        Vec::new()
    };
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let text = Python::attach(|py| stubs::render(py, &names))
        .map_err(|e| format!("generating the stubs failed: {e}"))?;
    let path = dir.join(stubs::STUBS_FILE);
    std::fs::write(&path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok(path)
}
