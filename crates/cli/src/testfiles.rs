//! Test files on the command line: `machinist run path/to/test.toml` (or a directory holding a
//! `test.toml`) checks the file and its script, then runs it like a bundled test.

use std::path::{Path, PathBuf};

use machinist_testfile::HostPrograms;
use machinist_tests::postgrest_binary;

use crate::args::RunArgs;
use crate::check::{self, CheckError};
use crate::registry::BundledTest;

/// The host programs a test file's `host_program` entries may name: `postgrest` (postgrest-lite,
/// or the real binary from `--postgrest` / `MACHINIST_POSTGREST`), else any program on `PATH`.
#[derive(Debug, Clone, Default)]
pub struct CliPrograms {
    /// `--postgrest PATH`, if given.
    pub postgrest: Option<PathBuf>,
}

impl HostPrograms for CliPrograms {
    fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        if name == "postgrest" {
            let binary =
                postgrest_binary::resolve(self.postgrest.as_deref()).map_err(|e| e.to_string())?;
            eprintln!("machinist: PostgREST server: {binary}");
            return Ok(binary.path);
        }
        find_on_path(name).ok_or_else(|| {
            format!(
                "no program `{name}` on PATH (host programs: `postgrest`, or any program on PATH)"
            )
        })
    }
}

/// `name` as a file in one of `$PATH`'s directories.
fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// If `arg` names a test file: checks it (declaration, templates, script) and returns it as a
/// bundled test whose script is the file's. `Ok(None)`: not a test file (a bundled test's name).
/// `Err`: the file or its script has mistakes (the message lists them).
pub fn load(arg: &str, args: &RunArgs) -> Result<Option<BundledTest>, String> {
    let Some(path) = machinist_testfile::locate(arg) else {
        return Ok(None);
    };
    let programs = CliPrograms {
        postgrest: args.postgrest.clone(),
    };
    let checked = check::check_file(&path, &programs).map_err(|e| match e {
        CheckError::Script(_) => format!(
            "{e}\nmachinist: {}: the script has mistakes (found before booting anything; `machinist check` repeats this check)",
            path.display()
        ),
        other => other.to_string(),
    })?;
    let file = checked.file;
    let about = format!("test file {}", path.display());
    let script = file.script.clone();
    let declare_from = file.clone();
    let mut test = BundledTest::new(file.name.clone(), about, move |_args| {
        Ok(declare_from.declare())
    });
    if let Some(s) = script {
        test = test.python_script(s.filename, s.source);
    }
    Ok(Some(test))
}
