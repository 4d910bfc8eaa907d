//! Accelerator choice: KVM only when a real guest boots under it.
//!
//! `/dev/kvm` can exist while guests hang under it (as on our own machines), so the probe boots
//! the test kernel with a tiny initramfs under KVM and requires a marker on the serial console
//! within [`PROBE_TIMEOUT`]. The verdict is cached per host, keyed by QEMU version and host
//! kernel release; `MACHINIST_ACCEL=kvm|tcg` overrides everything.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cache::cache_dir;
use crate::command::{Accel, Display, QemuCommand};
use crate::kernel::{test_kernel, AfterMarker, TinyInitramfs};
use crate::process::QemuProcess;
use crate::version::qemu_version;

/// How long the probe guest may take to print its marker.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_MARKER: &str = "MACHINIST-KVM-PROBE-OK";

/// How a choice was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChoiceSource {
    /// `MACHINIST_ACCEL` set it.
    Env,
    /// `/dev/kvm` is missing or not usable.
    NoKvm,
    /// A probe boot just ran.
    Probe,
    /// A cached probe verdict for this QEMU version and host kernel.
    Cache,
    /// The probe could not run (e.g. no probe kernel); not cached.
    ProbeUnavailable,
}

/// The accelerator to use and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Human-readable reason, e.g. "KVM present but a probe guest did not boot within 5 s".
    pub reason: String,
    /// How the choice was made.
    pub source: ChoiceSource,
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.accel, self.reason)
    }
}

/// The accelerator for this process: decided once (env override, `/dev/kvm`, cached verdict or
/// a probe boot of up to ~5 s), logged once with `tracing::info`, then memoised.
///
/// Blocking; from async code call it via `tokio::task::spawn_blocking` (the probe QEMU is still
/// forked from the dedicated spawner thread).
pub fn choose() -> AccelChoice {
    static CHOICE: OnceLock<AccelChoice> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let env = std::env::var("MACHINIST_ACCEL").ok();
            let c = decide(env.as_deref(), &cache_dir(), Path::new("/dev/kvm"));
            tracing::info!(accel = %c.accel, source = ?c.source, "accelerator: {} ({})", c.accel, c.reason);
            c
        })
        .clone()
}

/// The decision procedure behind [`choose`], with explicit inputs and no memoisation.
pub fn decide(env_override: Option<&str>, cache: &Path, kvm_device: &Path) -> AccelChoice {
    if let Some(v) = env_override.map(str::trim).filter(|v| !v.is_empty()) {
        return match v.to_ascii_lowercase().as_str() {
            "kvm" => choice(Accel::Kvm, "MACHINIST_ACCEL=kvm", ChoiceSource::Env),
            "tcg" => choice(Accel::Tcg, "MACHINIST_ACCEL=tcg", ChoiceSource::Env),
            other => {
                tracing::warn!("ignoring MACHINIST_ACCEL={other}: expected kvm or tcg");
                choice(
                    Accel::Tcg,
                    &format!("MACHINIST_ACCEL={other} is not kvm|tcg; using TCG"),
                    ChoiceSource::Env,
                )
            }
        };
    }
    if !kvm_device.exists() {
        return choice(
            Accel::Tcg,
            &format!("{} does not exist", kvm_device.display()),
            ChoiceSource::NoKvm,
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_device)
    {
        return choice(
            Accel::Tcg,
            &format!(
                "{} is not usable ({e}); add the user to group kvm to try KVM",
                kvm_device.display()
            ),
            ChoiceSource::NoKvm,
        );
    }
    let key = cache_key();
    let file = cache.join("accel.json");
    if let Some(c) = read_cache(&file, &key) {
        return c;
    }
    let c = probe_kvm(PROBE_TIMEOUT);
    if c.source == ChoiceSource::Probe {
        write_cache(&file, &key, &c);
    }
    c
}

fn choice(accel: Accel, reason: &str, source: ChoiceSource) -> AccelChoice {
    AccelChoice {
        accel,
        reason: reason.to_string(),
        source,
    }
}

/// Boots the test kernel under KVM and waits up to `timeout` for the probe marker on serial.
/// Returns KVM if it appeared, else TCG with the reason. Does not consult or write the cache.
pub fn probe_kvm(timeout: Duration) -> AccelChoice {
    let secs = timeout.as_secs_f64();
    let kernel = match test_kernel() {
        Ok(k) => k,
        Err(e) => {
            return choice(
                Accel::Tcg,
                &format!("KVM present but no probe kernel is available ({e})"),
                ChoiceSource::ProbeUnavailable,
            )
        }
    };
    let dir = match tempdir() {
        Ok(d) => d,
        Err(e) => {
            return choice(
                Accel::Tcg,
                &format!("KVM present but the probe could not create a temp dir ({e})"),
                ChoiceSource::ProbeUnavailable,
            )
        }
    };
    let initrd = dir.0.join("probe.cpio");
    let result = (|| {
        TinyInitramfs::new(PROBE_MARKER)
            .after(AfterMarker::Poweroff)
            .write(&kernel, &initrd)
            .map_err(|e| {
                (
                    ChoiceSource::ProbeUnavailable,
                    format!("cannot build the probe initramfs ({e})"),
                )
            })?;
        let cmd = QemuCommand::new("kvm-probe")
            .accel(Accel::Kvm)
            .memory_mib(256)
            .cores(1)
            .display(Display::None)
            .kernel(&kernel.vmlinuz)
            .initrd(&initrd)
            .append("console=ttyS0 panic=-1 quiet");
        let started = Instant::now();
        let qemu = QemuProcess::spawn(&cmd).map_err(|e| {
            (
                ChoiceSource::ProbeUnavailable,
                format!("cannot start the probe ({e})"),
            )
        })?;
        let hit =
            qemu.serial()
                .wait_for_blocking(0, PROBE_MARKER, |l| l.contains(PROBE_MARKER), timeout);
        let elapsed = started.elapsed();
        // Closed serial = QEMU exited by itself: collect its status for the reason.
        let exited = match &hit {
            Err(crate::serial::SerialError::Closed { .. }) => {
                qemu.wait_timeout_blocking(Duration::from_secs(2))
            }
            _ => None,
        };
        // A guest hung under KVM may ignore SIGTERM: kill outright, don't wait for the grace.
        qemu.start_kill();
        qemu.wait_timeout_blocking(Duration::from_secs(5));
        match hit {
            Ok(_) => Ok(elapsed),
            Err(_) => {
                if let Some(status) = exited {
                    let stderr = qemu.stderr_tail();
                    Err((
                        ChoiceSource::Probe,
                        format!(
                            "KVM present but QEMU exited with {} under it: {}",
                            crate::error::describe_status(&status),
                            stderr.trim()
                        ),
                    ))
                } else {
                    Err((
                        ChoiceSource::Probe,
                        format!("KVM present but a probe guest did not boot within {secs:.0} s"),
                    ))
                }
            }
        }
    })();
    match result {
        Ok(elapsed) => choice(
            Accel::Kvm,
            &format!("a KVM probe guest booted in {:.2} s", elapsed.as_secs_f64()),
            ChoiceSource::Probe,
        ),
        Err((source, reason)) => choice(Accel::Tcg, &reason, source),
    }
}

/// `<QEMU version line>|<host kernel release>`.
pub fn cache_key() -> String {
    let qemu = qemu_version()
        .map(|v| v.text)
        .unwrap_or_else(|_| "qemu-unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "kernel-unknown".into());
    format!("{qemu}|{kernel}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    key: String,
    choice: AccelChoice,
}

fn read_cache(file: &Path, key: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(file).ok()?;
    let e: CacheEntry = serde_json::from_str(&text).ok()?;
    (e.key == key).then(|| AccelChoice {
        source: ChoiceSource::Cache,
        reason: format!("{} (cached probe verdict)", e.choice.reason),
        ..e.choice
    })
}

fn write_cache(file: &Path, key: &str, c: &AccelChoice) {
    let entry = CacheEntry {
        key: key.to_string(),
        choice: c.clone(),
    };
    let write = || -> std::io::Result<()> {
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::warn!(
            "cannot cache the accelerator verdict in {}: {e}",
            file.display()
        );
    }
}

/// A temp dir removed on drop (std only).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> std::io::Result<TempDir> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "machinist-probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_and_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let c = decide(Some("kvm"), dir.path(), Path::new("/nonexistent/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Kvm, ChoiceSource::Env));
        let c = decide(Some(" TCG "), dir.path(), Path::new("/dev/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Tcg, ChoiceSource::Env));
        let c = decide(Some("xen"), dir.path(), Path::new("/dev/kvm"));
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("xen"));
        let c = decide(None, dir.path(), Path::new("/nonexistent/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Tcg, ChoiceSource::NoKvm));
        assert!(c.reason.contains("/nonexistent/kvm does not exist"));
    }

    #[test]
    fn cache_roundtrip_checks_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("accel.json");
        let c = choice(
            Accel::Tcg,
            "KVM present but a probe guest did not boot within 5 s",
            ChoiceSource::Probe,
        );
        write_cache(&f, "k1", &c);
        let back = read_cache(&f, "k1").unwrap();
        assert_eq!(back.accel, Accel::Tcg);
        assert_eq!(back.source, ChoiceSource::Cache);
        assert!(back.reason.starts_with("KVM present but"));
        assert!(read_cache(&f, "k2").is_none());
        assert!(cache_key().contains('|'));
    }
}
