//! The real guest script through real QEMU virtio ports: Debian's cloud kernel with a tiny
//! initramfs holding static busybox, the host's bash (with its libraries) and the backdoor script,
//! re-spawned on exit like the systemd units do (leftovers of the session killed first, as
//! systemd kills the unit's cgroup: a serial port can be open only once). hvc0 is a `virtconsole` (the NixOS-compatible
//! path, checked with small outputs: QEMU drops console output when the host reads late);
//! vport0p1/vport0p2 are `virtserialport`s (lossless) carrying the main and control shells.
//! Takes the host VM lock. Run with `--nocapture` to see the timings and the bench lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machinist_backdoor::bench::{self, BenchOptions};
use machinist_backdoor::{guest, ConnectOptions, Control, Shell, ShellError};
use machinist_qemu::cpio::NewcWriter;
use machinist_qemu::kernel::{test_kernel, TestKernel, TINY_APPEND, VIRTIO_CONSOLE_MODULES};
use machinist_qemu::socket::{accept_within, bind_listener};
use machinist_qemu::{QemuCommand, QemuProcess, VmTestLock};

/// The host's bash and the shared libraries it loads (`ldd`).
fn bash_and_libs() -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg("/bin/bash")
        .output()
        .expect("ldd");
    let mut files = vec![PathBuf::from("/bin/bash")];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    files
}

fn initramfs(kernel: &TestKernel, path: &Path) {
    let mods = kernel.modules_with_deps(VIRTIO_CONSOLE_MODULES).unwrap();
    let names: Vec<String> = mods.iter().map(|(n, _)| n.clone()).collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t devtmpfs dev /dev\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         for m in {mods}; do insmod /lib/modules/$m.ko; done\n\
         for d in hvc0 vport0p1 vport0p2; do (while :; do setsid /bin/bash {script} $d & p=$!; wait $p; kill -9 -$p 2>/dev/null; sleep 0.1; done) & done\n\
         echo INIT-READY >/dev/ttyS0\n\
         while :; do sleep 3600; done\n",
        mods = names.join(" "),
        script = guest::SCRIPT_PATH,
    );
    let mut w = NewcWriter::new(Vec::new());
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "etc",
        "lib/modules",
        "usr/lib/machinist",
    ] {
        w.dir_all(d).unwrap();
    }
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.file_from("bin/busybox", 0o755, Path::new("/bin/busybox"))
        .unwrap();
    for f in bash_and_libs() {
        let inside = f.to_str().unwrap().trim_start_matches('/').to_owned();
        if let Some(parent) = Path::new(&inside)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            w.dir_all(parent.to_str().unwrap()).unwrap();
        }
        w.file_from(&inside, 0o755, &f).unwrap();
    }
    for (name, p) in &mods {
        w.file_from(&format!("lib/modules/{name}.ko"), 0o644, p)
            .unwrap();
    }
    for f in guest::files()
        .iter()
        .filter(|f| f.path == guest::SCRIPT_PATH)
    {
        w.file(
            f.path.trim_start_matches('/'),
            f.mode,
            f.contents.as_bytes(),
        )
        .unwrap();
    }
    w.file("etc/hostname", 0o644, b"vm\n").unwrap();
    w.file("etc/os-release", 0o644, b"ID=machinist-test\n")
        .unwrap();
    w.file("init", 0o755, init.as_bytes()).unwrap();
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

async fn run(shell: &mut Shell, cmd: &str) -> machinist_backdoor::Output {
    shell
        .execute(cmd, Some(Duration::from_secs(60)), &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_backdoor_over_virtconsole() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let _lock = tokio::task::spawn_blocking(VmTestLock::acquire)
        .await
        .unwrap()
        .unwrap();
    let kernel = tokio::task::spawn_blocking(test_kernel)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    initramfs(&kernel, &initrd);
    let hvc0_path = dir.path().join("hvc0.sock");
    let (main_path, ctl_path) = (dir.path().join("p1.sock"), dir.path().join("p2.sock"));
    let hvc0_l = bind_listener(&hvc0_path).unwrap();
    let main_l = bind_listener(&main_path).unwrap();
    let ctl_l = bind_listener(&ctl_path).unwrap();
    let port = |id: &str, path: &Path, nr: u32| {
        [
            "-chardev".to_string(),
            format!("socket,id={id},path={}", path.display()),
            "-device".to_string(),
            format!("virtserialport,chardev={id},nr={nr}"),
        ]
    };
    let cmd = QemuCommand::new("backdoor-vm")
        .kernel(&kernel.vmlinuz)
        .initrd(&initrd)
        .append(TINY_APPEND)
        .memory_mib(512)
        .virtconsole("console", &hvc0_path)
        .args_extra(port("main", &main_path, 1))
        .args_extra(port("control", &ctl_path, 2));
    let t0 = Instant::now();
    let qemu = QemuProcess::spawn(&cmd).unwrap();
    let mut accepted = Vec::new();
    for (l, what) in [
        (&hvc0_l, "hvc0"),
        (&main_l, "vport0p1"),
        (&ctl_l, "vport0p2"),
    ] {
        accepted.push(
            qemu.while_running(accept_within(l, Duration::from_secs(30), "vm", what))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let ctl_s = accepted.pop().unwrap();
    let main_s = accepted.pop().unwrap();
    let hvc0_s = accepted.pop().unwrap();
    let opts = ConnectOptions::new("vm").timeout(Duration::from_secs(40));
    let serial = qemu.serial().clone();
    let dump = move || {
        for l in serial.lines() {
            eprintln!("vm # {l}");
        }
    };
    // The NixOS-compatible console path (a tty in raw mode): small outputs.
    let mut console = match Shell::connect(hvc0_s, opts.clone()).await {
        Ok(s) => s,
        Err(e) => {
            dump();
            panic!("{e}");
        }
    };
    let fmt: String = (0..=255u8).map(|b| format!("\\x{b:02x}")).collect();
    assert_eq!(
        run(&mut console, &format!("printf '{fmt}'")).await.stdout,
        (0..=255u8).collect::<Vec<_>>()
    );
    let out = run(
        &mut console,
        "[ -t 0 ] || echo stdin-not-tty; [ -p /proc/self/fd/1 ] && echo pipe; exit 4",
    )
    .await;
    assert_eq!(
        (out.code, out.stdout_lossy().as_str()),
        (4, "stdin-not-tty\npipe\n")
    );
    let mut shell = match Shell::connect(main_s, opts.clone()).await {
        Ok(s) => s,
        Err(e) => {
            dump();
            panic!("{e}");
        }
    };
    let control = Control::connect(ctl_s, opts.control()).await.unwrap();
    shell.set_control(control.clone());
    println!(
        "backdoor vm: both shells connected {:.2} s after QEMU spawn",
        t0.elapsed().as_secs_f64()
    );

    let step = |s: &str| {
        eprintln!(
            "backdoor vm: step {s} at {:.2} s",
            t0.elapsed().as_secs_f64()
        )
    };
    step("env");
    // Environment as NixOS: /tmp, stdout a pipe, stderr on the serial port, stdin empty.
    let out = run(
        &mut shell,
        "pwd; [ -p /proc/self/fd/1 ] && echo pipe; echo to-serial >&2; cat; echo end",
    )
    .await;
    assert_eq!(out.stdout_lossy(), "/tmp\npipe\nend\n");
    step("bytes");
    // All bytes through the raw console.
    let fmt: String = (0..=255u8).map(|b| format!("\\x{b:02x}")).collect();
    assert_eq!(
        run(&mut shell, &format!("printf '{fmt}'")).await.stdout,
        (0..=255u8).collect::<Vec<_>>()
    );
    for code in [0, 1, 124, 255] {
        assert_eq!(run(&mut shell, &format!("exit {code}")).await.code, code);
    }
    assert_eq!(run(&mut shell, "cd /; x=1; set +e; exit 3").await.code, 3);
    assert_eq!(
        run(&mut shell, "pwd; echo ${x:-unset}; false; echo no")
            .await
            .stdout_lossy(),
        "/tmp\nunset\n"
    );
    step("10mib");
    // 10 MiB through the serial port, every byte.
    let out = run(&mut shell, "head -c 10485760 /dev/zero | tr '\\0' x").await;
    assert_eq!(out.stdout.len(), 10 << 20);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
    step("holder");
    // Background holder.
    let t = Instant::now();
    let e = shell
        .execute("sleep 100 &", Some(Duration::from_secs(30)), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ShellError::BackgroundHolder { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    step("timeout");
    // Timeout kills through hvc1, the main shell stays in step.
    let t = Instant::now();
    let e = shell
        .execute("sleep 100 | cat", Some(Duration::from_secs(1)), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ShellError::Timeout { .. }), "{e}");
    println!(
        "backdoor vm: timeout of 1 s returned after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(t.elapsed() < Duration::from_secs(6));
    assert_eq!(
        run(&mut shell, "echo alive").await.stdout_lossy(),
        "alive\n"
    );
    step("cancel");
    // Cancel through the control shell.
    let c = shell.canceller();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.cancel();
    });
    let t = Instant::now();
    let e = shell
        .execute("sleep 100", None, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ShellError::Cancelled { .. }), "{e}");
    println!(
        "backdoor vm: cancel returned {:.2} s after the request",
        t.elapsed().as_secs_f64() - 0.5
    );
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert!(control.is_alive(shell.guest_pid()).await.unwrap());
    step("respawn");
    // The shell re-spawns after dying; reconnect picks up the new greeting.
    let e = shell
        .execute("kill -9 $$", Some(Duration::from_secs(30)), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ShellError::Respawned { .. }), "{e}");
    shell.reconnect().await.unwrap();
    assert_eq!(
        run(&mut shell, "echo reborn").await.stdout_lossy(),
        "reborn\n"
    );

    step("serial");
    // Serial log got the command's stderr.
    assert!(
        qemu.serial()
            .lines()
            .iter()
            .any(|l| l.contains("to-serial")),
        "stderr not on ttyS0"
    );

    step("bench");
    // Bench through the real console (small counts; the full run is `cargo xtask bench backdoor`).
    let opts = BenchOptions {
        iterations: 30,
        mixed_rounds: 5,
        throughput_mib: 50,
        throughput_runs: 2,
        process_count_runs: 10,
        mixed: vec![
            "test -e /etc/hostname".into(),
            "cat /etc/os-release".into(),
            "ls /".into(),
        ],
        name: "backdoor-vm-tiny".into(),
    };
    bench::run(&mut shell, &opts).await.unwrap();
    // Latency only on the console (NixOS's path; its throughput is lossy under load).
    let opts = BenchOptions {
        throughput_runs: 0,
        name: "backdoor-vm-tiny-hvc0".into(),
        ..opts
    };
    bench::run(&mut console, &opts).await.unwrap();
    drop(qemu);
}
