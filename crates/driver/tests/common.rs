//! Shared helpers of the driver's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Holds the host-wide VM test slot for the duration of a test.
pub fn vm_lock() -> machinist_qemu::VmTestLock {
    machinist_qemu::VmTestLock::acquire().expect("VM test lock")
}

/// A fresh output directory under the system temp dir (kept for inspection).
pub fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join("machinist-driver-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether `/proc/<pid>` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Pids of QEMU processes whose command line mentions `needle`.
pub fn qemus_with(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(needle) && alive(pid) {
            v.push(pid);
        }
    }
    v
}
