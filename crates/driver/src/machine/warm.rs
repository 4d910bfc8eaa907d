//! Warm start of one machine: restore it from the shape's snapshot (`crate::warm`), then give
//! it its identity through the armed backdoor. Only the first start of a machine is warm; a
//! restart (after `crash()`, `shutdown()`, a reboot without `allow_reboot`) boots cold from the
//! machine's own overlay, so everything written before is still there.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Machine, Running};
use crate::error::{Error, Result};
use crate::warm::{self, Snapshot};

/// Whether and how a machine may be restored.
#[derive(Debug, Clone)]
pub(crate) enum WarmChoice {
    /// Restore from a snapshot.
    Warm(WarmPlan),
    /// Boot cold (the reason, logged once).
    Cold(String),
}

/// What a warm start needs besides the boot spec.
#[derive(Debug, Clone)]
pub(crate) struct WarmPlan {
    /// The image's content hash (part of the snapshot key).
    pub(crate) image_hash: String,
    /// The image's own initrd (the builder boots it without a node layer).
    pub(crate) plain_initrd: PathBuf,
    /// `NodeLayer::to_tar`: the node layer, applied by the same apply-layer step as at a cold
    /// boot, live.
    pub(crate) layer_tar: Arc<Vec<u8>>,
    /// Units the node masks (stopped before the layer is applied: the snapshot may run them).
    pub(crate) masked: Vec<String>,
    /// Interface name of each NIC (VLAN NICs in order, then the user NIC).
    pub(crate) nic_names: Vec<String>,
    /// MAC of each NIC, same order.
    pub(crate) nic_macs: Vec<String>,
}

/// A restored machine whose identity has not been applied yet (done on the first connect).
#[derive(Debug)]
pub(crate) struct PendingIdentity {
    pub(crate) key: String,
    /// Whether the payload was sent (by the eager task after the restore, or the first connect).
    sent: bool,
    script: String,
    layer_tar: Arc<Vec<u8>>,
}

impl PendingIdentity {
    /// The bytes that wake the armed main shell: the identity script and the layer archive, each
    /// preceded by its length as 12 digits. The clock value is taken now, right before sending.
    pub(crate) fn payload(&self) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 64];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut seed);
        }
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let esc: String = seed.iter().map(|b| format!("\\x{b:02x}")).collect();
        let mut s = String::from(
            "set -euo pipefail\nmark() { local up _; read -r up _ </proc/uptime; echo \"machinist-restore: $1 at $up\"; }\nmark start\n",
        );
        let _ = writeln!(
            s,
            "date -s @{}.{:09} >/dev/null",
            now.as_secs(),
            now.subsec_nanos()
        );
        s.push_str("mark clock\n");
        // Entropy: mix host bytes in, then credit them (RNDADDENTROPY) and force a reseed of the
        // CRNG (RNDRESEEDCRNG), so machines restored from one snapshot diverge at once.
        let _ = writeln!(s, "printf '{esc}' > /dev/urandom");
        s.push_str("mark urandom\n");
        let _ = writeln!(
            s,
            "perl -e 'open(my $f, \">\", \"/dev/urandom\") or die \"open: $!\"; my $d = pack(\"H*\", $ARGV[0]); ioctl($f, 0x40085203, pack(\"ii\", 8 * length($d), length($d)) . $d) or die \"RNDADDENTROPY: $!\"; ioctl($f, 0x5207, 0) or die \"RNDRESEEDCRNG: $!\";' {hex} || echo 'machinist: entropy mixed in but not credited (perl ioctl failed)'"
        );
        s.push_str("mark clock+entropy\n");
        s.push_str(&self.script);
        s.push_str("mark done\n");
        let mut out = format!("{:012}", s.len()).into_bytes();
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(format!("{:012}", self.layer_tar.len()).as_bytes());
        out.extend_from_slice(&self.layer_tar);
        out
    }
}

fn identity_script(plan: &WarmPlan) -> String {
    let mut s = String::new();
    // One `ip -batch` for every NIC (each program run costs ~0.1 s under TCG); the interfaces are
    // found by the builder's MACs, read with the shell's own `read`.
    s.push_str(
        "machinist_nic() {\n  local f a\n  for f in /sys/class/net/*; do\n    read -r a < \"$f/address\" || continue\n    if [ \"$a\" = \"$1\" ]; then\n      printf 'link set dev %s down\\nlink set dev %s address %s name %s\\n' \"${f##*/}\" \"${f##*/}\" \"$2\" \"$3\"\n      return 0\n    fi\n  done\n  echo \"machinist: no NIC with MAC $1\" >&2\n  return 1\n}\n",
    );
    if !plan.nic_names.is_empty() {
        s.push_str("{\n");
        for (i, (name, mac)) in plan.nic_names.iter().zip(&plan.nic_macs).enumerate() {
            let _ = writeln!(s, "machinist_nic {} {mac} {name}", warm::builder_mac(i));
        }
        s.push_str("} > /run/machinist-nics\nip -batch /run/machinist-nics\n");
    }
    if !plan.masked.is_empty() {
        let _ = writeln!(
            s,
            "systemctl stop -- {} 2>/dev/null || true",
            plan.masked.join(" ")
        );
    }
    s.push_str("mark nics\n");
    s.push_str(&machinist_guest::NodeLayer::apply_tar_script(
        warm::RESTORE_LAYER_TAR,
        "/run/machinist-layer",
    ));
    s
}

/// Sends a restored machine's identity payload (main shell) and wakes its control shell, once;
/// the caller holds the shell slot, so the eager task and the first connect never both send.
pub(super) async fn wake_restored(
    name: &str,
    run: &super::Running,
    slot: &mut super::ShellSlot,
    within: Duration,
) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let payload = {
        let mut pending = run.restore.lock().unwrap_or_else(|p| p.into_inner());
        match pending.as_mut() {
            Some(p) if !p.sent => {
                p.sent = true;
                p.payload()
            }
            _ => return Ok(()),
        }
    };
    let super::ShellSlot::Pending { main, control } = slot else {
        return Ok(());
    };
    let wake = async {
        let (a, b) = tokio::join!(main.write_all(&payload), control.write_all(b"\n"));
        a.and(b)
    };
    match tokio::time::timeout(within.max(Duration::from_millis(1)), wake).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::backend(
            Some(name),
            "waking the restored backdoor",
            e,
        )),
        Err(_) => Err(Error::backend(
            Some(name),
            "waking the restored backdoor",
            format!(
                "the restored guest did not read its identity within {} s",
                within.as_secs()
            ),
        )),
    }
}

impl Machine {
    /// Builds (or reuses) the snapshot this machine's first start would restore, without
    /// starting the machine: what `machinist build-images` does ahead of a test. Returns the
    /// snapshot key, or `None` (with the reason) when the machine boots cold.
    pub fn prepare_warm_start(&self) -> Result<std::result::Result<String, String>> {
        let plan = match &self.spec.warm {
            WarmChoice::Warm(p) => p,
            WarmChoice::Cold(reason) => return Ok(Err(reason.clone())),
        };
        let version = machinist_qemu::qemu_version()
            .map_err(|e| Error::backend(Some(&self.name), "reading the QEMU version", e))?
            .text;
        let key = warm::shape_key(&self.spec, &plan.image_hash, &plan.plain_initrd, &version);
        self.ensure_snapshot(plan, &key)
            .map_err(|e| Error::backend(Some(&self.name), "building the warm-start snapshot", e))?;
        Ok(Ok(key))
    }

    /// Tries a warm start; `Ok(None)` means boot cold (the reason is logged).
    pub(super) fn spawn_warm(&self, allow_reboot: bool) -> Result<Option<Arc<Running>>> {
        let plan = match &self.spec.warm {
            WarmChoice::Warm(p) => p,
            WarmChoice::Cold(reason) => {
                if !self.warm_tried.swap(true, Ordering::AcqRel) {
                    self.log_line(&format!("cold boot: {reason}"));
                }
                return Ok(None);
            }
        };
        if self.warm_tried.swap(true, Ordering::AcqRel) {
            self.log_line("cold boot from the machine's own disk overlay (restart)");
            return Ok(None);
        }
        if self.dir.join("disk.qcow2").exists() {
            self.log_line("cold boot: the machine already has a disk overlay");
            return Ok(None);
        }
        let version = match machinist_qemu::qemu_version() {
            Ok(v) => v.text,
            Err(e) => {
                self.log_line(&format!("cold boot: cannot read the QEMU version ({e})"));
                return Ok(None);
            }
        };
        let key = warm::shape_key(&self.spec, &plan.image_hash, &plan.plain_initrd, &version);
        for attempt in 0..2 {
            let snap = match self.ensure_snapshot(plan, &key) {
                Ok(s) => s,
                Err(e) => {
                    self.ctx
                        .logger
                        .warning(Some(&self.name), &format!("{e}; booting cold"));
                    return Ok(None);
                }
            };
            let started = Instant::now();
            match self.restore_from(&snap, plan, allow_reboot) {
                Ok(run) => {
                    self.log_line(&format!(
                        "warm start: restored from snapshot {key} ({:.2} s to running)",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(Some(run));
                }
                Err(e) => {
                    self.remove_own_disk();
                    snap.discard();
                    let next = if attempt == 0 {
                        "rebuilding it"
                    } else {
                        "booting cold"
                    };
                    self.ctx.logger.warning(
                        Some(&self.name),
                        &format!(
                            "warm start: snapshot {key} failed to restore ({e}); discarded, {next}"
                        ),
                    );
                }
            }
        }
        Ok(None)
    }

    fn ensure_snapshot(
        &self,
        plan: &WarmPlan,
        key: &str,
    ) -> std::result::Result<Snapshot, warm::WarmError> {
        let ctx = self.ctx.clone();
        let name = self.name.clone();
        let logger = self.ctx.logger.clone();
        warm::ensure(
            &self.ctx.handle,
            &self.spec,
            &plan.plain_initrd,
            key,
            &move |d| ctx.scaled(d),
            &move |m| logger.log(Some(&name), m),
        )
    }

    fn remove_own_disk(&self) {
        let _ = std::fs::remove_file(self.dir.join("disk.qcow2"));
        let _ = std::fs::remove_file(self.dir.join("snapshot-disk.qcow2"));
    }

    fn restore_from(
        &self,
        snap: &Snapshot,
        plan: &WarmPlan,
        allow_reboot: bool,
    ) -> Result<Arc<Running>> {
        self.io(
            || format!("creating {}", self.dir.display()),
            std::fs::create_dir_all(&self.dir),
        )?;
        // The machine's own copy of the frozen disk (small: the guest's writes up to the
        // snapshot), pointed at the machine's pin of the image it was taken on (the snapshot key
        // holds that image's content id): a later cold boot (after crash()) needs both even if
        // the snapshot or the cache entry is discarded or rebuilt meanwhile.
        let base = self.dir.join("snapshot-disk.qcow2");
        let _ = std::fs::remove_file(&base);
        self.io(
            || format!("copying {}", snap.disk.display()),
            std::fs::copy(&snap.disk, &base),
        )?;
        self.io(
            || format!("making {} writable", base.display()),
            std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
        )?;
        let pinned = self.pinned_image()?;
        machinist_qemu::overlay::repoint_backing(&base, &pinned, &self.spec.disk_format).map_err(
            |e| {
                Error::backend(
                    Some(&self.name),
                    "pointing the snapshot disk at the pinned image",
                    e,
                )
            },
        )?;
        let overlay = self.dir.join("disk.qcow2");
        machinist_qemu::overlay::create_qcow2_overlay(&base, "qcow2", &overlay)
            .map_err(|e| Error::backend(Some(&self.name), "creating the disk overlay", e))?;
        let (overlay, initrd) = self.prepare_files()?;
        let cmd = self
            .qemu_command(&overlay, &initrd, allow_reboot)
            .incoming(format!(
                "exec:cat {}",
                machinist_guest::shell_quote(&snap.state.to_string_lossy())
            ));
        let pending = PendingIdentity {
            key: snap.key.clone(),
            script: identity_script(plan),
            sent: false,
            layer_tar: plan.layer_tar.clone(),
        };
        let run = self.spawn_cmd(&cmd, allow_reboot, Some(pending))?;
        let t = self.ctx.scaled(Duration::from_secs(60));
        let r2 = run.clone();
        let name = self.name.clone();
        let r = self.ctx.block_on(false, async move {
            let deadline = tokio::time::Instant::now() + t;
            let poll = async {
                loop {
                    match r2.qmp.query_status().await {
                        Ok(s) if s.status == "running" => return Ok(()),
                        Ok(s) if s.status == "paused" || s.status == "postmigrate" => {
                            r2.qmp
                                .cont()
                                .await
                                .map_err(|e| Error::backend(Some(&name), "cont", e))?;
                        }
                        Ok(s) if s.status == "inmigrate" || s.status == "prelaunch" => {}
                        Ok(s) => {
                            return Err(Error::backend(
                                Some(&name),
                                "restoring",
                                format!("the VM is `{}` after loading the state", s.status),
                            ))
                        }
                        Err(e) => return Err(Error::backend(Some(&name), "query-status", e)),
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(Error::backend(
                            Some(&name),
                            "restoring",
                            format!("still loading the state after {} s", t.as_secs()),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            match r2.process.while_running(poll).await {
                Ok(r) => r,
                Err(e) => Err(Error::backend(
                    Some(&name),
                    "restoring",
                    format!("QEMU exited: {e}: {}", r2.process.stderr_tail().trim()),
                )),
            }
        });
        if let Err(e) = r {
            run.process.start_kill();
            let _ = run.process.wait_timeout_blocking(Duration::from_secs(5));
            return Err(e);
        }
        // Wake the guest now: it applies its identity while the host goes on (the guide's script
        // may never send the server a command, yet expects its services to come up).
        let (r2, name, t) = (run.clone(), self.name.clone(), self.ctx.boot_deadline);
        self.ctx.handle.spawn(async move {
            let mut slot = r2.shell.lock().await;
            if let Err(e) = wake_restored(&name, &r2, &mut slot, t).await {
                *slot = super::ShellSlot::Broken(e.to_string());
            }
        });
        Ok(run)
    }

    /// After the first connect of a restored machine: the identity script's exit code.
    pub(super) async fn check_identity(
        &self,
        shell: &mut machinist_backdoor::Shell,
        key: &str,
    ) -> Result<()> {
        let mut ignore = |_: &[u8]| {};
        let cmd = format!(
            "rc=$(cat {} 2>/dev/null || echo missing); echo \"$rc\"; [ \"$rc\" = 0 ] || tail -n 40 {}",
            warm::RESTORE_RC,
            warm::RESTORE_LOG
        );
        let out = shell
            .execute(
                &cmd,
                Some(self.ctx.scaled(Duration::from_secs(60))),
                &mut ignore,
            )
            .await
            .map_err(|e| Error::backend(Some(&self.name), "checking the restored identity", e))?;
        let text = out.stdout_lossy();
        if text.lines().next() == Some("0") {
            return Ok(());
        }
        Err(Error::NotRunning {
            machine: self.name.clone(),
            message: format!(
                "applying the node's identity after the warm start from snapshot {key} failed \
                 (run with MACHINIST_WARM_START=0 to boot cold); exit code and log:\n{text}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> WarmPlan {
        WarmPlan {
            image_hash: "h".into(),
            plain_initrd: PathBuf::from("/nonexistent/initrd"),
            layer_tar: Arc::new(vec![7u8; 1000]),
            masked: vec!["postgresql.service".into()],
            nic_names: vec!["vlan1".into(), "vlan2".into()],
            nic_macs: vec!["52:54:00:12:01:01".into(), "52:54:00:12:02:01".into()],
        }
    }

    /// The wake-up payload is `<12 digits><script><12 digits><archive>`, as the armed shell
    /// reads it with `head -c`.
    #[test]
    fn payload_is_two_length_prefixed_parts() {
        let p = PendingIdentity {
            key: "k".into(),
            sent: false,
            script: identity_script(&plan()),
            layer_tar: plan().layer_tar,
        };
        let bytes = p.payload();
        let n: usize = std::str::from_utf8(&bytes[..12]).unwrap().parse().unwrap();
        let script = std::str::from_utf8(&bytes[12..12 + n]).unwrap();
        assert!(script.starts_with("set -euo pipefail\n"));
        assert!(script.contains("date -s @"));
        assert!(script.ends_with("mark done\n"));
        let rest = &bytes[12 + n..];
        let m: usize = std::str::from_utf8(&rest[..12]).unwrap().parse().unwrap();
        assert_eq!(m, 1000);
        assert_eq!(&rest[12..], &[7u8; 1000][..]);
    }

    /// The identity script is valid bash and renames each NIC found by its builder MAC.
    #[test]
    fn identity_script_is_valid_bash() {
        let s = identity_script(&plan());
        assert!(s.contains("machinist_nic 52:54:00:ee:00:01 52:54:00:12:01:01 vlan1\n"));
        assert!(s.contains("machinist_nic 52:54:00:ee:00:02 52:54:00:12:02:01 vlan2\n"));
        assert!(s.contains("systemctl stop -- postgresql.service"));
        assert!(s.ends_with("--live /run/machinist-layer\n"), "{s}");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
