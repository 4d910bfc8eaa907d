//! Our tiny initramfs: static busybox, the virtio modules (with their dependencies from
//! `modules.dep`), and an init that mounts /dev/vda, applies the node layer and switch_roots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::GuestError;
use crate::tuning::INITRD_INIT_SCRIPT;

/// Modules loaded by the tiny initrd (dependencies are added from `modules.dep`).
/// `virtio_rng` feeds the kernel's entropy pool from the host before userspace starts (otherwise
/// udev loads it seconds later, and early `getrandom` callers such as Postgres wait).
pub const INITRD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
];

/// Host path of the static busybox (Debian package busybox-static).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Find the single kernel version under `<root>/lib/modules`.
pub fn kernel_version(root: &Path, image: &str) -> Result<String, GuestError> {
    let dir = root.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| GuestError::io("reading kernel modules directory", &dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| GuestError::BadImage {
        image: image.into(),
        what: format!("no kernel modules under {}", dir.display()),
    })
}

/// Resolve `wanted` modules to an ordered list of module paths (dependencies first),
/// relative to the module directory, from the text of `modules.dep`.
pub fn resolve_modules(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(path);
        deps.insert(
            name,
            (
                path.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ),
        );
    }
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > 32 {
            return Err(format!("module dependency loop at {name}"));
        }
        let (path, ds) = deps
            .get(name)
            .ok_or_else(|| format!("module {name} not in modules.dep"))?;
        if order.contains(path) {
            return Ok(());
        }
        // modules.dep lists dependencies so that the last must be loaded first.
        for d in ds.iter().rev() {
            visit(&module_name(d), deps, order, depth + 1)?;
        }
        if !order.contains(path) {
            order.push(path.clone());
        }
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &mut order, 0)?;
    }
    Ok(order)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Inputs of the tiny initrd that feed the image hash.
pub fn hash_inputs() -> Result<Vec<u8>, GuestError> {
    let mut v = std::fs::read(HOST_BUSYBOX).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            GuestError::MissingTool {
                tool: HOST_BUSYBOX.into(),
                package: "busybox-static".into(),
            }
        } else {
            GuestError::io("reading", HOST_BUSYBOX, e)
        }
    })?;
    v.extend_from_slice(INITRD_INIT_SCRIPT.as_bytes());
    v.extend_from_slice(INITRD_MODULES.join(",").as_bytes());
    Ok(v)
}

/// Build the tiny initrd for the rootfs at `root`; returns the cpio bytes.
pub fn build(root: &Path, image: &str) -> Result<Vec<u8>, GuestError> {
    let kv = kernel_version(root, image)?;
    let moddir: PathBuf = root.join("lib/modules").join(&kv);
    let dep_path = moddir.join("modules.dep");
    let dep =
        std::fs::read_to_string(&dep_path).map_err(|e| GuestError::io("reading", &dep_path, e))?;
    let order = resolve_modules(&dep, INITRD_MODULES).map_err(|what| GuestError::BadImage {
        image: image.into(),
        what,
    })?;
    let busybox = std::fs::read(HOST_BUSYBOX).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            GuestError::MissingTool {
                tool: HOST_BUSYBOX.into(),
                package: "busybox-static".into(),
            }
        } else {
            GuestError::io("reading", HOST_BUSYBOX, e)
        }
    })?;
    let err = |e: std::io::Error| GuestError::io("writing the tiny initrd of", image, e);
    let mut w = machinist_qemu::cpio::NewcWriter::new(Vec::new());
    for d in ["bin", "dev", "lib", "proc", "sys", "sysroot", "run", "tmp"] {
        w.dir(d, 0o755).map_err(err)?;
    }
    // /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
    w.char_device("dev/console", 0o600, 5, 1).map_err(err)?;
    w.file("bin/busybox", 0o755, &busybox).map_err(err)?;
    w.symlink("bin/sh", "busybox").map_err(err)?;
    w.file("init", 0o755, INITRD_INIT_SCRIPT.as_bytes())
        .map_err(err)?;
    let mut listing = String::new();
    for rel in &order {
        let p = moddir.join(rel);
        let data = std::fs::read(&p).map_err(|e| GuestError::io("reading module", &p, e))?;
        let name = rel.rsplit('/').next().unwrap_or(rel);
        w.file(&format!("lib/{name}"), 0o644, &data).map_err(err)?;
        listing.push_str(name);
        listing.push('\n');
    }
    w.file("lib/modules.order", 0o644, listing.as_bytes())
        .map_err(err)?;
    w.finish().map_err(err)
}
