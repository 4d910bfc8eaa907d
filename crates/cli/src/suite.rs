//! `machinist run DIR`: every `test.toml` under DIR, one after the other (each in its own
//! `machinist run FILE` process, so one test's machines and Python state never touch the next),
//! optionally only a stable share (`--partition K/N`), then one summary line per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::args::RunArgs;
use crate::{EXIT_FAILURE, EXIT_PASS, EXIT_USAGE};

/// True when `arg` is a directory of test files rather than one test (a directory without a
/// `test.toml` of its own).
pub fn is_suite(arg: &str) -> bool {
    let p = Path::new(arg);
    p.is_dir() && !p.join(machinist_testfile::DEFAULT_FILE).is_file()
}

/// The test files of the suite at `dir` that `args.partition` selects, sorted by path.
pub fn selected(dir: &Path, args: &RunArgs) -> Result<Vec<PathBuf>, String> {
    let all = machinist_testfile::discover(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if all.is_empty() {
        return Err(format!(
            "{}: no test files (`test.toml`) under this directory",
            dir.display()
        ));
    }
    Ok(match args.partition {
        Some(p) => p.select(&all),
        None => all,
    })
}

/// One test's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The test file.
    pub file: PathBuf,
    /// `machinist run`'s exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Outcome {
    /// The summary line: `PASS  12.3 s  path`.
    pub fn line(&self) -> String {
        let verdict = match self.code {
            Some(0) => "PASS ",
            Some(1) => "FAIL ",
            Some(2) => "ERROR",
            _ => "KILLED",
        };
        format!(
            "{verdict} {:>8.1} s  {}",
            self.elapsed.as_secs_f64(),
            self.file.display()
        )
    }
}

/// Runs the suite; exit 0 when every selected test passed.
pub fn run_dir(args: &RunArgs) -> u8 {
    if args.script.is_some() || args.junit.is_some() || args.debug_on_failure {
        eprintln!("machinist: --script, --junit and --debug-on-failure apply to one test, not to a directory of tests");
        return EXIT_USAGE;
    }
    let dir = Path::new(&args.test);
    let files = match selected(dir, args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("machinist: {e}");
            return EXIT_USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("machinist: cannot find its own executable: {e}");
            return EXIT_USAGE;
        }
    };
    eprintln!(
        "machinist: {} test file(s) under {}{}",
        files.len(),
        dir.display(),
        args.partition
            .map(|p| format!(" (partition {}/{})", p.index, p.total))
            .unwrap_or_default()
    );
    let mut outcomes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.arg("run").arg(file);
        if args.keep_state {
            cmd.arg("--keep-state");
        }
        if let Some(o) = &args.output {
            cmd.arg("--output").arg(o.join(format!("{:03}", i + 1)));
        }
        if let Some(t) = args.global_timeout {
            cmd.arg("--global-timeout").arg(t.as_secs_f64().to_string());
        }
        if let Some(a) = args.accel {
            cmd.arg("--accel").arg(a.as_env());
        }
        if args.cold_boot {
            cmd.arg("--cold-boot");
        }
        if let Some(b) = args.backend {
            cmd.arg("--backend").arg(b.as_str());
        }
        if let Some(p) = &args.postgrest {
            cmd.arg("--postgrest").arg(p);
        }
        eprintln!("machinist: [{}/{}] {}", i + 1, files.len(), file.display());
        let started = Instant::now();
        let code = match cmd.status() {
            Ok(s) => s.code(),
            Err(e) => {
                eprintln!("machinist: cannot run {}: {e}", exe.display());
                None
            }
        };
        let o = Outcome {
            file: file.clone(),
            code,
            elapsed: started.elapsed(),
        };
        outcomes.push(o);
    }
    let passed = outcomes.iter().filter(|o| o.code == Some(0)).count();
    println!("summary:");
    for o in &outcomes {
        println!("{}", o.line());
    }
    println!("{passed} of {} passed", outcomes.len());
    if passed == outcomes.len() {
        EXIT_PASS
    } else {
        EXIT_FAILURE
    }
}
