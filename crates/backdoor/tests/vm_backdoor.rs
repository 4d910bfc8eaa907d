//! The real guest script through real QEMU virtio ports (the VM of `common`): the
//! NixOS-compatible console path hvc0 with small outputs (QEMU drops console output when the host
//! reads late), then the main and control shells on vport0p1/vport0p2. Takes the host VM lock.
//! Run with `--nocapture` to see the timings; the bench on the same VM is `vm_backdoor_bench.rs`.

mod common;

use std::time::{Duration, Instant};

use common::run;
use machinist_backdoor::ShellError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_backdoor_over_virtconsole() {
    let common::Vm {
        qemu,
        mut console,
        mut shell,
        control,
        t0,
        keep: _keep,
    } = common::boot().await;
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

    drop(qemu);
}
