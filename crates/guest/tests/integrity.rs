//! Cache integrity against a fake cache entry (no build, no VM): sizes checked on every use,
//! full hashes by `verify_cache`, and `pin_image` keeping a run's backing file valid while the
//! cache entry is rebuilt or pruned. The cache path holds a `'` and spaces on purpose.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use machinist_guest::{
    hash_file, pin_image, verify_cache, Artefact, GuestError, Image, ImageCache, ImageSpec,
    VerifyStatus,
};

/// A cache dir whose path has a quote, a space and a `$(...)`.
fn hostile_cache() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("it's a $(touch pwned) cache");
    fs::create_dir_all(&root).unwrap();
    (tmp, root)
}

/// Write a complete-looking image for `spec` into `cache` (a sparse 64 MiB "disk" with a little
/// data), with a manifest recording sizes and hashes unless `legacy`.
fn fake_entry(cache: &Path, spec: &ImageSpec, legacy: bool) -> PathBuf {
    let dir = cache.join("images").join(spec.hash().unwrap());
    fs::create_dir_all(&dir).unwrap();
    let disk = fs::File::create(dir.join("rootfs.img")).unwrap();
    disk.set_len(64 << 20).unwrap();
    drop(disk);
    write_at(&dir.join("rootfs.img"), 1 << 20, b"superblock-ish");
    fs::write(dir.join("vmlinuz"), b"kernel bytes").unwrap();
    fs::write(dir.join("initrd.img"), b"initrd bytes").unwrap();
    let mut artefacts = BTreeMap::new();
    if !legacy {
        for name in ["rootfs.img", "vmlinuz", "initrd.img"] {
            let (size, sha256) = hash_file(&dir.join(name)).unwrap();
            artefacts.insert(name.to_string(), Artefact { size, sha256 });
        }
    }
    let img = Image {
        spec: spec.clone(),
        hash: spec.hash().unwrap(),
        dir: dir.clone(),
        disk: dir.join("rootfs.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        debian_initrd: None,
        kernel_version: "6.1.0-test".into(),
        build_seconds: 1.0,
        artefacts,
    };
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&img).unwrap(),
    )
    .unwrap();
    dir
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn hash_file_matches_sha256sum() {
    let (_t, root) = hostile_cache();
    let dir = fake_entry(&root, &ImageSpec::base(), false);
    let (size, sha) = hash_file(&dir.join("rootfs.img")).unwrap();
    assert_eq!(size, 64 << 20);
    assert_eq!(sha, sha256sum(&dir.join("rootfs.img")));
}

/// A truncated artefact makes the entry invisible to `lookup` (so `ensure` rebuilds it), and
/// `verify_cache` names the file and both sizes.
#[test]
fn truncated_image_is_detected_on_use() {
    let (_t, root) = hostile_cache();
    let spec = ImageSpec::base();
    let dir = fake_entry(&root, &spec, false);
    let cache = ImageCache::new(&root);
    assert!(cache.lookup(&spec).unwrap().is_some());
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("rootfs.img"))
        .unwrap();
    f.set_len(32 << 20).unwrap();
    assert!(cache.lookup(&spec).unwrap().is_none());
    let reports = verify_cache(&root, false);
    assert_eq!(reports.len(), 1);
    match &reports[0].status {
        VerifyStatus::Damaged(p) => {
            assert_eq!(
                p,
                &[format!(
                    "rootfs.img: {} bytes, recorded {}",
                    32 << 20,
                    64 << 20
                )]
            )
        }
        other => panic!("{other:?}"),
    }
    // Using the damaged image through a pin is refused with a clear error.
    let run = tempfile::tempdir().unwrap();
    let err = pin_image(&dir.join("rootfs.img"), run.path()).unwrap_err();
    assert!(
        matches!(&err, GuestError::BadImage { what, .. } if what.contains("truncated") && what.contains("rebuild")),
        "{err}"
    );
}

/// Same size, different bytes: only the full hash sees it; `repair` removes the entry.
#[test]
fn verify_finds_flipped_bytes_and_repairs() {
    let (t, root) = hostile_cache();
    let spec = ImageSpec::base();
    let dir = fake_entry(&root, &spec, false);
    let reports = verify_cache(&root, false);
    assert!(reports[0].is_ok(), "{}", reports[0].line());
    assert_eq!(reports[0].image.as_deref(), Some(spec.name().as_str()));
    assert_eq!(reports[0].bytes, (64 << 20) + 24);

    write_at(&dir.join("rootfs.img"), 1 << 20, b"SUPERBLOCK-ish");
    let cache = ImageCache::new(&root);
    assert!(cache.lookup(&spec).unwrap().is_some(), "size is unchanged");
    let reports = cache.verify(false);
    let line = reports[0].line();
    assert!(
        line.starts_with("DAMAGED") && line.contains("rootfs.img: sha256"),
        "{line}"
    );
    assert!(!reports[0].removed && dir.exists());

    let reports = cache.verify(true);
    assert!(reports[0].removed, "{}", reports[0].line());
    assert!(!dir.exists());
    assert!(cache.lookup(&spec).unwrap().is_none());
    assert!(!t.path().join("pwned").exists());
}

/// A rebuild of the same recipe has the same `hash` but another `content_id`.
#[test]
fn content_id_changes_when_the_entry_is_rebuilt() {
    let (_t, root) = hostile_cache();
    let spec = ImageSpec::base();
    let cache = ImageCache::new(&root);
    let dir = fake_entry(&root, &spec, false);
    let first = cache.lookup(&spec).unwrap().unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let dir = fake_entry(&root, &spec, false);
    assert_eq!(
        cache.lookup(&spec).unwrap().unwrap().content_id(),
        first.content_id()
    );
    fs::remove_dir_all(&dir).unwrap();
    let dir = fake_entry(&root, &spec, false);
    write_at(&dir.join("rootfs.img"), 0, b"new mkfs uuid");
    // Re-record the manifest as a real rebuild would.
    let mut img = first.clone();
    let (size, sha256) = hash_file(&dir.join("rootfs.img")).unwrap();
    img.artefacts
        .insert("rootfs.img".into(), Artefact { size, sha256 });
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&img).unwrap()).unwrap();
    let second = cache.lookup(&spec).unwrap().unwrap();
    assert_eq!(second.hash, first.hash);
    assert_ne!(second.content_id(), first.content_id());
}

/// A manifest from before sizes and hashes were recorded is not trusted: rebuilt on next use.
#[test]
fn legacy_manifest_without_hashes_is_rebuilt() {
    let (_t, root) = hostile_cache();
    let spec = ImageSpec::base();
    fake_entry(&root, &spec, true);
    assert!(ImageCache::new(&root).lookup(&spec).unwrap().is_none());
    let reports = verify_cache(&root, false);
    assert!(
        reports[0].line().contains("older machinist"),
        "{}",
        reports[0].line()
    );
}

fn overlay_chain_ok(overlay: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain", "-U"])
        .arg(overlay)
        .output()
        .expect("qemu-img (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pinned file is a hard link (same inode) in the run dir; an overlay created on it keeps its
/// backing file and contents when the cache entry is rebuilt (replaced) and then pruned.
#[test]
fn pinned_image_survives_rebuild_and_prune() {
    let (_t, root) = hostile_cache();
    let spec = ImageSpec::base();
    let dir = fake_entry(&root, &spec, false);
    let disk = dir.join("rootfs.img");
    let run = root.join("run dir of 'server'");
    let pinned = pin_image(&disk, &run).unwrap();
    let hash = spec.hash().unwrap();
    assert_eq!(pinned, run.join(format!("pinned-{hash}-rootfs.img")));
    assert_eq!(
        fs::metadata(&pinned).unwrap().ino(),
        fs::metadata(&disk).unwrap().ino()
    );
    let original = sha256sum(&pinned);
    let overlay = run.join("disk.qcow2");
    machinist_qemu::overlay::create_qcow2_overlay(&pinned, "raw", &overlay).unwrap();

    // A rebuild publishes a new directory under the same name.
    let old = dir.with_extension("old");
    fs::rename(&dir, &old).unwrap();
    let new_dir = fake_entry(&root, &spec, false);
    write_at(&new_dir.join("rootfs.img"), 1 << 20, b"rebuilt image!");
    fs::remove_dir_all(&old).unwrap();
    assert_eq!(sha256sum(&pinned), original);
    // Then the entry is pruned.
    fs::remove_dir_all(&new_dir).unwrap();
    let info = overlay_chain_ok(&overlay);
    assert!(
        info.contains(&format!("backing file: {}\n", pinned.display())),
        "{info}"
    );
    assert_eq!(sha256sum(&pinned), original);

    // Pinning again (a new run in the same dir) replaces the pin atomically.
    let dir = fake_entry(&root, &spec, false);
    let again = pin_image(&dir.join("rootfs.img"), &run).unwrap();
    assert_eq!(again, pinned);
    assert_eq!(
        fs::metadata(&again).unwrap().ino(),
        fs::metadata(dir.join("rootfs.img")).unwrap().ino()
    );
}

/// Across filesystems (no hard link possible) the pin is a sparse copy: same bytes, few blocks.
#[test]
fn pin_across_filesystems_copies_sparsely() {
    let (_t, root) = hostile_cache();
    let dir = fake_entry(&root, &ImageSpec::base(), false);
    let disk = dir.join("rootfs.img");
    let shm = tempfile::tempdir_in("/dev/shm")
        .expect("a tmpfs at /dev/shm (another filesystem than the temp dir) for this test");
    assert_ne!(
        fs::metadata(shm.path()).unwrap().dev(),
        fs::metadata(&disk).unwrap().dev(),
        "/dev/shm must be another filesystem than {}",
        disk.display()
    );
    let pinned = pin_image(&disk, shm.path()).unwrap();
    let m = fs::metadata(&pinned).unwrap();
    assert_ne!(m.ino(), fs::metadata(&disk).unwrap().ino());
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    assert_eq!(sha256sum(&pinned), sha256sum(&disk));
}

/// A file next to a manifest that is not an image manifest (e.g. a warm-start snapshot's) pins.
#[test]
fn pin_ignores_other_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snapshot");
    fs::create_dir_all(&snap).unwrap();
    fs::write(snap.join("manifest.json"), br#"{"key": "warm"}"#).unwrap();
    fs::write(snap.join("disk.qcow2"), b"qcow2 bytes").unwrap();
    let pinned = pin_image(&snap.join("disk.qcow2"), &tmp.path().join("run")).unwrap();
    assert_eq!(fs::read(pinned).unwrap(), b"qcow2 bytes");
}

/// A cache hit (`lookup` or `ensure`) marks the entry as used for the LRU clean-up, and the
/// stamp does not disturb the integrity checks.
#[test]
fn a_cache_hit_marks_the_entry_as_used() {
    use machinist_qemu::cache_entries::{last_use, LAST_USE_FILE};
    use std::time::{Duration, SystemTime};
    let (_t, root) = hostile_cache();
    let spec = ImageSpec::base();
    let dir = fake_entry(&root, &spec, false);
    assert!(!dir.join(LAST_USE_FILE).exists());
    let cache = ImageCache::new(&root);
    assert!(cache.lookup(&spec).unwrap().is_some());
    assert!(dir.join(LAST_USE_FILE).is_file(), "lookup did not mark it");

    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    fs::File::options()
        .write(true)
        .open(dir.join(LAST_USE_FILE))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(last_use(&dir), Some(long_ago));
    let img = cache
        .ensure(&spec, machinist_guest::Progress::Silent)
        .unwrap();
    assert_eq!(img.dir, dir);
    assert!(last_use(&dir).unwrap() > long_ago, "ensure did not mark it");
    let reports = verify_cache(&root, false);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_ok(), "{}", reports[0].line());
}
