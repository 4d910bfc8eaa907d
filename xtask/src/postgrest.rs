//! `cargo xtask test-postgrest`: the README's main job.
//!
//! 1. `deps`: the Debian packages (same code as `cargo xtask deps`);
//! 2. `build`: `cargo build` of the `machinist` binary (crates/cli, which bundles the tests crate)
//!    and of postgrest-lite;
//! 3. `images`: `machinist build-images` (the guest crate's image cache, with progress);
//! 4. `test`: `machinist run postgrest --output DIR`, whose nested NixOS-style log streams to the
//!    terminal;
//! 5. a summary read from the run's `log.jsonl` ([`summary`]): pass/fail, which PostgREST, time
//!    spent per phase, boot time per machine, the script and each subtest; on failure the
//!    artefact paths and exit code 1.
//!
//! xtask never links the cli (PyO3 needs python3-dev, which `deps` installs): it runs the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run::{cargo, show, ChildFailed};
use crate::{deps, summary};

/// Options of `cargo xtask test-postgrest`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A real postgrest binary (else `$MACHINIST_POSTGREST`, else postgrest-lite).
    pub postgrest: Option<PathBuf>,
    /// Keep the run directory (overlays, sockets) after the test.
    pub keep_state: bool,
    /// Where the logs and artefacts go.
    pub output: Option<PathBuf>,
    /// Boot every machine cold (no warm start from saved snapshots).
    pub cold_boot: bool,
    /// The nodes' backend (`vm` or `container`; default: `$MACHINIST_BACKEND`, else VMs).
    pub backend: Option<String>,
}

/// The environment variable the tests crate reads for a real PostgREST binary.
const ENV_POSTGREST: &str = "MACHINIST_POSTGREST";

/// Which server the run installs, as the summary says it.
pub fn which_postgrest(explicit: Option<&Path>) -> String {
    let user = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ENV_POSTGREST)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    match user {
        Some(p) => format!("real PostgREST ({})", p.display()),
        None => "postgrest-lite, the repository's PostgREST-compatible server for the tutorial's \
                 subset (give --postgrest PATH or MACHINIST_POSTGREST for a real binary)"
            .into(),
    }
}

/// The default output directory: `<target dir>/test-postgrest`.
pub fn default_output() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("test-postgrest")
}

/// Runs `f` as a phase, recording its wall time.
fn timed<T>(
    phases: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    eprintln!("xtask: ── {name} ──");
    let t0 = Instant::now();
    let r = f();
    let d = t0.elapsed();
    phases.push((name, d));
    eprintln!(
        "xtask: {name}: {} in {:.1} s",
        if r.is_ok() { "done" } else { "FAILED" },
        d.as_secs_f64()
    );
    r
}

/// `cargo xtask test-postgrest`.
pub fn run(opts: &Options) -> Result<()> {
    let total = Instant::now();
    let mut phases = Vec::new();
    if let Some(p) = &opts.postgrest {
        if !p.is_file() {
            bail!(
                "--postgrest {}: no such file (give the path of a postgrest binary)",
                p.display()
            );
        }
    }
    timed(&mut phases, "deps", deps::ensure)?;
    let bins = timed(&mut phases, "build", || {
        build_bins(opts.postgrest.is_none() && std::env::var_os(ENV_POSTGREST).is_none())
    })?;
    timed(&mut phases, "images", || {
        let mut build = Command::new(&bins.machinist);
        build.arg("build-images");
        // Container nodes need the images only, not the VMs' node snapshots.
        if let Some(b) = &opts.backend {
            build.env("MACHINIST_BACKEND", b);
        }
        crate::run::run(&mut build)
    })?;
    let output = opts.output.clone().unwrap_or_else(default_output);
    let mut cmd = Command::new(&bins.machinist);
    cmd.args(["run", "postgrest", "--output"]).arg(&output);
    if let Some(p) = &opts.postgrest {
        cmd.arg("--postgrest").arg(p);
    }
    if opts.keep_state {
        cmd.arg("--keep-state");
    }
    if opts.cold_boot {
        cmd.arg("--cold-boot");
    }
    if let Some(b) = &opts.backend {
        cmd.args(["--backend", b]);
    }
    // Ctrl-C stops the test (the machinist command cleans up and exits); xtask stays to print
    // the summary of what ran.
    crate::run::survive_ctrl_c();
    let test = timed(&mut phases, "test", || {
        eprintln!("xtask: $ {}", show(&cmd));
        cmd.status()
            .with_context(|| format!("starting `{}`", show(&cmd)))
    })?;
    let log = summary::parse_log_file(&output.join("log.jsonl"));
    let report = summary::Summary {
        passed: test.success(),
        postgrest: which_postgrest(opts.postgrest.as_deref()),
        phases,
        log,
        output: output.clone(),
        total: total.elapsed(),
    };
    eprint!("{}", report.render());
    if test.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let code = test
        .code()
        .or_else(|| test.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Err(ChildFailed {
        command: show(&cmd),
        code,
    }
    .into())
}

/// The executables `build` produced.
pub(crate) struct Bins {
    pub(crate) machinist: PathBuf,
}

/// `cargo build` of the machinist binary, and of postgrest-lite when it is the server, in the
/// same profile and target directory the binary later uses to find postgrest-lite. Two separate
/// builds, each exactly as its user runs it: building both packages in one cargo call unifies
/// their dependencies' features differently, and the binary's own `cargo build -p
/// postgrest-lite` would then rebuild half the dependency tree.
pub(crate) fn build_bins(with_lite: bool) -> Result<Bins> {
    let machinist = build_bin("machinist-cli", "machinist")?;
    if with_lite {
        build_bin("postgrest-lite", "postgrest-lite")?;
    }
    Ok(Bins { machinist })
}

/// `cargo build --package <package> --bin <bin>`; the executable's path.
fn build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", package, "--bin", bin]);
    cmd.args(["--message-format", "json-render-diagnostics"]);
    eprintln!("xtask: $ {}", show(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed (see the compiler's errors above; `cargo xtask deps` installs python3-dev, \
             which the machinist binary links)",
            show(&cmd)
        );
    }
    executable(&String::from_utf8_lossy(&out.stdout), bin)
        .with_context(|| format!("cargo reported no `{bin}` executable"))
}

/// The executable of binary target `name` in cargo's JSON messages.
pub fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"machinist_cli","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"machinist","kind":["bin"]},"executable":"/t/debug/machinist"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(msgs, "machinist"),
            Some(PathBuf::from("/t/debug/machinist"))
        );
        assert_eq!(executable(msgs, "postgrest-lite"), None);
    }

    #[test]
    fn names_the_real_binary_when_given() {
        assert_eq!(
            which_postgrest(Some(Path::new("/opt/postgrest"))),
            "real PostgREST (/opt/postgrest)"
        );
    }
}
