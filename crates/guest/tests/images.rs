//! Image cache behaviour against the real cache (builds the bootstrap tree on first use; needs
//! network access to deb.debian.org and root for mmdebstrap/chroot).

use machinist_guest::{GuestError, ImageCache, ImageSpec, Progress};

#[test]
fn image_unknown_package_is_named_and_leaves_no_cache_entry() {
    let cache = ImageCache::from_env();
    let spec = ImageSpec::with_packages(["machinist-no-such-package"]);
    let err = cache.ensure(&spec, Progress::Lines).unwrap_err();
    match &err {
        GuestError::UnknownPackage {
            package,
            apt_message,
            ..
        } => {
            assert_eq!(package, "machinist-no-such-package");
            assert!(
                apt_message.contains("Unable to locate package"),
                "{apt_message}"
            );
        }
        other => panic!("expected UnknownPackage, got {other}"),
    }
    assert!(err.to_string().contains("machinist-no-such-package"));
    assert!(cache.lookup(&spec).unwrap().is_none());
    let hash = spec.hash().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(cache.images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&hash) && !n.ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn image_warm_cache_hit_is_fast() {
    let cache = ImageCache::from_env();
    cache.ensure(&ImageSpec::base(), Progress::Lines).unwrap();
    let t = std::time::Instant::now();
    let img = cache.ensure(&ImageSpec::base(), Progress::Silent).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert!(img.disk.exists() && img.kernel.exists() && img.initrd.exists());
}

/// Under CI (`CI` set and not `false`) a missing prerequisite fails the test instead of skipping.
fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A cache on a nearly full filesystem fails before building, with a clear error naming the
/// directory and MACHINIST_CACHE_DIR (needs root for the tmpfs mount: skipped with a message
/// outside CI, a failure under `CI=true`).
#[test]
fn image_disk_full_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(dir.path())
        .output();
    let ok = mount.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        let why = match &mount {
            Ok(o) => String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            Err(e) => e.to_string(),
        };
        let msg = format!(
            "cannot mount a tmpfs at {} ({why}): this test needs root (CI runs the suite as root)",
            dir.path().display()
        );
        assert!(!on_ci(), "{msg}");
        eprintln!("skipped (not under CI): {msg}");
        return;
    }
    let cache = ImageCache::new(dir.path());
    let err = cache
        .ensure(&ImageSpec::base(), Progress::Silent)
        .unwrap_err();
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    assert!(matches!(err, GuestError::DiskFull { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("MACHINIST_CACHE_DIR") && msg.contains("MiB"),
        "{msg}"
    );
}
