//! Test helpers: fake QEMU binaries (shell scripts) for supervision and probe tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes `script` (a `/bin/sh` body) as an executable `dir/name`.
///
/// The executable is written by `install(1)` in a child process, so no descriptor open for
/// writing can leak into a process another test thread forks meanwhile (which would make
/// `exec` fail with "Text file busy").
pub(crate) fn fake_qemu(dir: &Path, name: &str, script: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::write(&src, format!("#!/bin/sh\n{script}")).unwrap();
    let dst = dir.join(name);
    let st = std::process::Command::new("install")
        .arg("-m")
        .arg("0755")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success(), "install {} failed", dst.display());
    dst
}

/// Whether `pid` is gone (or a zombie, which holds nothing), polling up to `within`.
pub(crate) fn gone_within(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|s| s == "Z" || s == "X"),
        };
        if gone || Instant::now() >= deadline {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pid the fake QEMU wrote to `path`, waiting up to 5 s for it.
pub(crate) fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
