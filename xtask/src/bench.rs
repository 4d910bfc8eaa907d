//! `cargo xtask bench [boot|backdoor|switch|ocr|warm|driver|all]`: each crate's benchmark, built in
//! release mode with the crate's `bench` cargo feature (benchmark code is not part of a crate's
//! normal build) and run in this process's terminal. Every benchmark prints
//! `bench <name>: <metric> ours=<v> baseline=<v> ratio=<r> baseline_kind=<competitor|ablation>`
//! with its baseline measured in the same run (ratio above 1 = ours better). `competitor`: the
//! baseline is another implementation (vde_switch, the NixOS OCR pipeline, the NixOS backdoor
//! protocol); `ablation`: it is our own code with one feature turned off (our image without the
//! boot tuning, a cold boot instead of a warm start, the driver without its in-guest waits).

use anyhow::Result;

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
        BenchKind::All => &[],
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
    ];
    let kinds: &[BenchKind] = if which == BenchKind::All {
        &all
    } else {
        std::slice::from_ref(&which)
    };
    for &kind in kinds {
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
            if kind == BenchKind::All {
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
}
