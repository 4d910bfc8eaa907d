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
    /// `NodeLayer::live_apply_script`: the same apply-layer step as at a cold boot, live.
    pub(crate) live_script: String,
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
    script: String,
}

impl PendingIdentity {
    /// The bytes that wake the armed main shell: the length as 12 digits, then the identity script. The clock value
    /// is taken now, right before it is sent.
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
        // Entropy: mix host bytes in, then credit them (RNDADDENTROPY) and force a reseed of the
        // CRNG (RNDRESEEDCRNG), so machines restored from one snapshot diverge at once.
        let _ = writeln!(s, "printf '{esc}' > /dev/urandom");
        let _ = writeln!(
            s,
            "perl -e 'open(my $f, \">\", \"/dev/urandom\") or die \"open: $!\"; my $d = pack(\"H*\", $ARGV[0]); ioctl($f, 0x40085203, pack(\"ii\", 8 * length($d), length($d)) . $d) or die \"RNDADDENTROPY: $!\"; ioctl($f, 0x5207, 0) or die \"RNDRESEEDCRNG: $!\";' {hex} || echo 'machinist: entropy mixed in but not credited (perl ioctl failed)'"
        );
        s.push_str("mark clock+entropy\n");
        s.push_str(&self.script);
        s.push_str("mark done\n");
        let mut out = format!("{:012}", s.len()).into_bytes();
        out.extend_from_slice(s.as_bytes());
        out
    }
}

fn identity_script(plan: &WarmPlan) -> String {
    let mut s = String::new();
    s.push_str(
        "machinist_nic() {\n  local f\n  for f in /sys/class/net/*; do\n    if [ \"$(cat \"$f/address\")\" = \"$1\" ]; then\n      ip link set dev \"${f##*/}\" down\n      ip link set dev \"${f##*/}\" address \"$2\" name \"$3\"\n      return 0\n    fi\n  done\n  echo \"machinist: no NIC with MAC $1\" >&2\n  return 1\n}\n",
    );
    for (i, (name, mac)) in plan.nic_names.iter().zip(&plan.nic_macs).enumerate() {
        let _ = writeln!(s, "machinist_nic {} {mac} {name}", warm::builder_mac(i));
    }
    if !plan.masked.is_empty() {
        let _ = writeln!(
            s,
            "systemctl stop -- {} 2>/dev/null || true",
            plan.masked.join(" ")
        );
    }
    s.push_str("mark nics\n");
    s.push_str(&plan.live_script);
    s
}

impl Machine {
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
        // The machine's own reference to the frozen disk: a later cold boot (after crash())
        // needs it even if the snapshot is discarded or rebuilt meanwhile.
        let base = self.dir.join("snapshot-disk.qcow2");
        let _ = std::fs::remove_file(&base);
        if std::fs::hard_link(&snap.disk, &base).is_err() {
            self.io(
                || format!("copying {}", snap.disk.display()),
                std::fs::copy(&snap.disk, &base),
            )?;
        }
        let overlay = self.dir.join("disk.qcow2");
        machinist_qemu::overlay::create_qcow2_overlay(&base, "qcow2", &overlay)
            .map_err(|e| Error::backend(Some(&self.name), "creating the disk overlay", e))?;
        let (overlay, initrd) = self.prepare_files()?;
        let cmd = self
            .qemu_command(&overlay, &initrd, allow_reboot)
            .incoming(format!("exec:cat '{}'", snap.state.display()));
        let pending = PendingIdentity {
            key: snap.key.clone(),
            script: identity_script(plan),
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
