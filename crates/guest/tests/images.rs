//! Image cache behaviour against the real cache (builds the bootstrap tree on first use; needs
//! network access to deb.debian.org and root for mmdebstrap/chroot).

use machinist_guest::{GuestError, ImageCache, ImageSpec, Progress};

#[test]
fn image_unknown_package_is_named_and_leaves_no_cache_entry() {
    let cache = ImageCache::from_env();
    let spec = ImageSpec::with_packages(["machinist-no-such-package"]);
    let err = cache.ensure(&spec, Progress::Lines).unwrap_err();
    match &err {
        GuestError::UnknownPackage { package, apt_message, .. } => {
            assert_eq!(package, "machinist-no-such-package");
            assert!(apt_message.contains("Unable to locate package"), "{apt_message}");
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
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(img.disk.exists() && img.kernel.exists() && img.initrd.exists());
}
