//! The VM the `vm_backdoor*` tests boot: Debian's cloud kernel with a tiny initramfs holding
//! static busybox, the host's bash (with its libraries) and the backdoor script, re-spawned on exit
//! like the systemd units do (leftovers of the session killed first, as systemd kills the unit's
//! cgroup: a serial port can be open only once). hvc0 is a `virtconsole` (the NixOS-compatible
//! path); vport0p1/vport0p2 are `virtserialport`s (lossless) carrying the main and control shells.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machinist_backdoor::{guest, ConnectOptions, Control, Shell};
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

pub async fn run(shell: &mut Shell, cmd: &str) -> machinist_backdoor::Output {
    shell
        .execute(cmd, Some(Duration::from_secs(60)), &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// A booted VM with its three shells connected; holds the VM lock until dropped.
pub struct Vm {
    /// The QEMU process (its serial log has the commands' stderr).
    pub qemu: QemuProcess,
    /// The shell on hvc0, the NixOS-compatible tty path.
    pub console: Shell,
    /// The main shell on vport0p1, with `control` set.
    pub shell: Shell,
    /// The control shell on vport0p2.
    pub control: Control,
    /// When QEMU was spawned.
    pub t0: Instant,
    /// The directory of the initramfs and sockets, and the VM lock: keep them until the end.
    pub keep: (tempfile::TempDir, VmTestLock),
}

/// Boots the VM (taking the VM lock) and connects its three shells.
pub async fn boot() -> Vm {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let lock = tokio::task::spawn_blocking(VmTestLock::acquire)
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
    let connect = |shell: Result<Shell, _>| match shell {
        Ok(s) => s,
        Err(e) => {
            dump();
            panic!("{e}");
        }
    };
    let console = connect(Shell::connect(hvc0_s, opts.clone()).await);
    let mut shell = connect(Shell::connect(main_s, opts.clone()).await);
    let control = Control::connect(ctl_s, opts.control()).await.unwrap();
    shell.set_control(control.clone());
    println!(
        "backdoor vm: all shells connected {:.2} s after QEMU spawn",
        t0.elapsed().as_secs_f64()
    );
    Vm {
        qemu,
        console,
        shell,
        control,
        t0,
        keep: (dir, lock),
    }
}
