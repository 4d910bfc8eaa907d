//! Machinist test files: one TOML file declares what a NixOS `nixosTest` declares — the test's
//! name, shared `[vars]`, `[nodes.NAME]` with everything a [`NodeConfig`] offers, and the Python
//! test script (inline or as a file) — so a test needs no Rust.
//!
//! [`TestFile::load`] reads and checks a file; [`TestFile::declare`] turns it into a driver
//! [`machinist::Test`] (without a script: the `machinist` command runs [`TestFile::script`] with
//! its Python layer). Every error names the file, the line and column, and the key; an unknown
//! key lists the valid ones. See the crate README for the full key reference.
//!
//! ```no_run
//! use machinist_testfile::{NoHostPrograms, TestFile};
//!
//! let file = TestFile::load("tests/hello/test.toml".as_ref(), &NoHostPrograms).unwrap();
//! println!("{}: nodes {:?}", file.name, file.nodes.keys().collect::<Vec<_>>());
//! let test = file.declare();
//! test.validate().unwrap();
//! ```

mod build;
pub mod error;
mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use machinist::NodeConfig;

pub use error::{Located, TestFileError};

/// The file name a test directory holds (`machinist run DIR` looks for `DIR/test.toml`).
pub const DEFAULT_FILE: &str = "test.toml";

/// Resolves the names of `host_program` file entries to files on the host (the `machinist`
/// command knows `postgrest`, for instance).
pub trait HostPrograms {
    /// The host file that provides program `name`, or why there is none.
    fn resolve(&self, name: &str) -> Result<PathBuf, String>;
}

/// Knows no host program: every `host_program` entry is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHostPrograms;

impl HostPrograms for NoHostPrograms {
    fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        Err(format!(
            "no host program `{name}` is known here (use `source = \"path\"` for a file beside the test)"
        ))
    }
}

/// The Python test script of a test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSource {
    /// The name tracebacks show: the script file, or the test file for an inline script.
    pub filename: String,
    /// The source. An inline script is preceded by blank lines so that its line numbers are the
    /// test file's.
    pub source: String,
    /// The line of the test file (or script file) where the script's first line is.
    pub first_line: usize,
    /// The `script_patch` applied to the script, if any.
    pub patch: Option<ScriptPatch>,
}

/// A `script_patch`: a unified diff the loader applied to the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPatch {
    /// The patch file.
    pub path: PathBuf,
    /// How many lines of the script it changes: removed plus added lines.
    pub changed_lines: usize,
}

/// A loaded, checked test file.
#[derive(Debug, Clone, PartialEq)]
pub struct TestFile {
    /// The test file.
    pub path: PathBuf,
    /// Its directory (relative paths in the file are relative to it).
    pub dir: PathBuf,
    /// The test's name (`name = "..."`).
    pub name: String,
    /// The shared constants (`[vars]`), rendered as text.
    pub vars: BTreeMap<String, String>,
    /// The nodes, by name, with templates rendered and paths resolved.
    pub nodes: BTreeMap<String, NodeConfig>,
    /// The Python test script (`script` or `script_file`), if any.
    pub script: Option<ScriptSource>,
    /// `global_timeout` (seconds), if set.
    pub global_timeout: Option<Duration>,
}

impl TestFile {
    /// Reads and checks the test file at `path` (a `.toml` file, or a directory holding a
    /// `test.toml`).
    pub fn load(path: &Path, programs: &dyn HostPrograms) -> Result<TestFile, TestFileError> {
        let path = if path.is_dir() {
            path.join(DEFAULT_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| TestFileError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text, programs)
    }

    /// Checks `text` as the contents of the test file `path` (its directory anchors relative
    /// paths; nothing else is read from `path`).
    pub fn parse(
        path: &Path,
        text: &str,
        programs: &dyn HostPrograms,
    ) -> Result<TestFile, TestFileError> {
        let raw: raw::RawTest = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let mut located = Located::at(path, text, e.span(), None, message);
            // "missing field `x`" names its key itself; the span is the enclosing table.
            if located.message.starts_with("missing field") {
                located.key = None;
            }
            TestFileError::Syntax(Box::new(located))
        })?;
        build::build(path, text, raw, programs)
    }

    /// The driver declaration: the test's name and nodes (and `global_timeout`), without a
    /// script.
    pub fn declare(&self) -> machinist::Test<'static> {
        let mut test = machinist::Test::new(&self.name);
        for (name, cfg) in &self.nodes {
            test = test.node(name, cfg.clone());
        }
        if let Some(t) = self.global_timeout {
            test = test.global_timeout(t);
        }
        test
    }
}

/// The test file an argument names, if it is one: an existing `.toml` file, or a directory that
/// holds a `test.toml`. Anything else (a bundled test's name) is `None`.
pub fn locate(arg: &str) -> Option<PathBuf> {
    let p = Path::new(arg);
    if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
        Some(p.to_path_buf())
    } else if p.is_dir() && p.join(DEFAULT_FILE).is_file() {
        Some(p.join(DEFAULT_FILE))
    } else {
        None
    }
}

/// Every file named `test.toml` under `dir` (recursively), sorted by path.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let p = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() && p.file_name().is_some_and(|n| n == DEFAULT_FILE) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The node names a test file's text declares (`[nodes.NAME]`), sorted; empty when the text is
/// not TOML. Reads nothing else (no template, no host program), for tools such as type stubs.
pub fn node_names(text: &str) -> Vec<String> {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("nodes").and_then(|n| n.as_table()).cloned())
        .map(|n| n.keys().cloned().collect())
        .unwrap_or_default()
}
