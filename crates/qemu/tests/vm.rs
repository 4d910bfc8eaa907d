//! VM tests: real QEMU under TCG booting Debian's cloud kernel with a tiny busybox initramfs.
//! Each takes the host VM lock. Measured times are printed (run with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machinist_qemu::kernel::{
    test_kernel, AfterMarker, TinyInitramfs, TINY_APPEND, VIRTIO_CONSOLE_MODULES,
};
use machinist_qemu::socket::bind_listener;
use machinist_qemu::{
    accel, wait_event, Accel, ChoiceSource, QemuCommand, QemuError, QemuProcess, Qmp, QmpError,
    ScreendumpFormat, Serial, VmTestLock,
};
use tokio::io::AsyncReadExt;

const MARKER: &str = "MACHINIST-TEST-READY";

/// Takes the host VM lock, reporting the wait (test durations include it).
fn vm_lock() -> VmTestLock {
    let t = Instant::now();
    let l = VmTestLock::acquire().unwrap();
    let waited = t.elapsed();
    if waited > Duration::from_millis(100) {
        eprintln!(
            "(waited {:.1}s for the VM lock {})",
            waited.as_secs_f64(),
            l.path().display()
        );
    }
    l
}

/// Whether `/proc/<pid>` is gone or a zombie (a zombie has no resources left; reaping it is
/// its parent's job).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn ppm_size(data: &[u8]) -> (usize, usize) {
    // P6 <ws> width <ws> height <ws> maxval <single ws> pixels
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data[i].is_ascii_whitespace() {
            i += 1;
        }
        if data[i] == b'#' {
            while data[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    i += 1;
    assert_eq!(fields[0], "P6", "not a binary PPM");
    assert_eq!(fields[3], "255");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(data.len() - i, w * h * 3, "PPM pixel data size");
    (w, h)
}

fn png_size(data: &[u8]) -> (usize, usize) {
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&data[12..16], b"IHDR");
    let be =
        |o: usize| u32::from_be_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]) as usize;
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boot_serial_qmp_screendump_reset_quit() {
    let _lock = vm_lock();
    let kernel = tokio::task::spawn_blocking(test_kernel)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    TinyInitramfs::new(MARKER)
        .modules(VIRTIO_CONSOLE_MODULES)
        // A second shell on the VGA console (tty1) reads the emulated keyboard.
        .script("setsid sh -c 'exec sh </dev/tty1 >/dev/tty1 2>&1' &")
        .after(AfterMarker::Shell)
        .write(&kernel, &initrd)
        .unwrap();
    let qmp_path = dir.path().join("qmp.sock");
    let con_path = dir.path().join("shell.sock");
    let qmp_listener = bind_listener(&qmp_path).unwrap();
    let con_listener = bind_listener(&con_path).unwrap();
    // Every element of a typical test node's command line, against real QEMU: a qcow2 overlay,
    // a stream NIC into a listening "switch port" and a user-net NIC.
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();
    let overlay = dir.path().join("vm1.qcow2");
    machinist_qemu::overlay::create_qcow2_overlay(&base, "raw", &overlay).unwrap();
    let port_path = dir.path().join("vlan1.sock");
    let port_listener = bind_listener(&port_path).unwrap();
    let cmd = QemuCommand::new("vm1")
        .drive(machinist_qemu::Drive::qcow2(&overlay))
        .nic(machinist_qemu::Nic::stream(
            "nic-vlan1",
            "52:54:00:12:01:01",
            &port_path,
        ))
        .nic(machinist_qemu::Nic::user(
            "nic-user",
            "52:54:00:12:ff:01",
            true,
        ))
        .kernel(&kernel.vmlinuz)
        .initrd(&initrd)
        .append(TINY_APPEND)
        .memory_mib(512)
        .qmp(&qmp_path)
        .virtconsole("shell", &con_path)
        .allow_reboot(true); // with -no-reboot, QMP system_reset makes QEMU exit instead

    let t0 = Instant::now();
    let qemu = QemuProcess::spawn(&cmd).unwrap();
    let qmp = qemu
        .while_running_try(Qmp::accept(&qmp_listener, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let qmp_ready = t0.elapsed();
    let _port = qemu
        .while_running(machinist_qemu::socket::accept_within(
            &port_listener,
            Duration::from_secs(10),
            "vm1",
            "the vlan1 switch port",
        ))
        .await
        .unwrap()
        .unwrap();
    let mut console = qemu
        .while_running(machinist_qemu::socket::accept_within(
            &con_listener,
            Duration::from_secs(10),
            "vm1",
            "the shell console",
        ))
        .await
        .unwrap()
        .unwrap();

    let st = qmp.query_status().await.unwrap();
    assert!(st.running, "{st:?}");
    assert_eq!(st.status, "running");

    let serial = qemu.serial();
    let linux = serial
        .wait_for(
            0,
            "kernel banner",
            |l| l.contains("Linux version"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let t_linux = t0.elapsed();
    let hit = serial
        .wait_for(
            linux.index,
            MARKER,
            |l| l.contains(MARKER),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let t_marker = t0.elapsed();
    assert!(
        !serial.contains("insmod") || !serial.contains("failed"),
        "{}",
        serial.tail(50)
    );
    assert!(hit.index > linux.index);
    assert!(!hit.text.contains('\r'));
    let run_init = serial
        .find(linux.index, |l| l.contains("Run /init"))
        .expect("kernel logs `Run /init`");
    let since = |at: Instant| at.duration_since(qemu.started_at()).as_secs_f64();
    eprintln!(
        "MEASURED spawn->QMP ready {:.3}s; since spawn: kernel banner {:.3}s, Run /init {:.3}s, initramfs marker {:.3}s (kernel banner->marker {:.3}s; {} serial lines; waits returned at {:.3}s/{:.3}s)",
        qmp_ready.as_secs_f64(),
        since(linux.at),
        since(run_init.at),
        since(hit.at),
        hit.at.duration_since(linux.at).as_secs_f64(),
        serial.line_count(),
        t_linux.as_secs_f64(),
        t_marker.as_secs_f64(),
    );

    // The serial console is interactive: type into the busybox shell on ttyS0.
    let from = serial.line_count();
    qemu.write_stdin(b"echo serial-$((6*7))\n").unwrap();
    serial
        .wait_for(
            from,
            "echo output",
            |l| l == "serial-42",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    // The virtio console works (modules loaded, QEMU connected to our listener as a client).
    qemu.write_stdin(b"echo hvc-$((7*6)) > /dev/hvc0\n")
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("hvc-42") {
            let n = console.read(&mut buf).await.unwrap();
            assert!(n > 0, "console closed");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no hvc0 output: {:?}\n{}",
        String::from_utf8_lossy(&got),
        serial.tail(20)
    );

    // Concurrent callers are matched by id.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let q = qmp.clone();
            tokio::spawn(async move { q.query_status().await })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().unwrap().running);
    }

    // Screendumps: a valid PPM with consistent size, and a PNG of the same size.
    let ts = Instant::now();
    let ppm = qmp
        .screendump(&dir.path().join("screen.ppm"), ScreendumpFormat::Ppm)
        .await
        .unwrap();
    let t_dump = ts.elapsed();
    assert!(ppm.is_absolute());
    let (w, h) = ppm_size(&std::fs::read(&ppm).unwrap());
    assert!(
        [(720, 400), (640, 480), (1024, 768), (800, 600)].contains(&(w, h)),
        "unexpected VGA size {w}x{h}"
    );
    let png = qmp
        .screendump(&dir.path().join("screen.png"), ScreendumpFormat::Png)
        .await
        .unwrap();
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (w, h));
    eprintln!(
        "MEASURED screendump {w}x{h} PPM in {:.1} ms",
        t_dump.as_secs_f64() * 1000.0
    );

    // QEMU's own errors come back typed.
    let err = qmp
        .execute(
            "no-such-command",
            serde_json::Value::Null,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"), "{err}");
    let err = qmp.set_link("no-such-nic", false).await.unwrap_err();
    match &err {
        QmpError::Command { class, desc, .. } => {
            assert!(!class.is_empty());
            assert!(desc.contains("no-such-nic"), "{err}");
        }
        other => panic!("expected a command error, got {other}"),
    }
    let hmp = qmp.human_monitor_command("info status").await.unwrap();
    assert!(hmp.contains("running"), "{hmp}");
    let block = qmp.human_monitor_command("info block").await.unwrap();
    assert!(block.contains("vm1.qcow2"), "{block}");
    qmp.set_link("nic-vlan1", false).await.unwrap();
    let net = qmp.human_monitor_command("info network").await.unwrap();
    assert!(
        net.contains("nic-vlan1") && net.contains("nic-user"),
        "{net}"
    );
    assert!(
        net.contains("52:54:00:12:01:01") && net.contains("restrict=on"),
        "{net}"
    );
    qmp.set_link("nic-vlan1", true).await.unwrap();
    // (QEMU 7.2's `info network` shows no link state; the error case above proves ids matter.)
    qmp.stop().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "paused");
    qmp.cont().await.unwrap();

    // Typing on the keyboard reaches the shell on tty1, which writes to ttyS0.
    let from = serial.line_count();
    qmp.send_chars(
        "echo \"Typed: $((6*7))!\" >/dev/ttyS0\n",
        Duration::from_millis(5),
    )
    .await
    .unwrap();
    serial
        .wait_for(
            from,
            "typed echo",
            |l| l.ends_with("Typed: 42!"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(qmp.send_chars("é", Duration::ZERO).await.is_err());
    qmp.send_key_combo("ctrl-alt-delete").await.unwrap();

    // Keys and the ACPI power button are accepted (busybox init ignores the button).
    qmp.send_key(&["shift", "a"], Some(20)).await.unwrap();
    let err = qmp.send_key(&["no-such-key"], None).await.unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");
    let mut events = qmp.subscribe();
    qmp.system_powerdown().await.unwrap();
    wait_event(&mut events, "POWERDOWN", Duration::from_secs(10))
        .await
        .unwrap();

    // system_reset produces a RESET event, and the guest boots again.
    let mut events = qmp.subscribe();
    let before = serial.line_count();
    qmp.system_reset().await.unwrap();
    let ev = wait_event(&mut events, "RESET", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ev.data["guest"], serde_json::json!(false));
    serial
        .wait_for(
            before,
            "kernel banner after reset",
            |l| l.contains("Linux version"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();

    // quit ends QEMU, and calls still pending at that moment fail with Disconnected at once.
    // Freeze QEMU so the calls really are pending: one before quit, quit, one after.
    assert!(qemu.signal(nix::sys::signal::Signal::SIGSTOP));
    let long = Duration::from_secs(60);
    let q1 = qmp.clone();
    let before_quit = tokio::spawn(async move { q1.query_status().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q2 = qmp.clone();
    let quit = tokio::spawn(async move { q2.quit().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q3 = qmp.clone();
    let after_quit = tokio::spawn(async move {
        q3.execute("query-status", serde_json::Value::Null, long)
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tq = Instant::now();
    assert!(qemu.signal(nix::sys::signal::Signal::SIGCONT));
    let status = tokio::time::timeout(Duration::from_secs(10), qemu.wait())
        .await
        .unwrap();
    assert!(status.success(), "quit exits with 0: {status}");
    before_quit.await.unwrap().unwrap();
    quit.await.unwrap().unwrap();
    let err = after_quit.await.unwrap().unwrap_err();
    let t_fail = tq.elapsed();
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
    assert!(
        t_fail < Duration::from_secs(3),
        "Disconnected took {t_fail:?}"
    );
    let err = qmp.query_status().await.unwrap_err();
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
    assert!(
        serial.is_closed()
            || tokio::time::timeout(Duration::from_secs(2), async {
                while !serial.is_closed() {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
            })
            .await
            .is_ok()
    );
    eprintln!(
        "MEASURED quit -> pending call Disconnected in {:.1} ms",
        t_fail.as_secs_f64() * 1000.0
    );
}

/// A paused QEMU (no guest code runs) for process-lifecycle tests.
fn paused_qemu(name: &str) -> QemuCommand {
    QemuCommand::new(name)
        .memory_mib(64)
        .cores(1)
        .serial(Serial::None)
        .arg("-S")
}

#[test]
fn vm_drop_leaves_no_process() {
    let _lock = vm_lock();
    let qemu = QemuProcess::spawn(&paused_qemu("dropme")).unwrap();
    let pid = qemu.pid();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(qemu.try_wait().is_none());
    let t = Instant::now();
    drop(qemu);
    // Reaped by the time drop returns: not even a zombie is left.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still in /proc after drop"
    );
    eprintln!(
        "MEASURED drop (SIGTERM, reap) {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

/// The helper binary (`tests/helpers/parent_of_qemu.rs`) starts a paused QEMU and reports its
/// pid; SIGKILLing the helper must take QEMU down through the parent-death signal.
#[test]
fn vm_parent_sigkill_kills_qemu() {
    let _lock = vm_lock();
    let mut helper = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_machinist-qemu-test-parent"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let out = helper.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("QEMU_PID=") {
                let _ = tx.send(p.trim().parse::<u32>().unwrap());
            }
        }
    });
    let pid = rx.recv_timeout(Duration::from_secs(30)).ok();
    let pid = pid.expect("helper did not report a QEMU pid");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dead(pid), "QEMU should run while its parent lives");
    helper.0.kill().unwrap(); // SIGKILL: no destructors run in the helper
    let t = Instant::now();
    while !dead(pid) && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        dead(pid),
        "QEMU {pid} survived its parent's SIGKILL for 2 s"
    );
    eprintln!(
        "MEASURED parent SIGKILL -> QEMU dead in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn vm_invalid_option_surfaces_qemu_message() {
    let _lock = vm_lock();
    let cmd = paused_qemu("badopt").arg("-device").arg("foo");
    let qemu = QemuProcess::spawn(&cmd).unwrap();
    let err = qemu
        .while_running(std::future::pending::<()>())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QemuError::Exited { .. }), "{msg}");
    assert!(
        msg.starts_with("QEMU exited with status 1: qemu-system-x86_64: -device foo:"),
        "{msg}"
    );
    assert!(msg.contains("badopt"), "{msg}");
    assert!(qemu.exit_error().await.is_some());

    // Waiting for QMP: QEMU connects and greets, then rejects the option and exits. Plain
    // `while_running` would report "QMP connection closed"; `while_running_try` gives QEMU's
    // own message.
    let dir = tempfile::tempdir().unwrap();
    let qmp_path = dir.path().join("qmp.sock");
    let listener = bind_listener(&qmp_path).unwrap();
    let cmd = paused_qemu("badopt2")
        .qmp(&qmp_path)
        .arg("-device")
        .arg("foo");
    let qemu = QemuProcess::spawn(&cmd).unwrap();
    let err = qemu
        .while_running_try(Qmp::accept(&listener, Duration::from_secs(20)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("-device foo"), "{err}");
}

#[test]
fn bad_input_is_rejected_before_spawn() {
    let err = QemuProcess::spawn(&QemuCommand::new("vm").binary("/usr/bin/qemu-nope")).unwrap_err();
    assert!(
        err.to_string()
            .contains("install the Debian package qemu-system-x86"),
        "{err}"
    );
    let err =
        QemuProcess::spawn(&QemuCommand::new("vm").kernel("/nonexistent/vmlinuz")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vmlinuz"), "{err}");
    let long = format!("/tmp/{}/q.sock", "x".repeat(120));
    let err = QemuProcess::spawn(&QemuCommand::new("vm").qmp(&long)).unwrap_err();
    assert!(matches!(err, QemuError::SocketPathTooLong { .. }), "{err}");
    assert!(err.to_string().contains("shorter run directory"), "{err}");
}

/// Holds on any host (no KVM, KVM that works, KVM that hangs or aborts): a choice is made with a
/// one-line reason, a probe verdict is cached, no probe QEMU is left, and a guest boots under the
/// chosen accelerator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_probe_chooses_an_accelerator_that_boots() {
    let _lock = vm_lock();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    let t = Instant::now();
    let c =
        tokio::task::spawn_blocking(move || accel::decide(None, &cache_dir, Path::new("/dev/kvm")))
            .await
            .unwrap();
    let first = t.elapsed();
    eprintln!(
        "MEASURED accelerator choice: {c} ({:?}) in {:.2}s",
        c.source,
        first.as_secs_f64()
    );
    assert!(accel::is_one_line(&c.reason), "{:?}", c.reason);
    assert!(!c.reason.trim().is_empty());
    assert!(first < Duration::from_secs(15), "choice took {first:?}");
    if !Path::new("/dev/kvm").exists() {
        assert_eq!(
            (c.accel, c.source),
            (Accel::Tcg, ChoiceSource::NoKvm),
            "{c}"
        );
    }
    assert_ne!(c.source, ChoiceSource::Env, "no override was given");
    assert_ne!(
        c.source,
        ChoiceSource::ProbeUnavailable,
        "the probe could not run: {c}"
    );
    if c.source == ChoiceSource::Probe {
        // The verdict is cached per host.
        let t = Instant::now();
        let again = accel::decide(None, cache.path(), Path::new("/dev/kvm"));
        assert_eq!(
            (again.accel, again.source),
            (c.accel, ChoiceSource::Cache),
            "{again:?}"
        );
        assert!(accel::is_one_line(&again.reason), "{:?}", again.reason);
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // No probe QEMU is left behind.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|c| c.contains("kvm-probe"))
        .collect();
    assert!(left.is_empty(), "probe QEMU left: {left:?}");

    // A guest boots under the chosen accelerator.
    let kernel = tokio::task::spawn_blocking(test_kernel)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    TinyInitramfs::new(MARKER)
        .after(AfterMarker::Poweroff)
        .write(&kernel, &initrd)
        .unwrap();
    let cmd = QemuCommand::new("chosen")
        .accel(c.accel)
        .kernel(&kernel.vmlinuz)
        .initrd(&initrd)
        .append(TINY_APPEND)
        .memory_mib(256)
        .cores(1);
    let t = Instant::now();
    let qemu = QemuProcess::spawn(&cmd).unwrap();
    let booted = qemu
        .while_running(qemu.serial().wait_for(
            0,
            MARKER,
            |l| l.contains(MARKER),
            Duration::from_secs(90),
        ))
        .await;
    assert!(
        matches!(booted, Ok(Ok(_))),
        "no guest booted under {}: {booted:?}\n{}",
        c.accel,
        qemu.serial().tail(30)
    );
    assert!(
        qemu.command_line().contains(&format!("-accel {}", c.accel)),
        "{}",
        qemu.command_line()
    );
    eprintln!(
        "MEASURED guest under {} printed its marker {:.2}s after spawn",
        c.accel,
        t.elapsed().as_secs_f64()
    );
}

/// Warm start: migrate a running guest to a file, restore it with `-incoming`, and the guest's
/// shell on ttyS0 carries on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_migrate_to_file_and_restore() {
    let _lock = vm_lock();
    let kernel = tokio::task::spawn_blocking(test_kernel)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    TinyInitramfs::new(MARKER)
        .after(AfterMarker::Shell)
        .write(&kernel, &initrd)
        .unwrap();
    let qmp_path = dir.path().join("qmp.sock");
    let state = dir.path().join("state");
    let cmd = QemuCommand::new("mig")
        .kernel(&kernel.vmlinuz)
        .initrd(&initrd)
        .append(TINY_APPEND)
        .memory_mib(256)
        .qmp(&qmp_path);

    let listener = bind_listener(&qmp_path).unwrap();
    let src = QemuProcess::spawn(&cmd).unwrap();
    let qmp = src
        .while_running_try(Qmp::accept(&listener, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    src.serial()
        .wait_for(0, MARKER, |l| l.contains(MARKER), Duration::from_secs(60))
        .await
        .unwrap();
    src.write_stdin(b"X=before-migration\n").unwrap();
    let t = Instant::now();
    qmp.migrate(&format!("exec:cat > {}", state.display()))
        .await
        .unwrap();
    let info = qmp.wait_migration(Duration::from_secs(60)).await.unwrap();
    assert_eq!(info.status, "completed");
    let t_save = t.elapsed();
    qmp.quit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), src.wait())
        .await
        .unwrap();
    let size = std::fs::metadata(&state).unwrap().len();

    let listener = bind_listener(&qmp_path).unwrap();
    let t = Instant::now();
    let dst = QemuProcess::spawn(
        &cmd.clone()
            .incoming(format!("exec:cat {}", state.display())),
    )
    .unwrap();
    let qmp = dst
        .while_running_try(Qmp::accept(&listener, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = qmp.query_status().await.unwrap();
        if st.running {
            break;
        }
        assert!(Instant::now() < deadline, "restored VM not running: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_restore = t.elapsed();
    dst.write_stdin(b"echo \"$X restored-$((1+1))\"\n").unwrap();
    dst.serial()
        .wait_for(
            0,
            "restored echo",
            |l| l == "before-migration restored-2",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    eprintln!(
        "MEASURED migrate to file {:.2}s ({} MiB), spawn -> restored VM running {:.2}s",
        t_save.as_secs_f64(),
        size >> 20,
        t_restore.as_secs_f64()
    );
}
