//! The snapshot cache: one booted, settled guest per machine shape, saved to
//! `<cache>/snapshots/<key>/{disk.qcow2,state,manifest.json}`.
//!
//! `key` is the sha256 of the snapshot format, the QEMU version, the image's content hash and
//! the builder's whole QEMU argv with run-specific paths and MACs normalised (memory, cores,
//! machine type, accelerator, display, NICs and their backends...). A snapshot is built in
//! `.tmp-<key>-<pid>/` and published with `rename`; `.<key>.lock` (flock) makes concurrent
//! builders wait and re-check.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use machinist_qemu::publish::lock_path;
use machinist_qemu::{CacheLock, QemuCommand, Staging};
use sha2::{Digest, Sha256};

use crate::backend::qemu::{command_for, BootSpec};
use crate::timeouts::{Timeouts, Wait};

/// Bumped when the guest-side protocol of a snapshot (arming, identity script) changes.
pub(crate) const FORMAT: &str = "machinist-warm-7";

/// The MAC the snapshot builder gives NIC number `i` (the restored guest renames and re-addresses
/// the interface that has it).
pub(crate) fn builder_mac(i: usize) -> String {
    format!("52:54:00:ee:00:{:02x}", i + 1)
}

/// Where snapshots live: `<machinist_qemu::cache_dir()>/snapshots`.
pub fn snapshot_root() -> PathBuf {
    machinist_qemu::cache_dir().join("snapshots")
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) key: String,
    pub(crate) dir: PathBuf,
    pub(crate) disk: PathBuf,
    pub(crate) state: PathBuf,
}

impl Snapshot {
    fn at(root: &Path, key: &str) -> Snapshot {
        let dir = root.join(key);
        Snapshot {
            key: key.to_string(),
            disk: dir.join("disk.qcow2"),
            state: dir.join("state"),
            dir,
        }
    }

    fn is_complete(&self) -> bool {
        self.dir.join("manifest.json").is_file() && self.disk.is_file() && self.state.is_file()
    }

    /// Removes a snapshot that failed to restore (renamed first, so a concurrent reader never
    /// sees half a directory).
    pub(crate) fn discard(&self) {
        let trash =
            self.dir
                .with_file_name(format!(".discard-{}-{}", self.key, std::process::id()));
        if std::fs::rename(&self.dir, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        }
    }
}

/// A snapshot could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the warm-start snapshot {key} failed: {message}")]
pub struct WarmError {
    /// The snapshot key.
    pub key: String,
    /// What went wrong (and what to do).
    pub message: String,
}

/// The builder's machine: the node's boot spec with builder MACs and ports under `dir`.
fn builder_spec(spec: &BootSpec, dir: &Path) -> BootSpec {
    let mut s = spec.clone();
    for (i, n) in s.nics.iter_mut().enumerate() {
        n.mac = builder_mac(i);
        n.port = dir.join(format!("port{i}"));
    }
    let k = s.nics.len();
    if let Some((_, mac)) = s.user_nic.as_mut() {
        *mac = builder_mac(k);
    }
    s
}

pub(crate) fn builder_command(spec: &BootSpec, dir: &Path, plain_initrd: &Path) -> QemuCommand {
    let s = builder_spec(spec, dir);
    command_for(
        "snapshot",
        &s,
        dir,
        &dir.join("disk.qcow2"),
        plain_initrd,
        false,
    )
}

/// The cache key of a machine shape (see the module docs).
pub(crate) fn shape_key(
    spec: &BootSpec,
    image_hash: &str,
    plain_initrd: &Path,
    qemu_version: &str,
) -> String {
    let cmd = builder_command(spec, Path::new("/snapshot"), plain_initrd);
    let mut h = Sha256::new();
    for part in [FORMAT, qemu_version, image_hash] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for a in cmd.args() {
        h.update(a.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Returns the snapshot for `key`, building it if needed (concurrent builders wait on a lock).
/// `log` receives progress lines. Blocking; runs the async parts on `handle`.
pub(crate) fn ensure(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
    plain_initrd: &Path,
    key: &str,
    timeouts: &Timeouts,
    log: &dyn Fn(&str),
) -> Result<Snapshot, WarmError> {
    let root = snapshot_root();
    let err = |m: String| WarmError {
        key: key.to_string(),
        message: m,
    };
    let snap = Snapshot::at(&root, key);
    if snap.is_complete() {
        return Ok(snap);
    }
    std::fs::create_dir_all(&root).map_err(|e| err(format!("creating {}: {e}", root.display())))?;
    let _lock = CacheLock::acquire(
        lock_path(&root, key),
        timeouts.of(Wait::SnapshotLock),
        || log("warm start: waiting for another process building the same snapshot"),
    )
    .map_err(|e| err(e.to_string()))?;
    if snap.is_complete() {
        return Ok(snap);
    }
    let started = Instant::now();
    log(&format!(
        "warm start: building snapshot {key} (one cold boot, then saved for later machines)"
    ));
    let staging = Staging::new(&root, key).map_err(|e| err(e.to_string()))?;
    super::build::build(handle, spec, plain_initrd, staging.path(), timeouts).map_err(err)?;
    let manifest = serde_json::json!({
        "format": FORMAT,
        "key": key,
        "qemu": machinist_qemu::qemu_version().map(|v| v.text).unwrap_or_default(),
        "disk_backing": spec.disk,
        "build_seconds": started.elapsed().as_secs_f64(),
    });
    let seal = |dir: &Path| -> std::io::Result<()> {
        for f in ["disk.qcow2", "state"] {
            let p = dir.join(f);
            let mut perm = std::fs::metadata(&p)?.permissions();
            perm.set_readonly(true);
            std::fs::set_permissions(&p, perm)?;
        }
        let mut f = std::fs::File::create(dir.join("manifest.json"))?;
        f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        f.sync_all()
    };
    seal(staging.path()).map_err(|e| err(format!("sealing {}: {e}", staging.path().display())))?;
    // Replaces an incomplete directory (no manifest) left by a killed builder.
    staging.publish(&snap.dir).map_err(|e| err(e.to_string()))?;
    log(&format!(
        "warm start: snapshot {key} built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        snap.dir.display()
    ));
    Ok(snap)
}
