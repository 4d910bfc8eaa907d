//! Building a node snapshot: boot the node cold once, exactly as a test boots it (its kernel
//! command line, its layer in the initrd, its MACs; its NICs on ports that accept and hold, so
//! no frame leaves), let it settle, arm both backdoor shells and save the paused VM with a
//! migration to a file.
//!
//! The snapshot is taken after `systemctl is-system-running --wait` (so the node's first-boot
//! scripts and services have run), the firewall modules loaded and `sync`; it is paused
//! (`stop`) and migrated in one pass (restores are `cont`inued). Before migrating, both backdoor
//! shells are *armed*: they block in `read` on their console, so that after a restore the
//! host's first write wakes them. The main shell is armed inside the wake-up program of
//! [`super::identity`] (already loaded when the snapshot is saved), which reads the restore's
//! clock and entropy and applies them with system calls; only then does the shell greet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use machinist_backdoor::{ConnectOptions, Shell};
use machinist_qemu::{QemuCommand, QemuProcess, Qmp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cache::builder_command;
use super::identity::STATUS_VAR;
use crate::backend::qemu::BootSpec;
use crate::timeouts::{Timeouts, Wait};

/// Runs, once before the snapshot is saved, the programs the driver's commands and a test's
/// first commands usually run, so that their pages are in the saved page cache: under TCG a
/// program's first run after a restore costs up to a second of disk reads (perl: 1.14 s cold,
/// 0.14 s cached).
const PREWARM: &str = "(timeout 5 true; systemctl --version; journalctl --version; sleep 0; \
     cat /dev/null; ip -V; ss -V; ping -V; nc -h; curl --version; date; sh -c :) >/dev/null 2>&1 || true";

/// What the armed shells print before blocking.
const ARMED: &str = "MACHINIST-ARMED";

/// The line that arms a backdoor shell on `device` (see the module docs). The main shell
/// (`with_payload`) runs the wake-up program ([`super::identity::wake_program`]), which prints
/// the armed line itself once loaded, so the snapshot holds it already running; the control
/// shell waits for one byte (a builtin `read`: no process). Neither reads more than its input:
/// perl uses `sysread` of exact lengths and bash reads a non-seekable input byte by byte. After
/// the wake-up the same bash greets and goes on reading commands.
pub(crate) fn arm_line(device: &str, with_payload: bool) -> String {
    let greet = machinist_backdoor::guest::GREETING;
    let wait = if with_payload {
        format!(
            "perl -e '{}' 2>/dev/ttyS0; {STATUS_VAR}=$?; ",
            super::identity::wake_program(ARMED)
        )
    } else {
        format!("echo {ARMED}; read -r -N 1 _; ")
    };
    format!(
        "kill \"$__m_rp\" 2>/dev/null; exec 3>&-; {wait}echo 'machinist backdoor: connecting to host on /dev/{device}... (restored)' >&2; echo '{greet}'\n"
    )
}

/// Everything the builder sends to the guest's shells before saving (the settle command and
/// both arm lines): part of the snapshot key, so that changing them makes new snapshots.
pub(crate) fn guest_side() -> String {
    [
        settle_command(),
        arm_line(machinist_backdoor::guest::CONTROL_DEVICE, false),
        arm_line(machinist_backdoor::guest::MAIN_DEVICE, true),
    ]
    .join("\n")
}

/// What the builder runs on the main shell once the node has booted, before arming.
fn settle_command() -> String {
    format!(
        "systemctl is-system-running --wait >/dev/null 2>&1; modprobe -a {} 2>/dev/null; {PREWARM}; sync",
        machinist_guest::units::NFTABLES_MODULES.join(" ")
    )
}

pub(crate) fn build(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
    tmp: &Path,
    timeouts: &Timeouts,
) -> Result<(), String> {
    // Sockets need a short directory (108-byte limit); the cache path may be long.
    let sock_dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("mn-snap-XXXXXX"))
        .map_err(|e| format!("creating a socket directory in /tmp: {e}"))?;
    let r = (|| {
        let disk = sock_dir.join("disk.qcow2");
        machinist_qemu::overlay::create_qcow2_overlay(&spec.disk, &spec.disk_format, &disk)
            .map_err(|e| format!("creating the disk overlay: {e}"))?;
        write_initrd(spec, &sock_dir.join("initrd"))?;
        let cmd = builder_command(spec, &sock_dir);
        let state = tmp.join("state");
        handle.block_on(build_async(
            cmd,
            spec.nics.len(),
            &sock_dir,
            &state,
            timeouts,
        ))?;
        // The disk moves next to the state (same filesystem as the cache: copy if not).
        if std::fs::rename(&disk, tmp.join("disk.qcow2")).is_err() {
            std::fs::copy(&disk, tmp.join("disk.qcow2"))
                .map_err(|e| format!("copying the frozen disk: {e}"))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&sock_dir);
    r
}

/// The node's initrd: the image's, then its layer (the kernel unpacks concatenated cpio
/// archives in order; padded to 4 bytes).
fn write_initrd(spec: &BootSpec, path: &Path) -> Result<(), String> {
    let mut bytes = std::fs::read(&spec.initrd)
        .map_err(|e| format!("reading the initrd {}: {e}", spec.initrd.display()))?;
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    bytes.extend_from_slice(&spec.layer_cpio);
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

async fn build_async(
    cmd: QemuCommand,
    nports: usize,
    dir: &Path,
    state: &Path,
    timeouts: &Timeouts,
) -> Result<(), String> {
    let boot_t = timeouts.of(Wait::SnapshotBoot);
    let step_t = timeouts.of(Wait::SnapshotStep);
    let bind = |p: PathBuf| {
        machinist_qemu::socket::bind_listener(&p)
            .map_err(|e| format!("binding {}: {e}", p.display()))
    };
    let shell_l = bind(dir.join("shell.sock"))?;
    let control_l = bind(dir.join("control.sock"))?;
    let qmp_l = bind(dir.join("qmp.sock"))?;
    // The NIC ports: accept and hold (frames the node sends go nowhere).
    let mut port_tasks = Vec::new();
    for i in 0..nports {
        let l = bind(dir.join(format!("port{i}")))?;
        port_tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }));
    }
    let process = Arc::new(QemuProcess::spawn(&cmd).map_err(|e| format!("starting QEMU: {e}"))?);
    crate::orphans::install();
    let p2 = process.clone();
    let work = async {
        let t = timeouts.of(Wait::QemuConnect);
        let qmp = Qmp::accept(&qmp_l, t)
            .await
            .map_err(|e| format!("QMP: {e}"))?;
        let main =
            machinist_qemu::socket::accept_within(&shell_l, t, "snapshot", "the shell console")
                .await
                .map_err(|e| e.to_string())?;
        let control =
            machinist_qemu::socket::accept_within(&control_l, t, "snapshot", "the control console")
                .await
                .map_err(|e| e.to_string())?;
        let mut opts = ConnectOptions::new("snapshot");
        opts.timeout = boot_t;
        let mut copts = ConnectOptions::new("snapshot/control");
        copts.device = machinist_backdoor::guest::CONTROL_DEVICE.to_string();
        copts.timeout = boot_t;
        let (main, control) =
            tokio::join!(Shell::connect(main, opts), Shell::connect(control, copts));
        let mut main = main.map_err(|e| format!("backdoor: {e}"))?;
        let control = control.map_err(|e| format!("control backdoor: {e}"))?;
        let mut ignore = |_: &[u8]| {};
        main.execute(&settle_command(), Some(step_t), &mut ignore)
            .await
            .map_err(|e| format!("waiting for the guest to settle: {e}"))?;
        arm(
            control.into_stream(),
            machinist_backdoor::guest::CONTROL_DEVICE,
            false,
            step_t,
        )
        .await?;
        let main_stream = arm(
            main.into_stream(),
            machinist_backdoor::guest::MAIN_DEVICE,
            true,
            step_t,
        )
        .await?;
        let uri = format!(
            "exec:cat > {}",
            machinist_guest::shell_quote(&state.to_string_lossy())
        );
        // Paused first: a live migration of a running MTTCG guest produced an inconsistent
        // image once (kernel oops in the restored guest); a stopped VM is copied in one pass.
        // The restored VM therefore comes up paused and gets a `cont`.
        qmp.stop().await.map_err(|e| format!("stop: {e}"))?;
        qmp.migrate(&uri)
            .await
            .map_err(|e| format!("migrate: {e}"))?;
        qmp.wait_migration(step_t)
            .await
            .map_err(|e| format!("migration to {}: {e}", state.display()))?;
        let _ = qmp.quit().await;
        drop(main_stream);
        Ok::<(), String>(())
    };
    let r = match p2.while_running(work).await {
        Ok(r) => r,
        Err(e) => Err(format!(
            "QEMU exited: {e}; stderr: {}",
            process.stderr_tail()
        )),
    };
    if tokio::time::timeout(timeouts.of(Wait::SnapshotQuit), process.wait())
        .await
        .is_err()
    {
        process.start_kill();
        let _ = process.wait().await;
    }
    for t in port_tasks {
        t.abort();
    }
    r
}

async fn arm(
    mut s: Box<dyn machinist_backdoor::ShellStream>,
    device: &str,
    payload: bool,
    t: Duration,
) -> Result<Box<dyn machinist_backdoor::ShellStream>, String> {
    s.write_all(arm_line(device, payload).as_bytes())
        .await
        .map_err(|e| format!("arming the shell on {device}: {e}"))?;
    let mut seen = Vec::new();
    let r = tokio::time::timeout(t, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("console closed"));
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(ARMED.len()).any(|w| w == ARMED.as_bytes()) {
                return Ok(());
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(format!("arming the shell on {device}: {e}")),
        Err(_) => Err(format!(
            "the shell on {device} did not confirm arming within {} s (saw {:?})",
            t.as_secs(),
            String::from_utf8_lossy(&seen)
        )),
    }
}
