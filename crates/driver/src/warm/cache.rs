//! The snapshot cache: one booted, settled guest per node, saved to
//! `<cache>/snapshots/<key>/{disk.qcow2,state,manifest.json}`.
//!
//! `key` is the sha256 of the snapshot format, the QEMU version, the image's content hash, the
//! node's whole QEMU argv with run-specific paths normalised (memory, cores, machine type,
//! accelerator, kernel command line, NICs with their MACs...) and the bytes of the node's layer
//! (its complete rendered configuration: files, users, units, hostname, addresses, hosts): any
//! change to a node's inputs gives a new key. A snapshot is built in `.tmp-<key>-<pid>/` and
//! published with `rename`; `.<key>.lock` (flock) makes concurrent builders wait and re-check.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use machinist_qemu::publish::lock_path;
use machinist_qemu::{CacheLock, QemuCommand, Staging};
use sha2::{Digest, Sha256};

use crate::backend::qemu::{command_for, BootSpec};
use crate::timeouts::{Timeouts, Wait};

/// Bumped when the guest-side protocol of a snapshot (arming, identity script) changes.
pub(crate) const FORMAT: &str = "machinist-node-9";

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
    /// Built by this process just now (the node's first run), not found in the cache.
    pub(crate) built: bool,
}

impl Snapshot {
    fn at(root: &Path, key: &str) -> Snapshot {
        let dir = root.join(key);
        Snapshot {
            key: key.to_string(),
            disk: dir.join("disk.qcow2"),
            state: dir.join("state"),
            dir,
            built: false,
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

/// The builder's machine: the node's boot spec with its NIC ports under `dir`.
fn builder_spec(spec: &BootSpec, dir: &Path) -> BootSpec {
    let mut s = spec.clone();
    for (i, n) in s.nics.iter_mut().enumerate() {
        n.port = dir.join(format!("port{i}"));
    }
    s
}

/// The builder's QEMU command line: the node's, with its files under `dir` (the initrd with the
/// node layer is `dir/initrd`).
pub(crate) fn builder_command(spec: &BootSpec, dir: &Path) -> QemuCommand {
    let s = builder_spec(spec, dir);
    command_for(
        "snapshot",
        &s,
        dir,
        &dir.join("disk.qcow2"),
        &dir.join("initrd"),
        false,
    )
}

/// The cache key of a node (see the module docs).
pub(crate) fn node_key(spec: &BootSpec, image_hash: &str, qemu_version: &str) -> String {
    let cmd = builder_command(spec, Path::new("/snapshot"));
    let mut h = Sha256::new();
    // What the builder types into the guest is part of the saved state too.
    let guest_side = super::build::guest_side();
    for part in [FORMAT, qemu_version, image_hash, guest_side.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for a in cmd.args() {
        h.update(a.as_bytes());
        h.update([0]);
    }
    h.update((spec.layer_cpio.len() as u64).to_le_bytes());
    h.update(&spec.layer_cpio);
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Returns the snapshot for `key`, building it if needed (concurrent builders wait on a lock).
/// `log` receives progress lines. Blocking; runs the async parts on `handle`.
pub(crate) fn ensure(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
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
        machinist_qemu::cache_entries::touch_last_use(&snap.dir);
        return Ok(snap);
    }
    let unsettled_mark = root.join(format!("{key}.unsettled"));
    let unsettled = |units: &str| {
        err(format!(
            "the node's start-up did not finish within {} s without its peers (still waiting: {}): \
             its boot needs the test's network, so it boots cold, next to its peers (remembered in {})",
            super::build::SETTLE_LIMIT_SECS,
            if units.is_empty() { "?" } else { units },
            unsettled_mark.display()
        ))
    };
    if let Ok(units) = std::fs::read_to_string(&unsettled_mark) {
        return Err(unsettled(units.trim()));
    }
    std::fs::create_dir_all(&root).map_err(|e| err(format!("creating {}: {e}", root.display())))?;
    let _lock = CacheLock::acquire(
        lock_path(&root, key),
        timeouts.of(Wait::SnapshotLock),
        || log("warm start: waiting for another process building the same snapshot"),
    )
    .map_err(|e| err(e.to_string()))?;
    if snap.is_complete() {
        machinist_qemu::cache_entries::touch_last_use(&snap.dir);
        return Ok(snap);
    }
    let started = Instant::now();
    log(&format!(
        "warm start: building node snapshot {key} (first run: one cold boot of the node, then saved)"
    ));
    let staging = Staging::new(&root, key).map_err(|e| err(e.to_string()))?;
    match super::build::build(handle, spec, staging.path(), timeouts) {
        Ok(()) => {}
        Err(super::build::BuildError::Unsettled(units)) => {
            // Remembered, so later runs boot the node cold at once instead of waiting again.
            let _ = std::fs::write(&unsettled_mark, format!("{units}\n"));
            return Err(unsettled(&units));
        }
        Err(super::build::BuildError::Failed(m)) => return Err(err(m)),
    }
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
    machinist_qemu::cache_entries::touch_last_use(&snap.dir);
    log(&format!(
        "warm start: node snapshot {key} built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        snap.dir.display()
    ));
    Ok(Snapshot {
        built: true,
        ..snap
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinist_guest::{FileSpec, NetworkPlan, NodeConfig, NodeLayer, ServiceSpec, UserSpec};

    /// The boot spec of a one-node test declaring `cfg` (NICs are left out: their MACs and
    /// addresses are in the layer too).
    fn spec_for(cfg: &NodeConfig) -> BootSpec {
        let pairs = [("server", cfg)];
        let plan = NetworkPlan::new(&pairs);
        let layer = NodeLayer::render("server", cfg, &plan).unwrap();
        BootSpec {
            kernel: "/cache/vmlinuz".into(),
            initrd: "/cache/initrd".into(),
            disk: "/cache/disk.raw".into(),
            disk_format: "raw".into(),
            layer_cpio: layer.to_cpio().unwrap(),
            accel: machinist_qemu::Accel::Tcg,
            append: machinist_guest::KERNEL_CMDLINE.to_string(),
            memory_mib: cfg.memory_mib,
            cores: cfg.cores,
            nics: Vec::new(),
            user_nic: None,
            extra_args: Vec::new(),
        }
    }

    fn key(cfg: &NodeConfig) -> String {
        node_key(&spec_for(cfg), "image-1", "QEMU 7.2")
    }

    /// Any change to a node's inputs gives a new snapshot key; the same inputs, the same key.
    #[test]
    fn every_input_of_a_node_is_in_its_key() {
        let base = || {
            NodeConfig::new()
                .file(FileSpec::new("/etc/app.conf", "port=3000\n"))
                .service(ServiceSpec::new("app", "/usr/bin/sleep infinity"))
                .user(UserSpec::new("alice"))
        };
        let k = key(&base());
        assert_eq!(k, key(&base()), "the key is deterministic");
        let changed = [
            (
                "a file's content",
                base().file(FileSpec::new("/etc/app.conf", "port=3001\n")),
            ),
            ("a new file", base().file(FileSpec::new("/etc/other", "x"))),
            (
                "a unit",
                base().service(ServiceSpec::new("other", "/usr/bin/true")),
            ),
            ("a user", base().user(UserSpec::new("bob"))),
            ("an address (another VLAN)", base().vlans([2])),
            ("the memory", base().memory_mib(2048)),
            ("a hostname", base().hostname("db")),
        ];
        for (what, cfg) in changed {
            assert_ne!(k, key(&cfg), "{what} must change the key");
        }
        let spec = spec_for(&base());
        assert_ne!(
            k,
            node_key(&spec, "image-2", "QEMU 7.2"),
            "the image (packages)"
        );
        assert_ne!(
            k,
            node_key(&spec, "image-1", "QEMU 8.0"),
            "the QEMU version"
        );
        let mut args = spec.clone();
        args.append.push_str(" quiet");
        assert_ne!(
            k,
            node_key(&args, "image-1", "QEMU 7.2"),
            "the kernel command line"
        );
    }
}
