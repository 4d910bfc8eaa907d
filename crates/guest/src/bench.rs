//! `cargo xtask bench boot`: cold boots of our configuration against the naive baseline, an
//! ablation (`baseline_kind=ablation` in the printed lines): our image without the boot tuning.
//!
//! Both boot the same node (VGA, one VLAN NIC, networkd, firewall, the node layer) with the same
//! QEMU command line. Ours: tuned image + tiny initrd. Baseline: Debian's default units and
//! Debian's own initramfs (with a hook that applies the same layer). Reported: QEMU start ->
//! backdoor greeting, QEMU start -> multi-user.target active (read through the backdoor), median
//! of `runs` interleaved cold boots, plus the boot breakdown of our configuration and the image
//! build times (cold = when the cache entry was built, warm = cache hit now).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use machinist_qemu::{Nic, VmTestLock};

use crate::config::NodeConfig;
use crate::error::GuestError;
use crate::image::{Image, ImageCache, ImageSpec};
use crate::layer::NodeLayer;
use crate::network::NetworkPlan;
use crate::progress::Progress;
use crate::testvm::{BootSpec, TestVm};
use crate::tuning::Profile;
use crate::{FileSpec, ServiceSpec, UserSpec};

/// One cold boot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootSample {
    /// QEMU spawn -> greeting, seconds.
    pub greeting_s: f64,
    /// QEMU spawn -> multi-user.target active, seconds.
    pub ready_s: f64,
    /// Guest uptime when the greeting arrived (so firmware = greeting_s - this).
    pub uptime_at_greeting_s: f64,
    /// QEMU spawn -> multi-user.target active from systemd's own timestamp (no polling
    /// latency): firmware estimate + `ActiveEnterTimestampMonotonic`.
    pub ready_exact_s: f64,
}

/// Where the time of our boot goes (medians, seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    /// QEMU start -> kernel start (firmware, kernel load).
    pub firmware_s: f64,
    /// Kernel start -> our initrd's init.
    pub kernel_s: f64,
    /// Our initrd: modules, mount, apply-layer, switch_root.
    pub initrd_s: f64,
    /// switch_root -> backdoor greeting (systemd, early units).
    pub systemd_to_greeting_s: f64,
    /// greeting -> multi-user.target.
    pub greeting_to_ready_s: f64,
}

/// The benchmark's result.
#[derive(Debug, Clone)]
pub struct BootBenchReport {
    /// Our boots.
    pub ours: Vec<BootSample>,
    /// Baseline boots.
    pub baseline: Vec<BootSample>,
    /// Our boot breakdown.
    pub breakdown: Breakdown,
    /// Cold build time of our image (seconds, from its manifest) and of the baseline's.
    pub build_cold_s: (f64, f64),
    /// Cache-hit time of `ensure` for our image.
    pub build_warm_s: f64,
    /// Image sizes in bytes allocated (ours, baseline).
    pub image_bytes: (u64, u64),
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl BootBenchReport {
    /// The lines `cargo xtask bench boot` prints. Every line with a baseline ends in
    /// `baseline_kind=ablation`: the baseline is our own image and boot path with the tuning
    /// turned off (the stock profile, Debian's initramfs), not another tool.
    pub fn lines(&self) -> Vec<String> {
        let g = |v: &[BootSample]| median(v.iter().map(|s| s.greeting_s).collect());
        let r = |v: &[BootSample]| median(v.iter().map(|s| s.ready_s).collect());
        let e = |v: &[BootSample]| median(v.iter().map(|s| s.ready_exact_s).collect());
        let (go, gb) = (g(&self.ours), g(&self.baseline));
        let (ro, rb) = (r(&self.ours), r(&self.baseline));
        let (eo, eb) = (e(&self.ours), e(&self.baseline));
        let b = &self.breakdown;
        vec![
            format!("bench boot: greeting_s ours={go:.2} baseline={gb:.2} ratio={:.2} {KIND}", gb / go),
            format!("bench boot: ready_s ours={ro:.2} baseline={rb:.2} ratio={:.2} {KIND}", rb / ro),
            format!("bench boot: ready_exact_s ours={eo:.2} baseline={eb:.2} ratio={:.2} {KIND}", eb / eo),
            format!(
                "bench boot: breakdown ours firmware={:.2} kernel={:.2} initrd={:.2} systemd_to_greeting={:.2} greeting_to_ready={:.2}",
                b.firmware_s, b.kernel_s, b.initrd_s, b.systemd_to_greeting_s, b.greeting_to_ready_s
            ),
            format!(
                "bench boot: image_build_s cold ours={:.1} baseline={:.1} warm={:.3} {KIND}",
                self.build_cold_s.0, self.build_cold_s.1, self.build_warm_s
            ),
            format!(
                "bench boot: image_mib ours={:.0} baseline={:.0} {KIND}",
                self.image_bytes.0 as f64 / 1048576.0,
                self.image_bytes.1 as f64 / 1048576.0
            ),
            format!(
                "bench boot: samples ours={:?} baseline={:?} {KIND}",
                self.ours.iter().map(|s| (round2(s.greeting_s), round2(s.ready_s))).collect::<Vec<_>>(),
                self.baseline.iter().map(|s| (round2(s.greeting_s), round2(s.ready_s))).collect::<Vec<_>>()
            ),
        ]
    }
}

/// What the baseline is: our own configuration with the boot tuning turned off.
const KIND: &str = "baseline_kind=ablation";

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The node the benchmark boots: a user, a file, a service, an open port, firewall on, one VLAN.
pub fn bench_node() -> NodeConfig {
    NodeConfig::new()
        .user(UserSpec::new("bench"))
        .file(FileSpec::new("/etc/bench.conf", "x=1\n"))
        .service(ServiceSpec::new("bench-listener", "/usr/bin/nc -lk 8080").user("bench"))
        .open_tcp_port(8080)
}

struct Boot {
    sample: BootSample,
    serial: Vec<String>,
    ready_uptime_s: f64,
}

fn boot_once(
    image: &Image,
    layer: &NodeLayer,
    base_initrd: Option<&Path>,
    dir: &Path,
    name: &str,
) -> Result<Boot, GuestError> {
    // A dummy switch port: QEMU connects its VLAN NIC here.
    let sw = dir.join(format!("{name}-vlan1.sock"));
    let _ = std::fs::remove_file(&sw);
    let listener = UnixListener::bind(&sw).map_err(|e| GuestError::io("binding", &sw, e))?;
    let mut spec = BootSpec::new(name, dir);
    spec.base_initrd = base_initrd.map(Path::to_path_buf);
    spec.nics
        .push(Nic::stream("nic-vlan1", crate::mac_for(1, 1), &sw));
    let mut vm = TestVm::boot(image, Some(layer), &spec)?;
    // Both figures count from QEMU's spawn (not from writing the overlay and the initrd).
    let t0 = vm.qemu.started_at();
    let greeting_s = vm.greeting_after.as_secs_f64();
    let (_, up) = vm.run(
        "read -r u _ < /proc/uptime; echo \"$u\"",
        Duration::from_secs(30),
    )?;
    let uptime_at_greeting_s: f64 = up.trim().parse().unwrap_or(f64::NAN);
    vm.run(
        "until systemctl is-active -q multi-user.target; do sleep 0.05; done",
        Duration::from_secs(120),
    )?;
    let ready_s = t0.elapsed().as_secs_f64();
    let (_, mono) = vm.run(
        "systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target",
        Duration::from_secs(30),
    )?;
    let ready_uptime_s = mono.trim().parse::<f64>().unwrap_or(f64::NAN) / 1e6;
    let serial = vm.qemu.serial().lines();
    drop(vm);
    drop(listener);
    Ok(Boot {
        sample: BootSample {
            greeting_s,
            ready_s,
            uptime_at_greeting_s,
            ready_exact_s: greeting_s - uptime_at_greeting_s + ready_uptime_s,
        },
        serial,
        ready_uptime_s,
    })
}

fn initrd_marks(serial: &[String]) -> (f64, f64) {
    let find = |key: &str| {
        serial
            .iter()
            .find_map(|l| l.split(key).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        find("machinist-initrd: start at "),
        find("machinist-initrd: switch_root at "),
    )
}

/// Run the boot benchmark: `runs` interleaved cold boots of ours and the baseline (builds the
/// images first if needed), holding the VM lock while booting.
pub fn run_boot_bench(
    cache: &ImageCache,
    runs: usize,
    progress: Progress,
) -> Result<BootBenchReport, GuestError> {
    let ours_spec = ImageSpec::base();
    let base_spec = ImageSpec::base().profile(Profile::Stock);
    let ours = cache.ensure(&ours_spec, progress)?;
    let baseline = cache.ensure(&base_spec, progress)?;
    let t = Instant::now();
    let _ = cache.ensure(&ours_spec, progress)?;
    let build_warm_s = t.elapsed().as_secs_f64();
    let deb_initrd = baseline
        .debian_initrd
        .clone()
        .ok_or_else(|| GuestError::BadImage {
            image: base_spec.name(),
            what: "no Debian initramfs in the stock image".into(),
        })?;

    let cfg = bench_node();
    let plan = NetworkPlan::new(&[("bench", &cfg)]);
    let layer = NodeLayer::render("bench", &cfg, &plan)?;
    let dir = std::env::temp_dir().join(format!("machinist-bench-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| GuestError::io("creating", &dir, e))?;
    let _lock = VmTestLock::acquire().map_err(|e| GuestError::BuildStep {
        image: "bench".into(),
        step: "VM lock".into(),
        status: "error".into(),
        output: e.to_string(),
    })?;
    let mut o = Vec::new();
    let mut b = Vec::new();
    let mut parts: Vec<Breakdown> = Vec::new();
    for i in 0..runs {
        let boot = boot_once(&ours, &layer, None, &dir, "bench")?;
        let (start, switch) = initrd_marks(&boot.serial);
        let s = boot.sample;
        parts.push(Breakdown {
            firmware_s: s.greeting_s - s.uptime_at_greeting_s,
            kernel_s: start,
            initrd_s: switch - start,
            systemd_to_greeting_s: s.uptime_at_greeting_s - switch,
            greeting_to_ready_s: boot.ready_uptime_s - s.uptime_at_greeting_s,
        });
        progress.line(&format!(
            "bench boot: run {} ours greeting {:.2} s ready {:.2} s",
            i + 1,
            s.greeting_s,
            s.ready_s
        ));
        o.push(s);
        let boot = boot_once(&baseline, &layer, Some(&deb_initrd), &dir, "bench")?;
        let s = boot.sample;
        progress.line(&format!(
            "bench boot: run {} baseline greeting {:.2} s ready {:.2} s",
            i + 1,
            s.greeting_s,
            s.ready_s
        ));
        b.push(s);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let m = |f: fn(&Breakdown) -> f64| median(parts.iter().map(f).collect());
    Ok(BootBenchReport {
        ours: o,
        baseline: b,
        breakdown: Breakdown {
            firmware_s: m(|p| p.firmware_s),
            kernel_s: m(|p| p.kernel_s),
            initrd_s: m(|p| p.initrd_s),
            systemd_to_greeting_s: m(|p| p.systemd_to_greeting_s),
            greeting_to_ready_s: m(|p| p.greeting_to_ready_s),
        },
        build_cold_s: (ours.build_seconds, baseline.build_seconds),
        build_warm_s,
        image_bytes: (allocated(&ours.disk), allocated(&baseline.disk)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(greeting_s: f64, ready_s: f64) -> BootSample {
        BootSample {
            greeting_s,
            ready_s,
            uptime_at_greeting_s: 1.0,
            ready_exact_s: ready_s,
        }
    }

    #[test]
    fn every_line_with_a_baseline_names_it_an_ablation() {
        let report = BootBenchReport {
            ours: vec![sample(2.0, 3.0)],
            baseline: vec![sample(8.0, 12.0)],
            breakdown: Breakdown::default(),
            build_cold_s: (60.0, 90.0),
            build_warm_s: 0.01,
            image_bytes: (1 << 30, 2 << 30),
        };
        let lines = report.lines();
        assert_eq!(
            lines[0],
            "bench boot: greeting_s ours=2.00 baseline=8.00 ratio=4.00 baseline_kind=ablation"
        );
        for line in &lines {
            assert_eq!(
                line.contains("baseline="),
                line.ends_with(" baseline_kind=ablation"),
                "{line}"
            );
        }
        assert_eq!(
            lines.iter().filter(|l| l.contains("baseline_kind")).count(),
            lines.len() - 1,
            "only the breakdown line has no baseline"
        );
    }
}
