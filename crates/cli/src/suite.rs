//! `machinist run DIR`: every `test.toml` under DIR (each in its own `machinist run FILE`
//! process, so one test's machines and Python state never touch another's), optionally only a
//! stable share (`--partition K/N`), up to `--jobs N` at once, then one summary line per test and,
//! with `--junit`, one JUnit report holding every test's suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
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

/// How many tests run at once: `--jobs`, at most the host's cores (each test's machines need
/// CPU; more only slows every test down and risks their timeouts).
pub fn effective_jobs(requested: Option<u16>, cores: usize) -> usize {
    usize::from(requested.unwrap_or(1)).clamp(1, cores.max(1))
}

/// The `machinist run FILE` command of the suite's test number `i` (1-based).
fn child_command(exe: &Path, args: &RunArgs, file: &Path, i: usize, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(file);
    if args.keep_state {
        cmd.arg("--keep-state");
    }
    if let Some(o) = &args.output {
        cmd.arg("--output").arg(o.join(format!("{i:03}")));
    }
    if args.junit.is_some() {
        cmd.arg("--junit")
            .arg(dir.join(format!("{i:03}.junit.xml")));
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
    cmd
}

/// Runs the suite; exit 0 when every selected test passed.
pub fn run_dir(args: &RunArgs) -> u8 {
    if args.script.is_some() || args.debug_on_failure {
        eprintln!(
            "machinist: --script and --debug-on-failure apply to one test, not to a directory of tests"
        );
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = effective_jobs(args.jobs, cores).min(files.len());
    if args.jobs.is_some_and(|j| usize::from(j) > cores) {
        eprintln!(
            "machinist: --jobs {} lowered to {cores}: this host has {cores} core(s)",
            args.jobs.unwrap_or(1)
        );
    }
    // Per-test logs (with --jobs > 1) and JUnit parts go to one directory for the run.
    let work = match tempfile::Builder::new()
        .prefix("machinist-suite-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("machinist: cannot make a directory for the suite's logs: {e}");
            return EXIT_USAGE;
        }
    };
    let logs = args
        .output
        .clone()
        .unwrap_or_else(|| work.path().to_path_buf());
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("machinist: cannot create {}: {e}", logs.display());
        return EXIT_USAGE;
    }
    eprintln!(
        "machinist: {} test file(s) under {}{}, {jobs} at a time",
        files.len(),
        dir.display(),
        args.partition
            .map(|p| format!(" (partition {}/{})", p.index, p.total))
            .unwrap_or_default()
    );
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(file) = files.get(n) else { break };
                let i = n + 1;
                let mut cmd = child_command(&exe, args, file, i, work.path());
                let log = logs.join(format!("{i:03}.log"));
                if jobs > 1 {
                    match std::fs::File::create(&log).and_then(|f| Ok((f.try_clone()?, f))) {
                        Ok((out, err)) => {
                            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
                        }
                        Err(e) => eprintln!("machinist: cannot write {}: {e}", log.display()),
                    }
                    eprintln!(
                        "machinist: [{i}/{}] {} (log: {})",
                        files.len(),
                        file.display(),
                        log.display()
                    );
                } else {
                    eprintln!("machinist: [{i}/{}] {}", files.len(), file.display());
                }
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
                if jobs > 1 {
                    eprintln!("machinist: [{i}/{}] {}", files.len(), o.line());
                }
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, o));
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    outcomes.sort_by_key(|(i, _)| *i);
    if let Some(path) = &args.junit {
        let parts: Vec<(PathBuf, &Outcome)> = outcomes
            .iter()
            .map(|(i, o)| (work.path().join(format!("{i:03}.junit.xml")), o))
            .collect();
        let xml = merged_junit(&args.test, &parts);
        if let Err(e) = std::fs::write(path, xml) {
            eprintln!("machinist: cannot write {}: {e}", path.display());
            return EXIT_USAGE;
        }
    }
    let passed = outcomes.iter().filter(|(_, o)| o.code == Some(0)).count();
    println!("summary:");
    for (_, o) in &outcomes {
        println!("{}", o.line());
    }
    println!("{passed} of {} passed", outcomes.len());
    if passed == outcomes.len() {
        EXIT_PASS
    } else {
        EXIT_FAILURE
    }
}

/// One JUnit report for the suite: every test's `<testsuite>` elements (read from its own
/// report), and for a test that wrote none (it could not start, or was killed) a suite with one
/// failed test case saying so.
pub fn merged_junit(name: &str, parts: &[(PathBuf, &Outcome)]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!("<testsuites name=\"{}\">\n", xml_escape(name)));
    for (path, o) in parts {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        match (text.find("<testsuite "), text.rfind("</testsuite>")) {
            (Some(a), Some(b)) if a < b => {
                out.push_str(&text[a..b + "</testsuite>".len()]);
                out.push('\n');
            }
            _ => {
                let file = xml_escape(&o.file.display().to_string());
                out.push_str(&format!(
                    "<testsuite name=\"{file}\" tests=\"1\" failures=\"1\" errors=\"0\" time=\"{:.3}\">\n<testcase name=\"machinist run {file}\" time=\"{:.3}\">\n<failure message=\"{}\"/>\n</testcase>\n</testsuite>\n",
                    o.elapsed.as_secs_f64(),
                    o.elapsed.as_secs_f64(),
                    xml_escape(&format!("no JUnit report: {}", o.line().trim())),
                ));
            }
        }
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_stay_within_the_cores() {
        assert_eq!(effective_jobs(None, 8), 1);
        assert_eq!(effective_jobs(Some(2), 8), 2);
        assert_eq!(effective_jobs(Some(16), 2), 2);
        assert_eq!(effective_jobs(Some(3), 0), 1);
    }

    #[test]
    fn the_suite_report_holds_every_tests_suites() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("001.junit.xml");
        std::fs::write(
            &a,
            "<?xml version=\"1.0\"?>\n<testsuites name=\"a\">\n<testsuite name=\"a\" tests=\"2\"><testcase name=\"one\"/><testcase name=\"two\"/></testsuite>\n</testsuites>\n",
        )
        .unwrap();
        let ok = Outcome {
            file: "a/test.toml".into(),
            code: Some(0),
            elapsed: Duration::from_secs(3),
        };
        let killed = Outcome {
            file: "b/test.toml".into(),
            code: None,
            elapsed: Duration::from_millis(1500),
        };
        let xml = merged_junit(
            "suite<1>",
            &[(a, &ok), (dir.path().join("002.junit.xml"), &killed)],
        );
        insta::assert_snapshot!(xml);
    }
}
