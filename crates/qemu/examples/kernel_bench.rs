//! Kernel benchmark: Debian's cloud kernel (`linux-image-cloud-amd64`, what Machinist boots)
//! against the generic one (`linux-image-amd64`), booting the same tiny busybox initramfs with
//! the same QEMU line (the crate's defaults: q35, `-accel tcg,thread=multi,tb-size=256`,
//! 2 vCPUs, 1024 MiB), interleaved (the order alternates every round).
//!
//! The marker goes to the 16550 serial port `ttyS0`, built into both kernels, so the initramfs
//! loads no module and `/init` does the same work under both. Measured per boot:
//! - host: QEMU spawn -> marker line on the serial console (`marker_s`);
//! - guest printk clock (read with `dmesg` *after* the marker, so the timing is untouched):
//!   kernel banner (`Linux version`, t=0) -> `Run /init`;
//! - one extra boot per kernel with `earlycon` and `initcall_debug` (not in the medians): spawn
//!   -> kernel banner on the host clock (firmware + loading + decompression), the number of
//!   initcalls, their summed duration and the slowest ones.
//!
//! Run: `cargo run --release -p machinist-qemu --features bench --example kernel_bench [-- <rounds>]`
//! (default 5; takes the VM lock; downloads the generic kernel, ~70 MB, into the cache on first use).
//! Prints `bench kernel: marker_s ours=<cloud> baseline=<generic> ratio=<generic/cloud>
//! baseline_kind=ablation` (ratio > 1 = the cloud kernel, ours, boots faster; the baseline is our
//! setup with Debian's generic kernel instead).

use std::path::Path;
use std::time::{Duration, Instant};

use machinist_qemu::kernel::{
    test_kernel_of, AfterMarker, KernelFlavour, TestKernel, TinyInitramfs,
};
use machinist_qemu::{QemuCommand, QemuProcess, VmTestLock};

const READY: &str = "KBENCH-READY";
const END: &str = "KBENCH-END";
const APPEND: &str = "console=ttyS0 panic=-1 quiet";
/// The detail boot: early console (so the host sees the banner when it happens, i.e. after the
/// firmware and the decompressor), `loglevel=6` (notices, not info: few lines on the slow
/// console), and initcall timings in the kernel log.
const APPEND_DETAIL: &str = "console=ttyS0 earlycon=uart8250,io,0x3f8,115200 loglevel=6 \
                             panic=-1 initcall_debug log_buf_len=16M";

/// Runs after the marker: milestones from the kernel log, the log size, initcall statistics
/// (only non-empty with `initcall_debug`). Each output line is prefixed for the host parser.
const SCRIPT: &str = r#"echo 'KBENCH-READY' >/dev/ttyS0
dmesg | grep -E 'Linux version|smpboot: Total of|clocksource: Switched to|Freeing unused kernel image|Run /init' | sed 's/^/KBENCH-DMESG /' >/dev/ttyS0
echo "KBENCH-LINES $(dmesg | wc -l)" >/dev/ttyS0
dmesg | awk '/initcall .* returned .* after [0-9]+ usecs/ { n++; for (i = 1; i <= NF; i++) if ($i == "after") t += $(i+1) } END { print "KBENCH-INITCALLS", n+0, t+0 }' >/dev/ttyS0
dmesg | sed -n 's/.*initcall \([^ ]*\) returned .* after \([0-9]*\) usecs.*/\2 \1/p' | sort -rn | head -8 | sed 's/^/KBENCH-TOP /' >/dev/ttyS0"#;

struct Boot {
    /// Host: spawn -> marker line.
    marker_s: f64,
    /// Host: spawn -> `Linux version` line (only printed early with `earlycon`, not `quiet`).
    banner_s: Option<f64>,
    /// Guest printk clock at `Run /init` (the banner is at 0).
    run_init_s: Option<f64>,
    /// Lines in the kernel log at the marker.
    log_lines: Option<u64>,
    /// (count, summed usecs) of initcalls (with `initcall_debug`).
    initcalls: Option<(u64, u64)>,
    /// The slowest initcalls, `<usecs> <name>`.
    top: Vec<String>,
    /// Milestone lines from the kernel log.
    milestones: Vec<String>,
}

/// `[    1.234567] text` -> (1.234567, "text").
fn printk_time(line: &str) -> Option<(f64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (ts, text) = rest.split_once(']')?;
    Some((ts.trim().parse().ok()?, text.trim()))
}

async fn boot(
    kernel: &TestKernel,
    initrd: &Path,
    append: &str,
) -> Result<Boot, Box<dyn std::error::Error>> {
    let cmd = QemuCommand::new("kbench")
        .kernel(&kernel.vmlinuz)
        .initrd(initrd)
        .append(append);
    let t0 = Instant::now();
    let qemu = QemuProcess::spawn(&cmd)?;
    let serial = qemu.serial();
    let ready = serial
        .wait_for(0, READY, |l| l.trim() == READY, Duration::from_secs(180))
        .await?;
    let marker_s = ready.at.duration_since(t0).as_secs_f64();
    serial
        .wait_for(
            ready.index,
            END,
            |l| l.trim() == END,
            Duration::from_secs(120),
        )
        .await?;
    let timed = serial.timed_lines();
    qemu.kill().await?;
    let banner_s = timed
        .iter()
        .find(|l| l.text.contains("Linux version"))
        .map(|l| l.at.duration_since(t0).as_secs_f64());
    let lines: Vec<String> = timed.into_iter().map(|l| l.text).collect();
    let mut b = Boot {
        marker_s,
        banner_s,
        run_init_s: None,
        log_lines: None,
        initcalls: None,
        top: Vec::new(),
        milestones: Vec::new(),
    };
    for l in &lines {
        if let Some(m) = l.strip_prefix("KBENCH-DMESG ") {
            if let Some((t, text)) = printk_time(m) {
                if text.starts_with("Run /init") {
                    b.run_init_s = Some(t);
                }
            }
            b.milestones.push(m.to_string());
        } else if let Some(n) = l.strip_prefix("KBENCH-LINES ") {
            b.log_lines = n.trim().parse().ok();
        } else if let Some(s) = l.strip_prefix("KBENCH-INITCALLS ") {
            let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                b.initcalls = Some((n, t));
            }
        } else if let Some(s) = l.strip_prefix("KBENCH-TOP ") {
            b.top.push(s.to_string());
        }
    }
    Ok(b)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// The kernel image compression, from `boot/config-<release>` (`CONFIG_KERNEL_XZ=y` -> `XZ`).
fn compression(k: &TestKernel) -> String {
    let config = k.root.join("boot").join(format!("config-{}", k.release));
    std::fs::read_to_string(config)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let name = l.strip_prefix("CONFIG_KERNEL_")?.strip_suffix("=y")?;
            Some(name.to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Built-in modules (`modules.builtin` lines) and loadable `.ko` files of a kernel.
fn module_counts(k: &TestKernel) -> (usize, usize) {
    let builtin = std::fs::read_to_string(k.modules_dir.join("modules.builtin"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let mut ko = 0;
    let mut stack = vec![k.modules_dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                ko += 1;
            }
        }
    }
    (builtin, ko)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    // Fetch (maybe download) before taking the VM lock: no VM runs meanwhile.
    let flavours = [KernelFlavour::Cloud, KernelFlavour::Generic];
    let kernels: Vec<TestKernel> = flavours
        .iter()
        .map(|f| test_kernel_of(*f))
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let mut initrds = Vec::new();
    for (f, k) in flavours.iter().zip(&kernels) {
        let initrd = dir.path().join(format!("initrd-{f:?}.cpio"));
        TinyInitramfs::new(END)
            .script(SCRIPT)
            .after(AfterMarker::Sleep)
            .write(k, &initrd)?;
        let (builtin, ko) = module_counts(k);
        println!(
            "{f:?}: {} vmlinuz {:.2} MiB ({} bytes, {} compressed), {builtin} built-in modules, \
             {ko} loadable",
            k.release,
            mib(&k.vmlinuz),
            std::fs::metadata(&k.vmlinuz)?.len(),
            compression(k),
        );
        initrds.push(initrd);
    }

    let _lock = VmTestLock::acquire()?;
    let mut boots: [Vec<Boot>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let b = boot(&kernels[i], &initrds[i], APPEND).await?;
            println!(
                "round {round} {:?}: marker {:.3} s, Run /init at {} s (printk), {} log lines",
                flavours[i],
                b.marker_s,
                b.run_init_s.map_or("?".into(), |t| format!("{t:.3}")),
                b.log_lines.map_or("?".into(), |n| n.to_string()),
            );
            boots[i].push(b);
        }
    }
    // One boot per kernel with initcall_debug, outside the medians.
    let mut detail = Vec::new();
    for i in 0..2 {
        let b = boot(&kernels[i], &initrds[i], APPEND_DETAIL).await?;
        detail.push(b);
    }
    drop(_lock);

    let marker: Vec<Vec<f64>> = boots
        .iter()
        .map(|v| v.iter().map(|b| b.marker_s).collect())
        .collect();
    let run_init: Vec<Vec<f64>> = boots
        .iter()
        .map(|v| v.iter().filter_map(|b| b.run_init_s).collect())
        .collect();
    for (i, f) in flavours.iter().enumerate() {
        println!(
            "{f:?} {}: marker_s [{}], banner->Run /init [{}]",
            kernels[i].release,
            list(&marker[i]),
            list(&run_init[i])
        );
        if let Some(b) = boots[i].first() {
            for m in &b.milestones {
                println!("  {m}");
            }
        }
        let d = &detail[i];
        println!(
            "  detail boot (earlycon, loglevel=6, initcall_debug): spawn->banner {} s (host \
             clock), marker {:.3} s",
            d.banner_s.map_or("?".into(), |t| format!("{t:.3}")),
            d.marker_s
        );
        match d.initcalls {
            Some((n, us)) => println!(
                "  {n} initcalls, {:.3} s summed; slowest (usecs):",
                us as f64 / 1e6
            ),
            None => println!("  no initcall lines"),
        }
        for t in &d.top {
            println!("    {t}");
        }
    }
    let (mc, mg) = (median(marker[0].clone()), median(marker[1].clone()));
    println!(
        "bench kernel: marker_s ours={mc:.3} baseline={mg:.3} ratio={:.2} baseline_kind=ablation",
        mg / mc
    );
    if !run_init[0].is_empty() && !run_init[1].is_empty() {
        let (rc, rg) = (median(run_init[0].clone()), median(run_init[1].clone()));
        println!(
            "bench kernel-banner-to-init: printk_s ours={rc:.3} baseline={rg:.3} ratio={:.2} baseline_kind=ablation",
            rg / rc
        );
        println!(
            "spawn->banner + /init->marker (marker - Run /init, medians): cloud {:.3} s, generic {:.3} s",
            mc - rc,
            mg - rg
        );
    }
    Ok(())
}
