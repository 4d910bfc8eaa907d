//! One container node (systemd-nspawn): commands, the node layer, crash and restart, shutdown,
//! operations a container cannot do; and nothing left behind afterwards, also after a panic.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use machinist::{BackendKind, Error, FileSpec, NodeConfig, Test};

#[test]
fn ct_single() {
    let _lock = common::vm_lock();
    let out = common::out_dir("ct_single");
    let mut run_dir = None;
    let first_pid = AtomicU32::new(0);
    Test::new("ct-single")
        .node(
            "box",
            NodeConfig::new()
                .container()
                .file(FileSpec::new("/etc/machinist-ct-test", "from the layer\n")),
        )
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let m = t.machine("box");
            assert_eq!(m.backend(), BackendKind::Container);
            run_dir = Some(t.run_dir().to_path_buf());
            let t0 = Instant::now();
            t.start_all()?;
            m.succeed("true")?;
            eprintln!(
                "METRIC container start -> first command answered: {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            first_pid.store(m.pid().unwrap(), Ordering::SeqCst);
            let n = 41;
            let mut lat = Vec::new();
            for _ in 0..n {
                let s = Instant::now();
                m.succeed("true")?;
                lat.push(s.elapsed());
            }
            lat.sort();
            eprintln!(
                "METRIC succeed(\"true\") median {:.2} ms",
                lat[n / 2].as_secs_f64() * 1e3
            );

            // The node layer, the identity, a real container under systemd.
            assert_eq!(m.succeed("cat /etc/machinist-ct-test")?, "from the layer\n");
            assert_eq!(m.succeed("hostname")?, "box\n");
            assert_eq!(
                m.succeed("systemd-detect-virt --container")?,
                "systemd-nspawn\n"
            );
            m.wait_for_unit("multi-user.target", None)?;
            assert_eq!(m.execute("echo out; exit 3")?, (3, "out\n".to_string()));
            // A host-side timeout, and the shell stays usable.
            let s = Instant::now();
            assert_eq!(m.execute_with("sleep 30", Duration::from_secs(1))?.0, 124);
            assert!(s.elapsed() < Duration::from_secs(10));
            assert_eq!(m.succeed("echo still-here")?, "still-here\n");
            // A command's stderr goes to the console, which is the console log.
            m.succeed("echo ct-stderr-marker >&2")?;
            m.wait_for_console_text("ct-stderr-marker", 10)?;
            assert!(m.get_console_log().contains("Reached target"));

            // What a container has no means for fails at once, naming node and backend.
            let s = Instant::now();
            for r in [
                m.screenshot("never").map(|_| ()),
                m.send_key("ret"),
                m.send_console("x"),
            ] {
                let e = r.expect_err("a container has no display, keys or console input");
                let msg = e.to_string();
                assert!(msg.contains("box") && msg.contains("container"), "{msg}");
            }
            assert!(matches!(
                m.screenshot("never"),
                Err(Error::NotSupported { .. })
            ));
            assert!(s.elapsed() < Duration::from_secs(2));

            // crash() kills it; start() boots from the same upper layer.
            m.succeed("echo kept > /root/kept && sync")?;
            let pid = m.pid().unwrap();
            m.crash()?;
            assert!(!m.is_up());
            assert!(
                !common::alive(pid),
                "the container's process {pid} survived crash()"
            );
            m.start()?;
            assert_eq!(m.succeed("cat /root/kept")?, "kept\n");
            assert_eq!(m.succeed("cat /etc/machinist-ct-test")?, "from the layer\n");

            // A clean poweroff inside ends it.
            m.shutdown()?;
            assert!(!m.is_up());
            Ok(())
        })
        .run()
        .unwrap();
    let pid = first_pid.load(Ordering::SeqCst);
    assert!(pid > 0 && !common::alive(pid));
    assert_nothing_left(&run_dir.unwrap());
}

/// A panic with the container up: its processes, mounts and loop device go with the run.
#[test]
fn ct_cleanup_after_panic() {
    let _lock = common::vm_lock();
    let out = common::out_dir("ct_cleanup_panic");
    let mut run_dir: Option<PathBuf> = None;
    let r = Test::new("ct-panic")
        .node("victim", NodeConfig::new().container())
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let m = t.machine("victim");
            m.succeed("true")?;
            run_dir = Some(t.run_dir().to_path_buf());
            assert!(!processes_mentioning(t.run_dir()).is_empty());
            assert!(!loops_under(t.run_dir()).is_empty());
            let c = t.vlan(1).unwrap().switch().port_counters("victim").unwrap();
            assert!(c.connected, "{c:?}");
            panic!("boom with a container up");
        })
        .run();
    let e = r.unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
    assert!(out.join("victim-console.log").exists());
    assert_nothing_left(&run_dir.unwrap());
}

/// No process mentions the run directory, no mount or loop device is under it, no TAP device of
/// this process exists, and the run directory is gone.
fn assert_nothing_left(run_dir: &Path) {
    // The kernel tears a dead mount namespace down asynchronously: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = processes_mentioning(run_dir);
        let loops = loops_under(run_dir);
        let mounts = mounts_under(run_dir);
        let taps = our_taps();
        if procs.is_empty() && loops.is_empty() && mounts.is_empty() && taps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {procs:?}, loop devices {loops:?}, mounts {mounts:?}, \
             TAP devices {taps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !run_dir.exists(),
        "run directory {} left behind",
        run_dir.display()
    );
}

/// Host interfaces named like this process's TAP devices (`mn<pid>n<n>`, pid in hex).
fn our_taps() -> Vec<String> {
    let prefix = format!("mn{:x}n", std::process::id());
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Live processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(&needle) && common::alive(pid) {
            v.push(pid);
        }
    }
    v
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(f) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(f.trim()).starts_with(dir) {
                v.push(name);
            }
        }
    }
    v
}

/// Mounts under `dir` in any process's mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = format!(" {}", dir.display());
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(m) = std::fs::read_to_string(e.path().join("mountinfo")) {
            v.extend(
                m.lines()
                    .filter(|l| l.contains(&needle))
                    .map(str::to_string),
            );
        }
    }
    v.sort();
    v.dedup();
    v
}
