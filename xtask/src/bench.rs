//! `cargo xtask bench [boot|backdoor|switch|ocr|warm|driver|backend|all]`: each crate's benchmark, built in
//! release mode with the crate's `bench` cargo feature (benchmark code is not part of a crate's
//! normal build) and run in this process's terminal. Every benchmark prints
//! `bench <name>: <metric> ours=<v> baseline=<v> ratio=<r> baseline_kind=<competitor|ablation>`
//! with its baseline measured in the same run (ratio above 1 = ours better). `competitor`: the
//! baseline is another implementation (vde_switch, the NixOS OCR pipeline, the NixOS backdoor
//! protocol); `ablation`: it is our own code with one feature turned off (our image without the
//! boot tuning, a cold boot instead of a warm start, the driver without its in-guest waits).
//!
//! `backend` has no example: it runs the `machinist` binary ([`backend`]), the PostgREST test with
//! every node a systemd-nspawn container (ours) and with every node a VM (baseline, warm start
//! on). It needs what container nodes need (root, `systemd-container`; see `machinist doctor`).
//! Neither `machinist run` nor this bench takes the host-wide VM lock: on a shared host run it as
//! `flock /tmp/machinist-vm-tests.lock cargo xtask bench backend`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::run::{cargo, run};
use crate::BenchKind;

/// The cargo arguments that run one benchmark.
fn cargo_args(which: BenchKind) -> &'static [&'static str] {
    match which {
        // Cold boots of our node vs Debian's stock initramfs and units (crates/guest).
        BenchKind::Boot => &[
            "run",
            "--release",
            "-p",
            "machinist-guest",
            "--features",
            "bench",
            "--example",
            "bench-boot",
        ],
        // Our protocol vs the NixOS protocol on the same booted Debian guest, through its port.
        BenchKind::Backdoor => &[
            "run",
            "--release",
            "-p",
            "machinist",
            "--features",
            "bench",
            "--example",
            "bench-backdoor",
        ],
        // Our switch vs Debian's vde_switch, same VDE transport (plus our stream transport).
        BenchKind::Switch => &[
            "run",
            "--release",
            "-p",
            "machinist-netsim",
            "--features",
            "bench",
            "--example",
            "bench_switch",
        ],
        // Our OCR vs the NixOS pipeline (ImageMagick + tesseract) on the committed corpus.
        BenchKind::Ocr => &[
            "run",
            "--release",
            "-p",
            "machinist-ocr",
            "--features",
            "bench",
            "--example",
            "bench",
        ],
        // Restore from a saved VM state vs a cold boot.
        BenchKind::Warm => &[
            "run",
            "--release",
            "-p",
            "machinist",
            "--features",
            "bench",
            "--example",
            "bench-warm",
        ],
        // Polling conditions and in-guest waits vs the NixOS behaviour, on one booted machine.
        BenchKind::Driver => &[
            "run",
            "--release",
            "-p",
            "machinist",
            "--features",
            "bench",
            "--example",
            "bench_driver",
        ],
        // Runs the `machinist` binary instead: see `backend`.
        BenchKind::Backend | BenchKind::All => &[],
    }
}

/// Runs one benchmark, or all of them in turn.
pub fn bench(which: BenchKind) -> Result<()> {
    let all = [
        BenchKind::Boot,
        BenchKind::Backdoor,
        BenchKind::Switch,
        BenchKind::Ocr,
        BenchKind::Warm,
        BenchKind::Driver,
        BenchKind::Backend,
    ];
    let kinds: &[BenchKind] = if which == BenchKind::All {
        &all
    } else {
        std::slice::from_ref(&which)
    };
    for &kind in kinds {
        if kind == BenchKind::Backend {
            for line in backend(3)? {
                println!("{line}");
            }
            continue;
        }
        run(cargo()
            .current_dir(crate::workspace_root())
            .args(cargo_args(kind)))?;
        if kind == BenchKind::Warm {
            println!("{}", postgrest_assert(3)?);
        }
    }
    Ok(())
}

/// `postgrest_assert_s`: from `start_all()` to the guide's assertion (the end of its
/// `script.py`) in the PostgREST test, with node snapshots (ours) and cold boots (baseline),
/// median of `runs` runs each, interleaved. Builds the binaries and the bundled tests' images
/// and node snapshots first.
fn postgrest_assert(runs: usize) -> Result<String> {
    let bins = crate::postgrest::build_bins(true)?;
    run(std::process::Command::new(&bins.machinist).arg("build-images"))?;
    let script = crate::workspace_root().join("tests/postgrest/script.py");
    let once = |cold: bool| -> Result<f64> {
        let out = crate::workspace_root()
            .join("target/bench-postgrest")
            .join(if cold { "cold" } else { "warm" });
        let mut cmd = std::process::Command::new(&bins.machinist);
        cmd.args(["run", "postgrest", "--script"])
            .arg(&script)
            .arg("--output")
            .arg(&out)
            .stderr(std::process::Stdio::null());
        if cold {
            cmd.arg("--cold-boot");
        }
        run(&mut cmd)?;
        let log = crate::summary::parse_log_file(&out.join("log.jsonl"))
            .ok_or_else(|| anyhow::anyhow!("the PostgREST run wrote no log.jsonl"))?;
        assert_seconds(&log).ok_or_else(|| {
            anyhow::anyhow!("the PostgREST run's log has no start_all or script end")
        })
    };
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        warm.push(once(false)?);
        cold.push(once(true)?);
    }
    Ok(warm_line("postgrest_assert_s", median(warm), median(cold)))
}

/// Seconds from `start_all()` to the end of the script, from a run's log.
fn assert_seconds(log: &crate::summary::RunLog) -> Option<f64> {
    let script = log.script.as_ref()?;
    Some(script.start + script.duration? - log.start_all?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A `bench warm:` line (the cold boot is our own start with warm start off: an ablation).
fn warm_line(metric: &str, ours: f64, baseline: f64) -> String {
    format!(
        "bench warm: {metric} ours={ours:.2} baseline={baseline:.2} ratio={:.2} baseline_kind=ablation",
        baseline / ours.max(1e-9)
    )
}

/// The two node backends the `backend` bench compares (`MACHINIST_BACKEND` values).
const BACKENDS: [&str; 2] = ["container", "vm"];

/// The Python script timing `succeed("true")`: one untimed call (the node's shell connects),
/// then 50 timed ones; prints their median as a [`SUCCEED_PREFIX`] line on stdout.
const SUCCEED_SCRIPT: &str = r#"import time
start_all()
client.succeed("true")
lat = []
for _ in range(50):
    t0 = time.perf_counter()
    client.succeed("true")
    lat.append((time.perf_counter() - t0) * 1000.0)
lat.sort()
print(f"bench-backend succeed_true_ms={lat[len(lat) // 2]:.3f}")
"#;

/// The start of the line [`SUCCEED_SCRIPT`] prints.
const SUCCEED_PREFIX: &str = "bench-backend succeed_true_ms=";

/// The subtest of the PostgREST test's built-in script that is the guide's own assertion.
const GUIDE_SUBTEST: &str = "the guide's script";

/// One backend's samples.
#[derive(Default)]
struct Samples {
    assert_s: Vec<f64>,
    test_s: Vec<f64>,
    succeed_true_ms: Vec<f64>,
}

/// `bench backend`: the PostgREST test (`machinist run postgrest`, its built-in script with the
/// subtests) with `MACHINIST_BACKEND=container` (ours) and `=vm` (baseline; warm start on),
/// `runs` times each, interleaved, medians: `assert_s` from `start_all()` to the end of the
/// guide's assertion (its subtest, from the run's `log.jsonl`), `test_s` the whole command's wall
/// time, `succeed_true_ms` the median `succeed("true")` of a run of [`SUCCEED_SCRIPT`].
/// Builds the binaries and the bundled tests' images and node snapshots first.
fn backend(runs: usize) -> Result<Vec<String>> {
    let bins = crate::postgrest::build_bins(true)?;
    run(Command::new(&bins.machinist).arg("build-images"))?;
    let dir = crate::workspace_root().join("target/bench-backend");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("succeed_true.py");
    std::fs::write(&script, SUCCEED_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut samples: [Samples; 2] = Default::default();
    for _ in 0..runs.max(1) {
        for (backend, s) in BACKENDS.iter().zip(samples.iter_mut()) {
            // The whole test.
            let out = dir.join(backend).join("test");
            let t0 = Instant::now();
            machinist_run(&bins.machinist, backend, &out, None)?;
            s.test_s.push(t0.elapsed().as_secs_f64());
            let log = crate::summary::parse_log_file(&out.join("log.jsonl"))
                .with_context(|| format!("the run wrote no {}/log.jsonl", out.display()))?;
            check_backend(&log, backend, &out)?;
            s.assert_s.push(guide_assert_seconds(&log).with_context(|| {
                format!(
                    "{}/log.jsonl has no start_all or no finished subtest {GUIDE_SUBTEST:?}",
                    out.display()
                )
            })?);
            // succeed("true").
            let out = dir.join(backend).join("succeed");
            let stdout = machinist_run(&bins.machinist, backend, &out, Some(&script))?;
            s.succeed_true_ms
                .push(parse_succeed_ms(&stdout).with_context(|| {
                    format!("{} printed no `{SUCCEED_PREFIX}...` line", script.display())
                })?);
        }
    }
    let [ct, vm] = samples;
    Ok(vec![
        backend_line("assert_s", median(ct.assert_s), median(vm.assert_s)),
        backend_line("test_s", median(ct.test_s), median(vm.test_s)),
        backend_line(
            "succeed_true_ms",
            median(ct.succeed_true_ms),
            median(vm.succeed_true_ms),
        ),
    ])
}

/// `machinist run postgrest --output out [--script script]` with `MACHINIST_BACKEND=backend`;
/// its stdout. Its stderr (the nested log) goes to `<out>.stderr.log`.
fn machinist_run(
    machinist: &Path,
    backend: &str,
    out: &Path,
    script: Option<&Path>,
) -> Result<String> {
    let err_path = out.with_extension("stderr.log");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let err = std::fs::File::create(&err_path)
        .with_context(|| format!("creating {}", err_path.display()))?;
    let mut cmd = Command::new(machinist);
    cmd.args(["run", "postgrest", "--output"]).arg(out);
    if let Some(script) = script {
        cmd.arg("--script").arg(script);
    }
    cmd.env("MACHINIST_BACKEND", backend)
        .stdin(Stdio::null())
        .stderr(err);
    let shown = format!("MACHINIST_BACKEND={backend} {}", crate::run::show(&cmd));
    eprintln!("xtask: $ {shown}");
    let o = cmd
        .output()
        .with_context(|| format!("starting `{shown}`"))?;
    if !o.status.success() {
        bail!(
            "`{shown}` failed ({}); its log: {}",
            o.status,
            err_path.display()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Fails unless every machine of the run booted on `backend` (a container's boot says
/// "container"; a VM's never does), so a backend choice that did not take is not measured.
fn check_backend(log: &crate::summary::RunLog, backend: &str, out: &Path) -> Result<()> {
    let container = backend == "container";
    if log.boot_kinds.is_empty()
        || log
            .boot_kinds
            .values()
            .any(|k| k.contains("container") != container)
    {
        bail!(
            "the run in {} was meant to use {backend} nodes but its machines booted as {:?}",
            out.display(),
            log.boot_kinds
        );
    }
    if !container && log.boot_kinds.values().any(|k| !k.starts_with("restored")) {
        eprintln!(
            "xtask: note: not every VM was a warm start (the baseline is slower for it): {:?}",
            log.boot_kinds
        );
    }
    Ok(())
}

/// Seconds from `start_all()` to the end of the guide's assertion (its subtest), from a run's
/// log.
fn guide_assert_seconds(log: &crate::summary::RunLog) -> Option<f64> {
    let sub = log
        .subtests
        .iter()
        .find(|b| b.name.starts_with(GUIDE_SUBTEST))?;
    Some(sub.start + sub.duration? - log.start_all?)
}

/// The median of the `succeed_true_ms=` line of the script's stdout.
fn parse_succeed_ms(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(SUCCEED_PREFIX))
        .and_then(|v| v.trim().parse().ok())
}

/// A `bench backend:` line: containers are ours, VMs the baseline (another runtime for the same
/// nodes: our own code on the other backend, an ablation).
fn backend_line(metric: &str, container: f64, vm: f64) -> String {
    let p = if metric.ends_with("_ms") { 3 } else { 2 };
    format!(
        "bench backend: {metric} ours={container:.p$} baseline={vm:.p$} ratio={:.2} baseline_kind=ablation",
        vm / container.max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum as _;

    #[test]
    fn the_postgrest_line_measures_start_all_to_the_script_end() {
        let log = crate::summary::RunLog {
            start_all: Some(2.0),
            script: Some(crate::summary::Block {
                name: String::new(),
                start: 1.5,
                ok: Some(true),
                duration: Some(6.5),
            }),
            ..Default::default()
        };
        assert_eq!(assert_seconds(&log), Some(6.0));
        assert_eq!(
            warm_line("postgrest_assert_s", 2.0, 16.0),
            "bench warm: postgrest_assert_s ours=2.00 baseline=16.00 ratio=8.00 baseline_kind=ablation"
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn every_benchmark_runs_with_its_crates_bench_feature() {
        for &kind in BenchKind::value_variants() {
            let args = cargo_args(kind);
            if matches!(kind, BenchKind::All | BenchKind::Backend) {
                assert!(args.is_empty());
                continue;
            }
            assert!(
                args.windows(2).any(|w| w == ["--features", "bench"]),
                "{kind:?}: {args:?}"
            );
            assert!(args.starts_with(&["run", "--release", "-p"]), "{kind:?}");
        }
    }

    #[test]
    fn the_backend_lines() {
        assert_eq!(
            backend_line("assert_s", 1.5, 9.0),
            "bench backend: assert_s ours=1.50 baseline=9.00 ratio=6.00 baseline_kind=ablation"
        );
        assert_eq!(
            backend_line("succeed_true_ms", 1.25, 40.0),
            "bench backend: succeed_true_ms ours=1.250 baseline=40.000 ratio=32.00 \
             baseline_kind=ablation"
        );
        assert_eq!(
            parse_succeed_ms("hello\nbench-backend succeed_true_ms=1.542\n"),
            Some(1.542)
        );
        assert_eq!(parse_succeed_ms("bench-backend succeed_true_ms=\n"), None);
        assert_eq!(parse_succeed_ms(""), None);
    }

    #[test]
    fn the_backend_assertion_ends_with_the_guides_subtest() {
        let block = |name: &str, start, duration| crate::summary::Block {
            name: name.into(),
            start,
            ok: Some(true),
            duration: Some(duration),
        };
        let mut log = crate::summary::RunLog {
            start_all: Some(1.0),
            subtests: vec![
                block(
                    "the guide's script: curl the todos from the client",
                    1.1,
                    2.4,
                ),
                block("block() on the server cuts the client off", 3.5, 4.0),
            ],
            ..Default::default()
        };
        assert_eq!(guide_assert_seconds(&log), Some(2.5));
        log.boot_kinds = [
            (
                "client".to_string(),
                "cold boot (container (warm start does not apply))".to_string(),
            ),
            ("server".to_string(), "restored node snapshot".to_string()),
        ]
        .into();
        let out = Path::new("/out");
        assert!(check_backend(&log, "container", out).is_err());
        assert!(check_backend(&log, "vm", out).is_err());
        log.boot_kinds.remove("server");
        assert!(check_backend(&log, "container", out).is_ok());
        log.subtests.remove(0);
        assert_eq!(guide_assert_seconds(&log), None);
    }
}
