//! Boot benchmark: QEMU spawn -> initramfs marker on the serial console with Machinist's setup
//! (`QemuProcess`, `-accel tcg,thread=multi,tb-size=256 -smp 2`, QMP accepted) against a plain
//! `std::process::Command` with QEMU's default TCG (`-accel tcg -smp 1`), interleaved in the
//! same run; also prints spawn -> QMP ready. `qemu-boot-supervised-1cpu` isolates the cost of
//! supervision + QMP (same guest config); `qemu-boot-defaults` is the crate's default guest config.
//!
//! Run: `cargo run --release -p machinist-qemu --features bench --example boot_bench [-- <rounds>]`
//! (takes the VM lock). Prints `bench <name>: <metric> ours=<v> baseline=<v> ratio=<r>
//! baseline_kind=ablation` lines (ratio > 1 = ours better; the baseline is the same QEMU with our
//! settings left out).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machinist_qemu::kernel::{
    test_kernel, AfterMarker, TestKernel, TinyInitramfs, VIRTIO_CONSOLE_MODULES,
};
use machinist_qemu::socket::bind_listener;
use machinist_qemu::{QemuCommand, QemuProcess, Qmp, VmTestLock};

const MARKER: &str = "MACHINIST-BENCH-READY";
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

struct Sample {
    qmp_ready: f64,
    marker: f64,
}

/// Ours: `QemuProcess` with the crate's defaults (MTTCG, tb-size=256, 2 vCPUs), QMP accepted.
async fn boot_ours(
    kernel: &TestKernel,
    initrd: &Path,
    dir: &Path,
    cores: u32,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let qmp_path = dir.join("qmp.sock");
    let listener = bind_listener(&qmp_path)?;
    let cmd = QemuCommand::new("ours")
        .kernel(&kernel.vmlinuz)
        .initrd(initrd)
        .append(APPEND)
        .cores(cores)
        .qmp(&qmp_path);
    let t0 = Instant::now();
    let qemu = QemuProcess::spawn(&cmd)?;
    let _qmp = qemu
        .while_running(Qmp::accept(&listener, Duration::from_secs(30)))
        .await??;
    let qmp_ready = t0.elapsed().as_secs_f64();
    qemu.serial()
        .wait_for(0, MARKER, |l| l.contains(MARKER), Duration::from_secs(120))
        .await?;
    let marker = t0.elapsed().as_secs_f64();
    qemu.kill().await?;
    Ok(Sample { qmp_ready, marker })
}

/// Baseline: a plain `std::process::Command` with QEMU's default TCG (`-accel tcg -smp 1`),
/// reading stdout for the marker, as a naive harness would.
fn boot_baseline(kernel: &TestKernel, initrd: &Path) -> Result<f64, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-m",
            "1024",
            "-nodefaults",
        ])
        .args([
            "-display", "none", "-vga", "std", "-serial", "stdio", "-kernel",
        ])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", APPEND])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let mut found = None;
    for line in out.lines() {
        if line?.contains(MARKER) {
            found = Some(t0.elapsed().as_secs_f64());
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    found.ok_or_else(|| "baseline QEMU exited without the marker".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let _lock = VmTestLock::acquire()?;
    let kernel = test_kernel()?;
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("initrd.cpio");
    TinyInitramfs::new(MARKER)
        .modules(VIRTIO_CONSOLE_MODULES)
        .after(AfterMarker::Sleep)
        .write(&kernel, &initrd)?;
    let (mut ours, mut ours1, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(boot_ours(&kernel, &initrd, dir.path(), 2).await?);
        ours1.push(boot_ours(&kernel, &initrd, dir.path(), 1).await?);
        let (k, i) = (kernel.clone(), initrd.clone());
        base.push(
            tokio::task::spawn_blocking(move || boot_baseline(&k, &i).map_err(|e| e.to_string()))
                .await??,
        );
    }
    let print = |name: &str, o: f64, b: f64| {
        println!(
            "bench {name}: seconds ours={o:.3} baseline={b:.3} ratio={:.2} baseline_kind=ablation",
            b / o
        );
    };
    println!(
        "spawn->QMP ready (ours, median of {rounds}): {:.3} s",
        median(ours.iter().map(|s| s.qmp_ready).collect())
    );
    let base = median(base);
    // Same guest config (1 vCPU) with and without Machinist's supervision and QMP.
    print(
        "qemu-boot-supervised-1cpu",
        median(ours1.iter().map(|s| s.marker).collect()),
        base,
    );
    // Machinist's defaults (MTTCG, 2 vCPUs, tb-size=256) against plain QEMU with 1 vCPU.
    print(
        "qemu-boot-defaults",
        median(ours.iter().map(|s| s.marker).collect()),
        base,
    );
    Ok(())
}
