//! Which PostgREST server the tutorial test installs on the server machine.
//!
//! No package registry we can reach ships PostgREST (a Haskell program), so by default the test
//! builds `postgrest-lite` (crates/postgrest-lite) on the host and installs it as
//! `/usr/local/bin/postgrest`. A user with a real binary sets `MACHINIST_POSTGREST=/path/to/postgrest`
//! (or passes `--postgrest PATH` to `machinist run` / `cargo xtask test-postgrest`), and the test
//! installs that instead. Logs and the summary say which one ran.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming a real `postgrest` binary to use instead of postgrest-lite.
pub const ENV_POSTGREST: &str = "MACHINIST_POSTGREST";

/// A PostgREST server binary on the host, ready to be copied into the server machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgrestBinary {
    /// The file on the host.
    pub path: PathBuf,
    /// Whether it is the real PostgREST or postgrest-lite.
    pub kind: PostgrestKind,
}

/// The two servers the test can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgrestKind {
    /// A real `postgrest` binary the user provided.
    Real,
    /// postgrest-lite, built from this repository.
    Lite,
}

impl fmt::Display for PostgrestBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PostgrestKind::Real => write!(f, "real PostgREST ({})", self.path.display()),
            PostgrestKind::Lite => write!(
                f,
                "postgrest-lite, a PostgREST-compatible server for the tutorial's subset ({})",
                self.path.display()
            ),
        }
    }
}

/// Why no PostgREST binary could be provided.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// The user-provided binary does not exist or is not executable.
    #[error(
        "{path}: {why}; {ENV_POSTGREST} / --postgrest must name an executable postgrest binary"
    )]
    BadUserBinary {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No postgrest-lite beside the `machinist` program or on `PATH` (an installed `machinist`).
    #[error(
        "postgrest-lite is not installed: run `cargo install --path crates/postgrest-lite` from \
         the Machinist source tree (it goes beside `machinist`), or give {ENV_POSTGREST} / \
         --postgrest PATH for a real PostgREST"
    )]
    NotInstalled,
    /// Building postgrest-lite failed.
    #[error("building postgrest-lite failed: {0}; run `cargo build -p postgrest-lite` to see the compiler's errors")]
    Build(String),
}

/// The binary to install: `explicit` if given, else `$MACHINIST_POSTGREST`, else postgrest-lite:
/// built now with cargo when the running program is a build of this source tree (quick when it
/// is up to date), else the installed `postgrest-lite` beside the running program or on `PATH`
/// (`cargo install --path crates/postgrest-lite`).
pub fn resolve(explicit: Option<&Path>) -> Result<PostgrestBinary, BinaryError> {
    let user = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ENV_POSTGREST)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let lite = |path| PostgrestBinary {
        path,
        kind: PostgrestKind::Lite,
    };
    match user {
        Some(path) => check_user_binary(path),
        None if built_from_this_tree() => build_lite().map(lite),
        None => installed_lite().map(lite),
    }
}

/// The installed postgrest-lite's program name.
pub const LITE_PROGRAM: &str = "postgrest-lite";

/// Whether the running program was built in this source tree (its `target` directory), so that
/// postgrest-lite is built from the same sources.
fn built_from_this_tree() -> bool {
    let root = workspace_root();
    root.join("crates/postgrest-lite/Cargo.toml").is_file()
        && std::env::current_exe().is_ok_and(|exe| exe.starts_with(root.join("target")))
}

/// postgrest-lite beside the running program, else on `PATH`.
fn installed_lite() -> Result<PathBuf, BinaryError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(LITE_PROGRAM)));
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(LITE_PROGRAM))
            .find(|c| c.is_file())
    });
    beside
        .filter(|c| c.is_file())
        .or(on_path)
        .ok_or(BinaryError::NotInstalled)
}

fn check_user_binary(path: PathBuf) -> Result<PostgrestBinary, BinaryError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| BinaryError::BadUserBinary {
        path: path.clone(),
        why,
    };
    let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not an executable file".into()));
    }
    Ok(PostgrestBinary {
        path,
        kind: PostgrestKind::Real,
    })
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Builds postgrest-lite with cargo and returns a stripped copy of the executable (debug info
/// would only make the server's initrd bigger).
fn build_lite() -> Result<PathBuf, BinaryError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--package",
            "postgrest-lite",
            "--bin",
            "postgrest-lite",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .output()
        .map_err(|e| {
            BinaryError::Build(format!("cannot run {}: {e}", Path::new(&cargo).display()))
        })?;
    if !out.status.success() {
        return Err(BinaryError::Build(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "postgrest-lite")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| BinaryError::Build("cargo reported no postgrest-lite executable".into()))?;
    let stripped = exe.with_file_name("postgrest-lite.stripped");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&exe)
        .arg(&stripped)
        .status();
    match status {
        Ok(s) if s.success() => Ok(stripped),
        // No binutils: the unstripped binary works too, it is only bigger.
        _ => Ok(exe),
    }
}
