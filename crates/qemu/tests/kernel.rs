//! The test kernel download path, cold: `apt-get download` + `dpkg-deb -x` into an empty cache,
//! two callers at once (one downloads under the lock, the other reuses the result).

use machinist_qemu::kernel::{test_kernel_in, TinyInitramfs, VIRTIO_CONSOLE_MODULES};

#[test]
fn cold_cache_download_is_shared_by_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kernel");
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| test_kernel_in(&cache));
        let h2 = s.spawn(|| test_kernel_in(&cache));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert!(a.release.ends_with("-cloud-amd64"), "{}", a.release);
    assert!(a.vmlinuz.is_file());
    assert!(a.vmlinuz.starts_with(&cache));
    // No temp dirs left behind, exactly one unpacked release.
    let entries: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".lock")
        .collect();
    assert_eq!(entries, vec![a.release.clone()]);

    // Module dependencies come out in load order.
    let mods = a.modules_with_deps(VIRTIO_CONSOLE_MODULES).unwrap();
    let names: Vec<&str> = mods.iter().map(|(n, _)| n.as_str()).collect();
    let pos = |m: &str| {
        names
            .iter()
            .position(|n| *n == m)
            .unwrap_or_else(|| panic!("{m} missing: {names:?}"))
    };
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_pci"));
    assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
    assert!(pos("virtio_pci") < pos("virtio_console") || pos("virtio") < pos("virtio_console"));
    let err = a
        .modules_with_deps(&["no_such_module"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_module"), "{err}");

    // The initramfs is a valid newc archive with busybox, modules and /init.
    let img = TinyInitramfs::new("X")
        .modules(VIRTIO_CONSOLE_MODULES)
        .build(&a)
        .unwrap();
    assert!(img.starts_with(b"070701"));
    let text = String::from_utf8_lossy(&img);
    assert!(text.contains("lib/modules/virtio_console.ko") && text.contains("bin/busybox"));
}
