//! The `machinist` command: run bundled tests, test files (`test.toml`) and suites of them,
//! Python test scripts, the interactive REPL; check test files before booting (`check`), write new
//! ones (`new`) and Python type stubs (`stubs`); check the host (`doctor`) and inspect or clean
//! the cache (`cache`).
//!
//! Any crate with its own tests can build the same binary, the way every nixosTest gets its own
//! driverInteractive:
//!
//! ```no_run
//! use machinist::{NodeConfig, Test};
//! use machinist_cli::BundledTest;
//!
//! fn main() -> std::process::ExitCode {
//!     machinist_cli::main(vec![BundledTest::new("hello", "one machine says hello", |_args| {
//!         Ok(Test::new("hello").node("machine", NodeConfig::new()))
//!     })
//!     .rust_script(|t| {
//!         t.machine("machine").succeed("echo hello")?;
//!         Ok(())
//!     })])
//! }
//! ```
//!
//! Exit codes: 0 pass, 1 test failure (or `doctor` found something missing), 2 usage or setup error.

pub mod args;
pub mod bundled;
pub mod cache;
pub mod check;
pub mod doctor;
pub mod images;
pub mod python;
pub mod registry;
pub mod runner;
pub mod scaffold;
pub mod suite;
pub mod testfiles;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

pub use args::{AccelArg, CacheAction, Cli, Command, RunArgs};
pub use registry::{BundledTest, Script};

/// Exit code: the test passed (or the command succeeded).
pub const EXIT_PASS: u8 = 0;
/// Exit code: the test failed (or `doctor` found something missing).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad usage or a setup error (nothing was tested).
pub const EXIT_USAGE: u8 = 2;

/// The `machinist` binary's entry point, with `tests` as the bundled tests: parses
/// `std::env::args_os()` and returns the exit code.
pub fn main(tests: Vec<BundledTest>) -> ExitCode {
    ExitCode::from(run_cli(std::env::args_os(), &tests))
}

/// Like [`main`], with explicit arguments (the program name first); returns the exit code.
pub fn run_cli<I, T>(argv: I, tests: &[BundledTest]) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::List => list(tests),
        Command::Doctor => doctor_cmd(),
        Command::Cache {
            action: Some(CacheAction::Verify { repair }),
        } => cache_verify(repair),
        Command::Cache {
            action: None | Some(CacheAction::List),
        } => cache::list_cmd(&machinist_qemu::cache_dir()),
        Command::Cache {
            action:
                Some(CacheAction::Gc {
                    keep_bytes,
                    dry_run,
                    min_idle,
                }),
        } => cache::gc_cmd(
            &machinist_qemu::cache_dir(),
            &machinist_qemu::cache_entries::GcOptions {
                keep_bytes,
                dry_run,
                min_idle,
            },
        ),
        Command::BuildImages { rebuild } => images::build_bundled(rebuild),
        Command::Run(args) => run(&args, tests),
        Command::Interactive { test, postgrest } => {
            let mut args = RunArgs::for_test(&test);
            args.postgrest = postgrest;
            match testfiles::load(&test, &args) {
                Err(e) => usage(&e),
                Ok(Some(t)) => runner::run(&t, &args, runner::Mode::Interactive),
                Ok(None) => match registry::find(tests, &test) {
                    Err(e) => usage(&e),
                    Ok(t) => runner::run(t, &args, runner::Mode::Interactive),
                },
            }
        }
        Command::Check { file } => check_cmd(&file),
        Command::New { name } => match scaffold::new_test(&name) {
            Ok(written) => {
                for p in &written {
                    println!("wrote {}", p.display());
                }
                println!(
                    "run it with: machinist run {}",
                    name.join(machinist_testfile::DEFAULT_FILE).display()
                );
                EXIT_PASS
            }
            Err(e) => usage(&e),
        },
        Command::Stubs { dir } => match scaffold::write_stubs(&dir) {
            Ok(p) => {
                println!("wrote {}", p.display());
                EXIT_PASS
            }
            Err(e) => usage(&e),
        },
    }
}

/// `machinist check FILE`: exit 0 fine, 1 mistakes, 2 not a test file.
fn check_cmd(file: &std::path::Path) -> u8 {
    let Some(path) = file.to_str().and_then(machinist_testfile::locate) else {
        return usage(&format!(
            "{}: not a test file (give a `.toml` file, or a directory holding a `test.toml`)",
            file.display()
        ));
    };
    match check::check_file(&path, &testfiles::CliPrograms::default()) {
        Ok(c) => {
            println!(
                "{}: ok: test `{}`, nodes {}, script {} ({} ms)",
                path.display(),
                c.file.name,
                c.file.nodes.keys().cloned().collect::<Vec<_>>().join(", "),
                c.file.script.as_ref().map_or(
                    "none (give `script` or `script_file`)".to_string(),
                    |s| format!("checked: {}", s.filename)
                ),
                c.elapsed.as_millis()
            );
            EXIT_PASS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "machinist: {}: not ready to run (nothing was booted)",
                path.display()
            );
            EXIT_FAILURE
        }
    }
}

fn usage(msg: &str) -> u8 {
    eprintln!("machinist: {msg}");
    EXIT_USAGE
}

fn list(tests: &[BundledTest]) -> u8 {
    let mut out = std::io::stdout().lock();
    if tests.is_empty() {
        let _ = writeln!(out, "(this binary bundles no tests)");
    }
    let width = tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in tests {
        let _ = writeln!(out, "{:<width$}  {}", t.name, t.about);
    }
    EXIT_PASS
}

/// `machinist cache verify [--repair]`: one line per cached image; exit 1 if one is damaged
/// and was not removed.
fn cache_verify(repair: bool) -> u8 {
    let dir = machinist_guest::default_cache_dir();
    let reports = machinist_guest::verify_cache(&dir, repair);
    if reports.is_empty() {
        println!("no images in {}", dir.display());
    }
    for r in &reports {
        println!("{}", r.line());
    }
    if reports.iter().any(|r| !r.is_ok() && !r.removed) {
        eprintln!("machinist: damaged cache entries found; `machinist cache verify --repair` removes them (they are rebuilt on next use)");
        EXIT_FAILURE
    } else {
        EXIT_PASS
    }
}

fn doctor_cmd() -> u8 {
    let findings = doctor::run_checks();
    print!("{}", doctor::render(&findings));
    if doctor::any_missing(&findings) {
        EXIT_FAILURE
    } else {
        EXIT_PASS
    }
}

/// Checks the arguments that can be checked before anything starts.
fn validate(args: &RunArgs) -> Result<(), String> {
    if let Some(script) = &args.script {
        if !script.is_file() {
            return Err(format!(
                "--script {}: no such file (give the path of a Python test script)",
                script.display()
            ));
        }
    }
    if let Some(p) = &args.postgrest {
        if !p.is_file() {
            return Err(format!(
                "--postgrest {}: no such file (give the path of a postgrest binary)",
                p.display()
            ));
        }
    }
    Ok(())
}

fn run(args: &RunArgs, tests: &[BundledTest]) -> u8 {
    if let Err(e) = validate(args) {
        return usage(&e);
    }
    if suite::is_suite(&args.test) {
        return suite::run_dir(args);
    }
    if let Some(accel) = args.accel {
        // The accelerator choice reads MACHINIST_ACCEL; set before any thread or VM starts.
        // SAFETY: single-threaded at this point (nothing has been spawned yet).
        unsafe { std::env::set_var("MACHINIST_ACCEL", accel.as_env()) };
    }
    if args.partition.is_some() {
        return usage("--partition applies to a directory of test files (`machinist run DIR --partition K/N`)");
    }
    let from_file = match testfiles::load(&args.test, args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let test = match &from_file {
        Some(t) => t,
        None => match registry::find(tests, &args.test) {
            Ok(t) => t,
            Err(e) => return usage(&e),
        },
    };
    runner::run(test, args, runner::Mode::Run)
}
