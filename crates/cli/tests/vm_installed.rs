//! An installed `machinist` (the binary copied out of the build tree, as `cargo install` does)
//! works from any directory without cargo: a test file runs, and the bundled PostgREST test uses
//! the postgrest-lite installed beside it, or says how to install it. Boots one QEMU machine,
//! under the host VM lock.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `machinist args…` as installed in `bin`, run in `cwd` with a PATH that has no cargo.
fn installed(bin: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin.join("machinist"))
        .args(args)
        .current_dir(cwd)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NO_COLOR", "1")
        .env("MACHINIST_OUTPUT_DIR", cwd.join("out"))
        .env_remove("CARGO")
        .env_remove("MACHINIST_POSTGREST")
        .output()
        .expect("run the installed machinist")
}

#[test]
fn vm_installed_binary_runs_outside_the_source_tree() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let tmp = tempfile::tempdir().expect("temp dir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_machinist"), bin.join("machinist")).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();

    // Without postgrest-lite: refused at once, with the install command (no cargo build).
    let t0 = Instant::now();
    let o = installed(&bin, &work, &["run", "postgrest"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cargo install --path crates/postgrest-lite"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());

    // With postgrest-lite installed beside it: that one is used.
    let lite = machinist_tests::postgrest_binary::resolve(None).expect("postgrest-lite builds");
    std::fs::copy(&lite.path, bin.join("postgrest-lite")).unwrap();
    std::fs::write(work.join("noop.py"), "print('declared, nothing started')\n").unwrap();
    let o = installed(&bin, &work, &["run", "postgrest", "--script", "noop.py"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let beside = bin.join("postgrest-lite").display().to_string();
    assert!(err.contains(&beside), "expected {beside} in:\n{err}");

    // A new test file runs on a real machine.
    let o = installed(&bin, &work, &["new", "smoke"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = installed(&bin, &work, &["run", "smoke/test.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("echo hello"), "{err}");
}
