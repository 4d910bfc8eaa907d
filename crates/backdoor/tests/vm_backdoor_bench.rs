//! The benchmark (cargo feature `bench`) on the VM of `common`: our protocol against the NixOS
//! protocol, interleaved on the main shell (vport0p1) and on the NixOS-compatible console (hvc0).
//! Small counts; the full run is `cargo xtask bench backdoor`. `bench::run` fails when the two
//! protocols disagree on a command's output, so this also checks the baseline protocol end to end.
//! Takes the host VM lock. Run with `--nocapture` to see the bench lines.

mod common;

use machinist_backdoor::bench::{self, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_backdoor_bench_on_both_paths() {
    let common::Vm {
        qemu,
        mut console,
        mut shell,
        keep: _keep,
        ..
    } = common::boot().await;
    let opts = BenchOptions {
        iterations: 30,
        mixed_rounds: 5,
        throughput_mib: 50,
        throughput_runs: 2,
        process_count_runs: 10,
        mixed: vec![
            "test -e /etc/hostname".into(),
            "cat /etc/os-release".into(),
            "ls /".into(),
        ],
        name: "backdoor-vm-tiny".into(),
    };
    let report = bench::run(&mut shell, &opts).await.unwrap();
    let names: Vec<&str> = report.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "true_ms",
            "true_p95_ms",
            "bin_true_ms",
            "bin_true_p95_ms",
            "mixed_ms",
            "mixed_p95_ms",
            "mb_per_s",
            "procs_true",
            "procs_bin_true"
        ]
    );
    // Our protocol runs one guest process per command, the NixOS one three.
    let procs = &report.metrics[7];
    assert!(procs.ours < procs.baseline, "{procs:?}");
    // Latency only on the console (NixOS's path; its throughput is lossy under load).
    let opts = BenchOptions {
        throughput_runs: 0,
        name: "backdoor-vm-tiny-hvc0".into(),
        ..opts
    };
    let report = bench::run(&mut console, &opts).await.unwrap();
    assert!(report
        .to_string()
        .lines()
        .all(|l| l.starts_with("bench backdoor-vm-tiny-hvc0: ")
            && l.ends_with(" baseline_kind=competitor")));
    drop(qemu);
}
