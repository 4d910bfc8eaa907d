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

            // Copies both ways through the backdoor; a port opened by a service.
            let host = tempfile::tempdir().unwrap();
            std::fs::write(host.path().join("payload"), "payload 123\n").unwrap();
            m.copy_from_host(host.path().join("payload"), "/root/payload")?;
            assert_eq!(m.succeed("cat /root/payload")?, "payload 123\n");
            m.succeed("mkdir -p /root/d && echo x > /root/d/f")?;
            let back = m.copy_from_machine("/root/d", "copied")?;
            assert_eq!(std::fs::read_to_string(back.join("f")).unwrap(), "x\n");
            m.succeed("systemd-run --unit=listener python3 -m http.server 8080 >/dev/null 2>&1 || systemd-run --unit=listener sh -c 'while true; do nc -l -p 8080 </dev/null; done'")?;
            m.wait_for_open_port(8080, 20)?;

            // What a container has no means for fails at once, naming node and backend.
            let s = Instant::now();
            for r in [
                m.screenshot("never").map(|_| ()),
                m.send_key("ret"),
                m.send_console("x"),
                m.get_tty_text(1).map(|_| ()),
                m.wait_until_tty_matches(1, "login", 5),
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

            // reboot(): the container comes back; /run is new, the upper layer is kept.
            m.succeed("touch /run/before-reboot")?;
            m.reboot()?;
            assert_eq!(m.execute("test -e /run/before-reboot")?.0, 1);
            assert_eq!(m.succeed("cat /root/kept")?, "kept\n");

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

/// `kill -9` and SIGTERM of a test process with a container up: the parent-death signal reaches
/// the container; no process, mount, loop or TAP device is left. (The run directory of a killed
/// test process is removed by the next run, as for VMs.)
#[test]
fn ct_kill_leaves_nothing() {
    let _lock = common::vm_lock();
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let info = tmp.path().join("info");
        let mut child =
            std::process::Command::new(env!("CARGO_BIN_EXE_machinist-driver-test-killed"))
                .arg(&info)
                .arg("container")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&info) {
                if t.ends_with('\n') {
                    break t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the child test never reported its container"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child test ended early"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut words = text.split_whitespace();
        let pid: u32 = words.next().unwrap().parse().unwrap();
        let run_dir = PathBuf::from(words.next().unwrap());
        assert!(common::alive(pid));
        assert!(!processes_mentioning(&run_dir).is_empty());
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while common::alive(pid) {
            assert!(
                Instant::now() < deadline,
                "container {pid} outlived its test process"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_nothing_left_of(&run_dir, child.id(), false);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
}

/// No process mentions the run directory, no mount or loop device is under it, no TAP device of
/// this process exists, and the run directory is gone.
fn assert_nothing_left(run_dir: &Path) {
    assert_nothing_left_of(run_dir, std::process::id(), true);
}

/// As [`assert_nothing_left`] for the test process `pid`; `dir_removed`: the run directory too.
fn assert_nothing_left_of(run_dir: &Path, pid: u32, dir_removed: bool) {
    // The kernel tears a dead mount namespace down asynchronously: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = processes_mentioning(run_dir);
        let loops = loops_under(run_dir);
        let mounts = mounts_under(run_dir);
        let taps = taps_of(pid);
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
    if dir_removed {
        assert!(
            !run_dir.exists(),
            "run directory {} left behind",
            run_dir.display()
        );
    }
}

/// Host interfaces named like the TAP devices of test process `pid` (`mn<pid>n<n>`, in hex).
fn taps_of(pid: u32) -> Vec<String> {
    let prefix = format!("mn{pid:x}n");
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
