//! The `machinist` binary as a user runs it: exit codes and messages.

use std::process::{Command, Output};

fn machinist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_machinist"))
        .args(args)
        .env_remove("MACHINIST_ACCEL")
        .output()
        .expect("run the machinist binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_exits_0() {
    let o = machinist(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["list", "run", "interactive", "doctor"] {
        assert!(out.contains(cmd), "help lists {cmd}:\n{out}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let o = machinist(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&o));
}

#[test]
fn unknown_test_exits_2_and_says_so() {
    let o = machinist(&["run", "nosuch"]);
    // (the binary bundles `hello`)
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&o));
}

#[test]
fn list_exits_0_and_names_the_bundled_tests() {
    let o = machinist(&["list"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("hello "), "{out}");
    assert!(out.contains("\npostgrest "), "{out}");
}

/// May boot the KVM probe guest (when no verdict is cached): a `vm_` test, under the VM lock.
#[test]
fn vm_doctor_reports_accelerator_and_qemu() {
    let o = machinist(&["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("accelerator      tcg") || out.contains("accelerator      kvm"),
        "{out}"
    );
    assert!(out.contains("QEMU"), "{out}");
    assert!(out.contains("cache directory"), "{out}");
    // This host has every package (cargo xtask deps ran): doctor passes.
    assert_eq!(o.status.code(), Some(0), "{out}");
}

#[test]
fn doctor_names_the_package_of_a_missing_tool() {
    // An empty PATH hides every tool: doctor must exit 1 and name the Debian packages.
    let o = Command::new(env!("CARGO_BIN_EXE_machinist"))
        .arg("doctor")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("qemu-system-x86")
            && out.contains("tesseract-ocr")
            && out.contains("mmdebstrap"),
        "{out}"
    );
}

#[test]
fn library_entry_point_maps_setup_errors_to_exit_2() {
    use machinist::{NodeConfig, Test};
    use machinist_cli::{run_cli, BundledTest};
    let tests = vec![
        BundledTest::new("declare-fails", "cannot be declared", |_| {
            Err(machinist::Error::Invalid("no such template".into()))
        }),
        // Two nodes with one name pattern that validation rejects: nothing boots.
        BundledTest::new("invalid", "invalid node name", |_| {
            Ok(Test::new("invalid").node("bad name!", NodeConfig::new()))
        }),
    ];
    assert_eq!(run_cli(["machinist", "run", "declare-fails"], &tests), 2);
    assert_eq!(run_cli(["machinist", "run", "invalid"], &tests), 2);
    assert_eq!(
        run_cli(
            ["machinist", "run", "invalid", "--script", "/nonexistent.py"],
            &tests
        ),
        2
    );
    assert_eq!(run_cli(["machinist", "list"], &tests), 0);
}

/// `machinist cache` lists a cache given by MACHINIST_CACHE_DIR; `cache gc` removes the least
/// recently used entries (a dry run first, which removes nothing).
#[test]
fn cache_lists_and_gc_removes_least_recently_used() {
    use std::time::{Duration, SystemTime};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let entry = |rel: &str, days: u64| {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), vec![1u8; 1 << 20]).unwrap();
        let stamp = std::fs::File::create(dir.join("last-use")).unwrap();
        stamp
            .set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))
            .unwrap();
        dir
    };
    let old = entry("snapshots/0123abcd", 9);
    let new = entry("images/feedbeef", 2);
    let cache = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_machinist"))
            .arg("cache")
            .args(args)
            .env("MACHINIST_CACHE_DIR", &root)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    for listing in [cache(&[]), cache(&["list"])] {
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("image ") && lines[0].contains("used     2 d ago"));
        assert!(lines[0].ends_with(&new.display().to_string()), "{listing}");
        assert!(lines[1].starts_with("snapshot ") && lines[1].contains("9 d ago"));
        assert!(lines[1].contains(" MiB "), "{listing}");
        assert!(
            lines[2].starts_with("total 2.") && lines[2].contains("MiB in 2 entries"),
            "{listing}"
        );
    }

    let dry = cache(&["gc", "--keep-bytes", "1536K", "--dry-run"]);
    assert!(dry.starts_with("would remove  snapshot "), "{dry}");
    assert!(dry.contains("would free 1."), "{dry}");
    assert!(old.exists(), "a dry run removed it");

    let out = cache(&["gc", "--keep-bytes", "1536K"]);
    assert!(out.starts_with("removed  snapshot "), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!old.exists() && new.exists());

    // The newer entry is within a 3-day --min-idle: kept, and said so.
    let out = cache(&["gc", "--keep-bytes", "0", "--min-idle", "259200"]);
    assert!(out.starts_with("kept  image "), "{out}");
    assert!(out.contains("used within --min-idle"), "{out}");
    assert!(new.exists());
}
