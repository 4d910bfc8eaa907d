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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum as _;

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
