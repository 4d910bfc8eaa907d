//! The command line: `machinist list | run | interactive | check | new | stubs | build-images |
//! doctor | cache`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run multi-machine integration tests in real QEMU virtual machines.
#[derive(Debug, Parser)]
#[command(name = "machinist", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the bundled tests.
    List,
    /// Run a bundled test, a test file, or every test file under a directory (exit 0 pass,
    /// 1 test failure, 2 usage or setup error).
    Run(RunArgs),
    /// Open a Python REPL with the test's machines (`start_all()`, `server.succeed(...)`).
    Interactive {
        /// A bundled test's name (see `machinist list`), or a test file (`path/to/test.toml`,
        /// or a directory holding a `test.toml`).
        test: String,
        /// Use this postgrest binary for `host_program = "postgrest"` / the PostgREST test.
        #[arg(long, value_name = "PATH")]
        postgrest: Option<PathBuf>,
    },
    /// Check a test file without booting anything: the declaration, every template, and the
    /// Python script (syntax, machine names, Machine methods, argument counts). Exit 0 when it
    /// is fine, 1 when it has mistakes, 2 when FILE is not a test file.
    Check {
        /// The test file (`test.toml`, or a directory holding one).
        file: PathBuf,
    },
    /// Write a new, runnable test directory: NAME/test.toml and NAME/script.py (one machine).
    /// Refuses to overwrite anything.
    New {
        /// The directory to create; its last component is the test's name.
        name: PathBuf,
    },
    /// Write `machinist.pyi`, Python type stubs (with docstrings) for the Machine API and the
    /// globals of a test script, into DIR. With a `test.toml` in DIR, its machines are declared
    /// too.
    Stubs {
        /// Where to write `machinist.pyi`.
        dir: PathBuf,
    },
    /// Build (or reuse) the guest images the bundled tests need: base, server (+postgresql),
    /// client (+curl).
    BuildImages {
        /// Rebuild them even when the cache has them.
        #[arg(long)]
        rebuild: bool,
    },
    /// Check this host: QEMU, accelerator, tesseract, mmdebstrap, cache directory, free disk
    /// (and remove run directories left behind by killed test processes).
    Doctor,
    /// Inspect and clean the cache (images, snapshots, kernels): without a subcommand, list it.
    Cache {
        /// What to do with it (default: `list`).
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
}

/// `machinist cache ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum CacheAction {
    /// One line per cache entry: kind, size on disk, last use, path; then the total.
    List,
    /// Remove the least recently used entries until the cache holds at most --keep-bytes
    /// (never one a build holds or one used within --min-idle).
    Gc {
        /// The size to shrink the cache to: bytes, or with K, M, G or T (powers of 1024), e.g.
        /// 10G or 500M.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        keep_bytes: u64,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Keep entries used within the last S seconds (a running test may still need them).
        #[arg(long, value_name = "S", default_value = "1800", value_parser = parse_idle)]
        min_idle: Duration,
    },
    /// Check the full sha256 of every cached image file against its manifest (exit 1 if one is
    /// damaged).
    Verify {
        /// Remove damaged entries, so that the next use rebuilds them.
        #[arg(long)]
        repair: bool,
    },
}

/// Options of `machinist run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A bundled test's name (see `machinist list`), a test file (`path/to/test.toml`, or a
    /// directory holding a `test.toml`), or a directory: every `test.toml` under it, one after
    /// the other.
    pub test: String,
    /// With a directory: run only share K of N of its test files (sorted by path, every Nth
    /// from the Kth), e.g. `1/2` and `2/2` on two CI runners.
    #[arg(long, value_name = "K/N", value_parser = parse_partition)]
    pub partition: Option<Partition>,
    /// With a directory: run up to N test files at once (default 1; at most the host's cores).
    /// Each test's output then goes to its own log file.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Run this Python test script against the test's nodes instead of its built-in script.
    #[arg(long, value_name = "FILE.py")]
    pub script: Option<PathBuf>,
    /// Keep the run directory (overlays, sockets, logs) after the test.
    #[arg(long)]
    pub keep_state: bool,
    /// Write logs, JSON spans, screenshots and pcaps here.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Fail the whole test after this many seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub global_timeout: Option<Duration>,
    /// Force the accelerator instead of probing (same as MACHINIST_ACCEL).
    #[arg(long, value_enum)]
    pub accel: Option<AccelArg>,
    /// When the test fails, keep every machine running and open the REPL at that point.
    #[arg(long)]
    pub debug_on_failure: bool,
    /// Cold-boot every machine even when MACHINIST_WARM_START=1 (no warm start from a saved VM
    /// state).
    #[arg(long)]
    pub cold_boot: bool,
    /// Run every node on this backend unless its configuration names one (default: the
    /// MACHINIST_BACKEND environment variable, else VMs).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Use this postgrest binary in the PostgREST test instead of the bundled postgrest-lite.
    #[arg(long, value_name = "PATH")]
    pub postgrest: Option<PathBuf>,
}

impl RunArgs {
    /// Defaults for `test` (what `machinist interactive <test>` uses).
    pub fn for_test(test: &str) -> Self {
        RunArgs {
            test: test.to_string(),
            partition: None,
            jobs: None,
            script: None,
            keep_state: false,
            output: None,
            junit: None,
            global_timeout: None,
            accel: None,
            debug_on_failure: false,
            cold_boot: false,
            backend: None,
            postgrest: None,
        }
    }
}

/// `--partition K/N`: the Kth of N shares of a suite (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Which share (1..=total).
    pub index: usize,
    /// How many shares.
    pub total: usize,
}

impl Partition {
    /// The items of share `index`: sorted input, every `total`th item starting at `index - 1`.
    /// Shares 1..=N together hold every item exactly once, on every machine alike.
    pub fn select<T: Clone>(&self, sorted: &[T]) -> Vec<T> {
        sorted
            .iter()
            .skip(self.index - 1)
            .step_by(self.total)
            .cloned()
            .collect()
    }
}

/// Parses `K/N` with 1 <= K <= N.
pub fn parse_partition(s: &str) -> Result<Partition, String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not K/N (e.g. 1/2)"))?;
    let parse = |x: &str| x.trim().parse::<usize>().ok();
    match (parse(k), parse(n)) {
        (Some(index), Some(total)) if index >= 1 && index <= total => {
            Ok(Partition { index, total })
        }
        _ => Err(format!("`{s}` is not K/N with 1 <= K <= N (e.g. 1/2)")),
    }
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// QEMU virtual machines.
    Vm,
    /// systemd-nspawn containers of the same images.
    Container,
}

impl BackendArg {
    /// The flag's spelling (`vm`, `container`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendArg::Vm => "vm",
            BackendArg::Container => "container",
        }
    }

    /// The driver's backend.
    pub fn kind(self) -> machinist::BackendKind {
        match self {
            BackendArg::Vm => machinist::BackendKind::Vm,
            BackendArg::Container => machinist::BackendKind::Container,
        }
    }
}

/// `--accel` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// Hardware virtualisation (only if it really works on this host).
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

impl AccelArg {
    /// The value MACHINIST_ACCEL takes.
    pub fn as_env(self) -> &'static str {
        match self {
            AccelArg::Kvm => "kvm",
            AccelArg::Tcg => "tcg",
        }
    }
}

/// Parses a size in bytes (`10G`, `500M`, `1048576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    machinist_qemu::cache_entries::parse_bytes(s)
}

/// Parses a number of seconds that may be zero (`0`, `1800`).
fn parse_idle(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_seconds(s)
}

/// Parses a positive number of seconds (`90`, `2.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 600 or 2.5)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` seconds is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn error_of(args: &[&str]) -> String {
        let mut argv = vec!["machinist"];
        argv.extend_from_slice(args);
        let err = Cli::try_parse_from(argv).expect_err("should be rejected");
        assert_eq!(err.exit_code(), 2, "usage errors exit 2");
        err.render().to_string()
    }

    #[test]
    fn definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_every_option() {
        let cli = Cli::try_parse_from([
            "machinist",
            "run",
            "postgrest",
            "--script",
            "s.py",
            "--keep-state",
            "--output",
            "out",
            "--junit",
            "j.xml",
            "--global-timeout",
            "2.5",
            "--accel",
            "tcg",
            "--debug-on-failure",
            "--cold-boot",
            "--backend",
            "container",
            "--postgrest",
            "/usr/bin/postgrest",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.test, "postgrest");
        assert_eq!(r.global_timeout, Some(Duration::new(2, 500_000_000)));
        assert_eq!(r.accel, Some(AccelArg::Tcg));
        assert!(r.keep_state && r.debug_on_failure && r.cold_boot);
        assert_eq!(r.backend, Some(BackendArg::Container));
    }

    #[test]
    fn partitions_cover_the_set_exactly_once() {
        let items: Vec<u32> = (0..7).collect();
        let mut seen: Vec<u32> = Vec::new();
        for k in 1..=2 {
            let p = parse_partition(&format!("{k}/2")).unwrap();
            seen.extend(p.select(&items));
        }
        seen.sort();
        assert_eq!(seen, items, "1/2 and 2/2 together: each item once");
        assert_eq!(parse_partition("1/2").unwrap().select(&items), [0, 2, 4, 6]);
        assert_eq!(parse_partition("2/2").unwrap().select(&items), [1, 3, 5]);
        assert_eq!(parse_partition("1/1").unwrap().select(&items), items);
        for bad in ["0/2", "3/2", "1", "a/b", "1/0"] {
            assert!(parse_partition(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_new_stubs_parse() {
        let cli = Cli::try_parse_from(["machinist", "check", "t/test.toml"]).unwrap();
        assert!(matches!(cli.command, Command::Check { .. }));
        let cli = Cli::try_parse_from(["machinist", "new", "mytest"]).unwrap();
        assert!(matches!(cli.command, Command::New { .. }));
        let cli = Cli::try_parse_from(["machinist", "stubs", "."]).unwrap();
        assert!(matches!(cli.command, Command::Stubs { .. }));
        let cli =
            Cli::try_parse_from(["machinist", "run", "suite/", "--partition", "2/3"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.partition, Some(Partition { index: 2, total: 3 }));
    }

    #[test]
    fn snapshot_run_without_test() {
        insta::assert_snapshot!(error_of(&["run"]));
    }

    #[test]
    fn snapshot_bad_accel() {
        insta::assert_snapshot!(error_of(&["run", "hello", "--accel", "hvf"]));
    }

    #[test]
    fn snapshot_bad_timeout() {
        insta::assert_snapshot!(error_of(&["run", "hello", "--global-timeout", "soon"]));
        insta::assert_snapshot!(
            "negative_timeout",
            error_of(&["run", "hello", "--global-timeout", "-3"])
        );
    }

    #[test]
    fn cache_parses_list_and_gc() {
        let action = |args: &[&str]| {
            let mut argv = vec!["machinist", "cache"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Cache { action } => action,
                other => panic!("not cache: {other:?}"),
            }
        };
        assert!(action(&[]).is_none(), "bare `cache` lists");
        assert!(matches!(action(&["list"]), Some(CacheAction::List)));
        match action(&["gc", "--keep-bytes", "10G", "--dry-run"]) {
            Some(CacheAction::Gc {
                keep_bytes,
                dry_run,
                min_idle,
            }) => {
                assert_eq!(keep_bytes, 10 << 30);
                assert!(dry_run);
                assert_eq!(min_idle, machinist_qemu::cache_entries::DEFAULT_MIN_IDLE);
            }
            other => panic!("{other:?}"),
        }
        match action(&["gc", "--keep-bytes", "500M", "--min-idle", "0"]) {
            Some(CacheAction::Gc {
                keep_bytes,
                dry_run,
                min_idle,
            }) => {
                assert_eq!(keep_bytes, 500 << 20);
                assert!(!dry_run);
                assert_eq!(min_idle, Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
        let err = error_of(&["cache", "gc", "--keep-bytes", "lots"]);
        assert!(err.contains("`lots` is not a size"), "{err}");
        let err = error_of(&["cache", "gc"]);
        assert!(err.contains("--keep-bytes"), "{err}");
    }

    #[test]
    fn snapshot_unknown_subcommand() {
        insta::assert_snapshot!(error_of(&["bogus"]));
    }

    #[test]
    fn snapshot_unknown_flag() {
        insta::assert_snapshot!(error_of(&["run", "hello", "--keepstate"]));
    }

    #[test]
    fn snapshot_interactive_without_test() {
        insta::assert_snapshot!(error_of(&["interactive"]));
    }
}
