//! Project automation for Machinist: `cargo xtask <command>` (see `cargo xtask --help`).
//!
//! Commands: `deps` (Debian packages), `test` (deps + the whole test suite), `test-postgrest` (the
//! README's main job), `corpus` (nixpkgs tests run unchanged, `tests/nixos/`), `build-images`, `interactive <test>`, `ci` (what CI runs), `check-features`
//! (optional cargo features), and `bench` (each crate's benchmark beside its baseline).
//!
//! xtask stays free of the workspace's heavy crates (the `machinist` binary links libpython
//! through PyO3, whose python3-dev `deps` installs): the commands that need the binary build it
//! with cargo and run it as a subprocess.

mod bench;
mod check_features;
mod corpus;
mod deps;
mod postgrest;
mod run;
mod summary;
mod test;
mod timing;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Project automation for Machinist.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the Debian packages the project needs (as root; otherwise print the command).
    Deps {
        /// Only list the packages and who needs them.
        #[arg(long)]
        list: bool,
    },
    /// Install system packages, then run the whole test suite (nextest when installed).
    Test {
        /// Extra arguments for `cargo nextest run` / `cargo test` (e.g. a test filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job: the PostgREST tutorial test in two VMs, with a timing summary.
    TestPostgrest {
        /// Install this real postgrest binary (default: $MACHINIST_POSTGREST, else postgrest-lite).
        #[arg(long, value_name = "PATH")]
        postgrest: Option<PathBuf>,
        /// Keep the run directory (overlays, sockets) after the test.
        #[arg(long)]
        keep_state: bool,
        /// Write logs and artefacts here (default: target/test-postgrest).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Boot every machine cold instead of restoring saved snapshots (warm start).
        #[arg(long)]
        cold_boot: bool,
        /// Run the nodes as `vm` (QEMU, the default) or `container` (systemd-nspawn).
        #[arg(long, value_parser = ["vm", "container"])]
        backend: Option<String>,
    },
    /// The NixOS compatibility corpus (tests/nixos): real nixpkgs tests, their scripts unchanged.
    Corpus {
        /// Only these tests (directory names under tests/nixos); all by default.
        names: Vec<String>,
        /// Only prove that each script.py is its upstream testScript (no VM).
        #[arg(long)]
        check: bool,
        /// Boot every machine cold instead of from node snapshots.
        #[arg(long)]
        cold_boot: bool,
        /// Write the result table into tests/nixos/README.md.
        #[arg(long)]
        readme: bool,
    },
    /// Build (or reuse) the guest images the bundled tests need.
    BuildImages {
        /// Rebuild even when the cache has them.
        #[arg(long)]
        rebuild: bool,
    },
    /// Open the Python REPL on a bundled test's machines, e.g. `interactive postgrest`.
    Interactive {
        /// The bundled test's name.
        test: String,
    },
    /// Benchmarks: print `bench <name>: <metric> ours=<v> baseline=<v> ratio=<r> baseline_kind=<k>`
    /// (`k`: `competitor` = another implementation, `ablation` = ours with a feature turned off).
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = BenchKind::All)]
        which: BenchKind,
    },
    /// Run exactly what CI runs (`bash .ci/run`).
    Ci,
    /// Build every optional cargo feature of every crate (installs their extra Debian packages).
    CheckFeatures,
}

/// The benchmarks `cargo xtask bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Guest boot to backdoor greeting under TCG (crates/guest).
    Boot,
    /// Backdoor command round trips vs the NixOS protocol (crates/backdoor).
    Backdoor,
    /// Virtual switch throughput vs vde_switch (crates/netsim).
    Switch,
    /// OCR speed and accuracy vs the NixOS pipeline (crates/ocr).
    Ocr,
    /// Warm start from saved VM state vs cold boot.
    Warm,
    /// Driver: polling conditions and waits vs the NixOS behaviour.
    Driver,
    /// Container nodes vs VMs on the PostgREST test (`machinist run postgrest`, both backends).
    Backend,
    /// All of the above.
    All,
}

/// The workspace root (xtask/..), whatever directory cargo was started in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `cargo run` of the `machinist` binary (crates/cli) with `args`.
fn machinist(args: &[&str]) -> anyhow::Result<()> {
    run::run(
        run::cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "machinist-cli",
                "--bin",
                "machinist",
                "--",
            ])
            .args(args),
    )
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Paths the user gave are relative to where they typed the command, not to the workspace.
    if let Cmd::TestPostgrest {
        postgrest, output, ..
    } = &mut cli.command
    {
        for p in [postgrest, output].into_iter().flatten() {
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
    }
    if let Err(e) = std::env::set_current_dir(workspace_root()) {
        eprintln!("xtask: cannot enter the workspace root: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Cmd::Deps { list: true } => {
            for p in deps::PACKAGES {
                println!("{:<20} {}", p.name, p.why);
            }
            Ok(())
        }
        Cmd::Deps { list: false } => timing::phase("deps", deps::ensure),
        Cmd::Test { args } => test::run_suite(&args),
        Cmd::TestPostgrest {
            postgrest,
            keep_state,
            output,
            cold_boot,
            backend,
        } => postgrest::run(&postgrest::Options {
            postgrest,
            keep_state,
            output,
            cold_boot,
            backend,
        }),
        Cmd::Corpus {
            names,
            check,
            cold_boot,
            readme,
        } => corpus::run_corpus(
            &workspace_root(),
            &corpus::Options {
                only: names,
                check,
                cold_boot,
                readme,
            },
        ),
        Cmd::BuildImages { rebuild } => {
            let mut args = vec!["build-images"];
            if rebuild {
                args.push("--rebuild");
            }
            deps::ensure().and_then(|()| machinist(&args))
        }
        Cmd::Interactive { test } => deps::ensure().and_then(|()| {
            // Ctrl-C belongs to the REPL (it interrupts the running guest command); xtask must
            // outlive it, or the shell takes the terminal back from a REPL still running.
            run::survive_ctrl_c();
            machinist(&["interactive", &test])
        }),
        Cmd::Bench { which } => bench::bench(which),
        Cmd::Ci => run::run(std::process::Command::new("bash").arg(".ci/run")),
        Cmd::CheckFeatures => check_features::run_all(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(child) = e.downcast_ref::<run::ChildFailed>() {
                eprintln!("xtask: {child}");
                return ExitCode::from(u8::try_from(child.code).unwrap_or(1).max(1));
            }
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_filters_through() {
        let cli = Cli::try_parse_from(["cargo xtask", "test", "--", "-p", "xtask"]).unwrap();
        match cli.command {
            Cmd::Test { args } => assert_eq!(args, ["-p", "xtask"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_postgrest_options() {
        let cli = Cli::try_parse_from([
            "cargo xtask",
            "test-postgrest",
            "--postgrest",
            "/opt/postgrest",
            "--keep-state",
            "--output",
            "out",
            "--cold-boot",
            "--backend",
            "container",
        ])
        .unwrap();
        match cli.command {
            Cmd::TestPostgrest {
                postgrest,
                keep_state,
                output,
                cold_boot,
                backend,
            } => {
                assert_eq!(backend.as_deref(), Some("container"));
                assert_eq!(postgrest, Some(PathBuf::from("/opt/postgrest")));
                assert!(keep_state);
                assert_eq!(output, Some(PathBuf::from("out")));
                assert!(cold_boot);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bench_defaults_to_all() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Bench {
                which: BenchKind::All
            }
        ));
    }
}
