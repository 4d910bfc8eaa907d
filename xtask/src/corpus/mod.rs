//! `cargo xtask corpus`: the NixOS compatibility corpus (`tests/nixos/`), real nixpkgs tests run
//! with their scripts unchanged.
//!
//! Every test directory holds `upstream.nix` (the nixpkgs file, verbatim), `script.py` (its
//! `testScript`), `corpus.toml` (where it comes from, and the values of the script's Nix
//! interpolations), `test.toml` (the nodes on Debian) and, when the script needs an edit,
//! `script.patch` (named by the test file's `script_patch`). For each test this command first
//! proves that `script.py` is upstream's script ([`nix::test_script`]), then runs it with
//! `machinist run`, and prints one line per test: passed unchanged, passed with N patched lines,
//! or failed and why; then the totals. `--readme` writes the table into `tests/nixos/README.md`.

pub mod nix;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::run::{cargo, run, show};
use crate::{deps, summary};

/// Where the corpus lives, relative to the workspace root.
pub const CORPUS_DIR: &str = "tests/nixos";

/// The markers around the generated table in the corpus README.
const TABLE_BEGIN: &str = "<!-- corpus table: written by `cargo xtask corpus --readme` -->";
const TABLE_END: &str = "<!-- end of corpus table -->";

/// Options of `cargo xtask corpus`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these tests (directory names); all when empty.
    pub only: Vec<String>,
    /// Only prove the scripts are upstream's (no VM).
    pub check: bool,
    /// Boot every machine cold (no node snapshots).
    pub cold_boot: bool,
    /// Rewrite the table in `tests/nixos/README.md`.
    pub readme: bool,
}

/// `corpus.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusFile {
    /// Where the test comes from.
    pub upstream: Upstream,
    /// Each `${...}` of the testScript as written, and the text it evaluates to.
    #[serde(default)]
    pub interpolations: BTreeMap<String, String>,
}

/// The origin of a corpus test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The repository (`NixOS/nixpkgs`).
    pub repo: String,
    /// The file's path in it.
    pub path: String,
    /// The commit the file was read at.
    pub commit: String,
}

impl Upstream {
    /// `NixOS/nixpkgs nixos/tests/redis.nix @ 052fa434`.
    pub fn shown(&self) -> String {
        let short = self.commit.get(..8).unwrap_or(&self.commit);
        format!("{} {} @ {short}", self.repo, self.path)
    }
}

/// One corpus test, read from its directory.
#[derive(Debug)]
pub struct Entry {
    /// The directory's name.
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
    /// `corpus.toml`.
    pub corpus: CorpusFile,
    /// Lines the `script_patch` changes (0: the script runs unchanged).
    pub patched_lines: usize,
}

/// How a test did.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Passed; `patched_lines` lines of its script were edited (0: unchanged).
    Passed { patched_lines: usize },
    /// Not run (`--check`): its script is upstream's, with `patched_lines` lines patched.
    Verified { patched_lines: usize },
    /// Failed, with the first reason found.
    Failed(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The test's directory name.
    pub name: String,
    /// Its upstream file (`NixOS/nixpkgs nixos/tests/redis.nix @ 052fa434`).
    pub upstream: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Wall time of `machinist run` (zero with `--check`).
    pub elapsed: Duration,
}

impl Outcome {
    /// The report line: `passed unchanged   23.4 s  redis`.
    pub fn line(&self) -> String {
        let what = match &self.verdict {
            Verdict::Passed { patched_lines: 0 } => "passed unchanged".to_string(),
            Verdict::Passed { patched_lines: n } => format!("passed with {n} patched line(s)"),
            Verdict::Verified { patched_lines: 0 } => "script is upstream's, unchanged".into(),
            Verdict::Verified { patched_lines: n } => {
                format!("script is upstream's, with {n} patched line(s)")
            }
            Verdict::Failed(why) => format!("failed: {why}"),
        };
        format!(
            "{:<24} {:>7.1} s  {}",
            self.name,
            self.elapsed.as_secs_f64(),
            what
        )
    }
}

/// Reads every corpus test under `root` (sorted by name), or only those in `only`.
pub fn entries(root: &Path, only: &[String]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let dir = root.join(CORPUS_DIR);
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        if !path.join("corpus.toml").is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        out.push(read_entry(name, path)?);
    }
    for want in only {
        if !out.iter().any(|e| &e.name == want) {
            bail!("{CORPUS_DIR}/{want}: no such corpus test (a directory with corpus.toml)");
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_entry(name: String, dir: PathBuf) -> Result<Entry> {
    let corpus_path = dir.join("corpus.toml");
    let text = std::fs::read_to_string(&corpus_path)
        .with_context(|| format!("reading {}", corpus_path.display()))?;
    let corpus: CorpusFile =
        toml::from_str(&text).with_context(|| format!("{}", corpus_path.display()))?;
    let patched_lines = match script_patch(&dir)? {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            changed_lines(&text)
        }
        None => 0,
    };
    Ok(Entry {
        name,
        dir,
        corpus,
        patched_lines,
    })
}

/// The `script_patch` the test file names, as a path.
fn script_patch(dir: &Path) -> Result<Option<PathBuf>> {
    let path = dir.join("test.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Ok(table
        .get("script_patch")
        .and_then(|v| v.as_str())
        .map(|p| dir.join(p)))
}

/// Lines a unified diff removes or adds (its `---`/`+++` headers aside).
pub fn changed_lines(diff: &str) -> usize {
    diff.lines()
        .filter(|l| !l.starts_with("---") && !l.starts_with("+++"))
        .filter(|l| l.starts_with('+') || l.starts_with('-'))
        .count()
}

/// Proves that `script.py` is upstream's testScript: `Err` says where they differ.
pub fn check_script(entry: &Entry) -> Result<(), String> {
    let upstream_path = entry.dir.join("upstream.nix");
    let upstream = std::fs::read_to_string(&upstream_path)
        .map_err(|e| format!("cannot read {}: {e}", upstream_path.display()))?;
    let expected = nix::test_script(&upstream, &entry.corpus.interpolations)
        .map_err(|e| format!("upstream.nix: {e}"))?;
    let script_path = entry.dir.join("script.py");
    let actual = std::fs::read_to_string(&script_path)
        .map_err(|e| format!("cannot read {}: {e}", script_path.display()))?;
    if actual == expected {
        return Ok(());
    }
    let line = actual
        .lines()
        .zip(expected.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
    Err(format!(
        "script.py is not upstream's testScript (first difference at line {})",
        line + 1
    ))
}

/// `cargo xtask corpus`.
pub fn run_corpus(root: &Path, opts: &Options) -> Result<()> {
    let list = entries(root, &opts.only)?;
    if list.is_empty() {
        bail!("{CORPUS_DIR}: no corpus tests");
    }
    let exe = if opts.check {
        None
    } else {
        deps::ensure()?;
        run(cargo().args(["build", "-p", "machinist-cli", "--bin", "machinist"]))?;
        Some(target_dir(root).join("debug/machinist"))
    };
    let out_root = target_dir(root).join("corpus");
    eprintln!(
        "xtask: corpus: {} test(s) from {CORPUS_DIR}{}",
        list.len(),
        if opts.check { " (scripts only)" } else { "" }
    );
    let mut outcomes = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        eprintln!("xtask: corpus: [{}/{}] {}", i + 1, list.len(), entry.name);
        let started = Instant::now();
        let verdict = match (check_script(entry), &exe) {
            (Err(why), _) => Verdict::Failed(why),
            (Ok(()), None) => Verdict::Verified {
                patched_lines: entry.patched_lines,
            },
            (Ok(()), Some(exe)) => run_one(exe, entry, &out_root, opts.cold_boot)?,
        };
        let o = Outcome {
            name: entry.name.clone(),
            upstream: entry.corpus.upstream.shown(),
            verdict,
            elapsed: if exe.is_some() {
                started.elapsed()
            } else {
                Duration::ZERO
            },
        };
        eprintln!("xtask: corpus: {}", o.line());
        outcomes.push(o);
    }
    println!("\n── corpus ──");
    for o in &outcomes {
        println!("{}", o.line());
    }
    let totals = Totals::of(&outcomes);
    println!("{}", totals.line());
    if opts.readme {
        write_readme(root, &outcomes, &totals)?;
    }
    if totals.failed > 0 {
        bail!(
            "{} of {} corpus test(s) failed",
            totals.failed,
            outcomes.len()
        );
    }
    Ok(())
}

/// `machinist run` of one test, its output in `<out_root>/<name>.log` and `<out_root>/<name>/`.
fn run_one(exe: &Path, entry: &Entry, out_root: &Path, cold_boot: bool) -> Result<Verdict> {
    let output = out_root.join(&entry.name);
    let _ = std::fs::remove_dir_all(&output);
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let log_path = out_root.join(format!("{}.log", entry.name));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(entry.dir.join("test.toml"))
        .arg("--output")
        .arg(&output);
    if cold_boot {
        cmd.arg("--cold-boot");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    eprintln!("xtask: $ {} (log: {})", show(&cmd), log_path.display());
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if status.success() {
        return Ok(Verdict::Passed {
            patched_lines: entry.patched_lines,
        });
    }
    Ok(Verdict::Failed(failure_reason(&output, &log_path)))
}

/// The first error the run logged (its exception line, past any traceback), else the last
/// line of its output.
fn failure_reason(output: &Path, log_path: &Path) -> String {
    if let Some(e) = summary::parse_log_file(&output.join("log.jsonl"))
        .and_then(|l| l.errors.into_iter().find(|e| !e.trim().is_empty()))
    {
        return format!("{} (log: {})", exception_line(&e), log_path.display());
    }
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    format!("{} (log: {})", last.trim(), log_path.display())
}

/// The line of an error message that says what went wrong: after a Python traceback, the
/// exception (`machinist.RequestedAssertionFailed: ...`); otherwise the first line.
pub fn exception_line(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or("").trim();
    if !message.contains("Traceback (most recent call last)") {
        return first.to_string();
    }
    lines
        .find(|l| !l.starts_with(' ') && !l.starts_with("Traceback") && !l.trim().is_empty())
        .unwrap_or(first)
        .trim()
        .to_string()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The counts of a corpus run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Passed with the script unchanged.
    pub unchanged: usize,
    /// Passed with a patch.
    pub patched: usize,
    /// Failed.
    pub failed: usize,
    /// Sum of the tests' times.
    pub seconds: u64,
    /// Only the scripts were checked (`--check`): nothing ran.
    pub checked_only: bool,
}

impl Totals {
    /// Counts `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Totals {
        let mut t = Totals::default();
        let mut secs = 0.0;
        for o in outcomes {
            match o.verdict {
                Verdict::Passed { patched_lines: 0 } | Verdict::Verified { patched_lines: 0 } => {
                    t.unchanged += 1
                }
                Verdict::Passed { .. } | Verdict::Verified { .. } => t.patched += 1,
                Verdict::Failed(_) => t.failed += 1,
            }
            secs += o.elapsed.as_secs_f64();
            t.checked_only |= matches!(o.verdict, Verdict::Verified { .. });
        }
        t.seconds = secs.round() as u64;
        t
    }

    /// `17 tests: 14 passed unchanged, 3 passed with patches, 0 failed (412 s)`.
    pub fn line(&self) -> String {
        if self.checked_only {
            return format!(
                "{} scripts checked: {} unchanged, {} patched, {} not upstream's",
                self.unchanged + self.patched + self.failed,
                self.unchanged,
                self.patched,
                self.failed
            );
        }
        format!(
            "{} tests: {} passed unchanged, {} passed with patches, {} failed ({} s)",
            self.unchanged + self.patched + self.failed,
            self.unchanged,
            self.patched,
            self.failed,
            self.seconds
        )
    }
}

/// The README table of a run.
pub fn table(outcomes: &[Outcome], totals: &Totals) -> String {
    let mut s = String::from("| test | upstream | result | time |\n| --- | --- | --- | --- |\n");
    for o in outcomes {
        let result = match &o.verdict {
            Verdict::Passed { patched_lines: 0 } => "passed unchanged".to_string(),
            Verdict::Passed { patched_lines } => {
                format!(
                    "passed with {patched_lines} patched line(s) ([script.patch]({}/script.patch))",
                    o.name
                )
            }
            Verdict::Verified { .. } => "not run (`--check`)".to_string(),
            Verdict::Failed(why) => format!("failed: {}", why.replace('|', "\\|")),
        };
        let _ = writeln!(
            s,
            "| [{}]({}/) | `{}` | {} | {:.1} s |",
            o.name,
            o.name,
            o.upstream,
            result,
            o.elapsed.as_secs_f64()
        );
    }
    let _ = writeln!(s, "\n{}", totals.line());
    s
}

fn write_readme(root: &Path, outcomes: &[Outcome], totals: &Totals) -> Result<()> {
    let path = root.join(CORPUS_DIR).join("README.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(TABLE_BEGIN), text.find(TABLE_END)) else {
        bail!(
            "{}: the table markers are missing ({TABLE_BEGIN} ... {TABLE_END})",
            path.display()
        );
    };
    let new = format!(
        "{}{TABLE_BEGIN}\n{}{}",
        &text[..a],
        table(outcomes, totals),
        &text[b..]
    );
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: corpus: table written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exception_is_the_reason() {
        let msg = "!!! Test \"babeld\" failed: Traceback (most recent call last):\n  File \"script.py\", line 3, in <module>\n    client.wait_for_unit(\"x\")\nmachinist.RequestedAssertionFailed: client: unit \"x\" is inactive\n--- systemctl status\n";
        assert_eq!(
            exception_line(msg),
            "machinist.RequestedAssertionFailed: client: unit \"x\" is inactive"
        );
        assert_eq!(exception_line("QEMU exited\nmore"), "QEMU exited");
    }

    #[test]
    fn patched_lines_count_changes_only() {
        let diff = "--- a/script.py\n+++ b/script.py\n@@ -1,3 +1,3 @@\n a()\n-b()\n+c()\n d()\n";
        assert_eq!(changed_lines(diff), 2);
    }

    #[test]
    fn report_lines_and_totals() {
        let outcomes = vec![
            Outcome {
                name: "redis".into(),
                upstream: "NixOS/nixpkgs nixos/tests/redis.nix @ 0123abcd".into(),
                verdict: Verdict::Passed { patched_lines: 0 },
                elapsed: Duration::from_millis(23_400),
            },
            Outcome {
                name: "nat".into(),
                upstream: "NixOS/nixpkgs nixos/tests/nat.nix @ 0123abcd".into(),
                verdict: Verdict::Passed { patched_lines: 2 },
                elapsed: Duration::from_secs(40),
            },
            Outcome {
                name: "bind".into(),
                upstream: "NixOS/nixpkgs nixos/tests/bind.nix @ 0123abcd".into(),
                verdict: Verdict::Failed("machine `machine`: unit bind.service failed".into()),
                elapsed: Duration::from_secs(10),
            },
        ];
        let totals = Totals::of(&outcomes);
        let lines: Vec<String> = outcomes.iter().map(Outcome::line).collect();
        insta::assert_snapshot!(format!(
            "{}\n{}\n\n{}",
            lines.join("\n"),
            totals.line(),
            table(&outcomes, &totals)
        ));
    }

    /// Every corpus test in the repository: its script is upstream's testScript (or the
    /// difference is reported), and its files are where the runner expects them.
    #[test]
    fn every_corpus_script_is_upstreams() {
        let root = crate::workspace_root();
        let list = entries(&root, &[]).unwrap();
        let bad: Vec<String> = list
            .iter()
            .filter_map(|e| {
                check_script(e)
                    .err()
                    .map(|why| format!("{}: {why}", e.name))
            })
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }
}
