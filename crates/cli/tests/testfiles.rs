//! Test files with the built binary, without booting anything: `check`, `run` refusing a file
//! with mistakes, `new`, `stubs`, and suites with `--partition`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

fn machinist(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_machinist"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MACHINIST_ACCEL")
        .output()
        .expect("run the machinist binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A test file whose script calls a machine that does not exist.
fn broken(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("test.toml"),
        format!("name = \"{name}\"\nscript = '''\nstart_all()\nsrever.succeed(\"true\")\n'''\n\n[nodes.server]\n"),
    )
    .unwrap();
}

#[test]
fn check_passes_the_postgrest_test_file_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("postgrest");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/postgrest/test.toml");
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_machinist"))
        .arg("check")
        .arg(&file)
        .env("MACHINIST_POSTGREST", &fake)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains(": ok: test `postgrest`, nodes client, server, script checked"),
        "{out}"
    );
    // The whole process: start, load, render, compile and walk the script.
    assert!(took.as_millis() < 1000, "machinist check took {took:?}");
    eprintln!("machinist check tests/postgrest/test.toml took {took:?}");
}

#[test]
fn check_and_run_refuse_a_script_with_mistakes_before_booting() {
    let tmp = tempfile::tempdir().unwrap();
    broken(tmp.path(), "bad");
    let o = machinist(&["check", "bad"], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bad/test.toml:4:1: `srever.succeed(...)`: no machine or name `srever` (did you mean server?)"), "{}", text(&o));
    let o = machinist(&["run", "bad/test.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the script has mistakes (found before booting anything"),
        "{}",
        text(&o)
    );
    let o = machinist(&["check", "nosuch.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn new_writes_a_test_that_checks_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let o = machinist(&["new", "smoke"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(tmp.path().join("smoke/test.toml").is_file());
    assert!(tmp.path().join("smoke/script.py").is_file());
    let o = machinist(&["check", "smoke"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let before = std::fs::read_to_string(tmp.path().join("smoke/script.py")).unwrap();
    std::fs::write(tmp.path().join("smoke/script.py"), "# mine\n").unwrap();
    let o = machinist(&["new", "smoke"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("smoke/script.py")).unwrap(),
        "# mine\n"
    );
    assert!(before.contains("machine.succeed(\"true\")"));
}

#[test]
fn stubs_are_written_with_the_test_machines() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(machinist(&["new", "t"], tmp.path()).status.code(), Some(0));
    let o = machinist(&["stubs", "t"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stubs = std::fs::read_to_string(tmp.path().join("t/machinist.pyi")).unwrap();
    assert!(
        stubs.contains("def wait_for_unit(self, unit, user=None, timeout=None) -> Any:"),
        "{stubs}"
    );
    assert!(stubs.contains("\nmachine: Machine\n"), "{stubs}");
    // Valid Python: the interpreter compiles it.
    let o = Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(tmp.path().join("t/machinist.pyi"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_suite_partitions_cover_every_test_once_with_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("suite");
    for n in ["a", "b", "c"] {
        broken(&suite, n);
    }
    let mut seen = Vec::new();
    for k in ["1/2", "2/2"] {
        let o = machinist(&["run", "suite", "--partition", k], tmp.path());
        // Each file fails its check (exit 2 each): the suite fails, nothing booted.
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        for line in out.lines().filter(|l| l.starts_with("ERROR")) {
            seen.push(line.rsplit(' ').next().unwrap().to_string());
        }
        assert!(out.contains("0 of "), "{out}");
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "suite/a/test.toml",
            "suite/b/test.toml",
            "suite/c/test.toml"
        ],
        "1/2 and 2/2 together run each test exactly once"
    );
    let o = machinist(&["run", "suite/a", "--partition", "1/2"], tmp.path());
    assert_eq!(
        o.status.code(),
        Some(2),
        "--partition needs a directory of tests"
    );
}

#[test]
fn a_suite_with_jobs_writes_a_log_per_test_and_one_junit_report() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("suite");
    for n in ["a", "b", "c"] {
        broken(&suite, n);
    }
    let o = machinist(
        &[
            "run", "suite", "--jobs", "2", "--output", "out", "--junit", "all.xml",
        ],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("0 of 3 passed"), "{out}");
    for i in ["001", "002", "003"] {
        let log = std::fs::read_to_string(tmp.path().join(format!("out/{i}.log"))).unwrap();
        assert!(
            log.contains("srever"),
            "test {i}'s log names the mistake: {log}"
        );
    }
    let xml = std::fs::read_to_string(tmp.path().join("all.xml")).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), 3, "{xml}");
    assert!(xml.contains("suite/b/test.toml"), "{xml}");
}
