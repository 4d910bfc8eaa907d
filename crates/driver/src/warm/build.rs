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

/// How long the builder lets the node's start-up run before it concludes that the boot waits
/// for something only the test's other machines can give (an NFS mount, a peer's service).
pub(crate) const SETTLE_LIMIT_SECS: u32 = 45;

/// The mark the settle command prints when the node's start-up has not finished in time,
/// followed by the units whose jobs still wait.
const UNSETTLED: &str = "MACHINIST-UNSETTLED";

/// What the builder runs on the main shell once the node has booted, before arming. A node
/// still starting after [`SETTLE_LIMIT_SECS`], or with jobs still pending then (an NFS mount
/// pulled in at boot, say: its boot waits on the network, which the builder's isolated NICs
/// never answer), is reported, not saved: a snapshot would
/// freeze that wait, and the restored node would not do what a cold boot next to its peers does.
fn settle_command() -> String {
    format!(
        "timeout {SETTLE_LIMIT_SECS} systemctl is-system-running --wait >/dev/null 2>&1; \
         n=0; while j=$(systemctl list-jobs --no-legend 2>/dev/null | awk '{{print $2}}' | sort -u); \
         [ -n \"$j\" ] && [ $n -lt 10 ]; do sleep 1; n=$((n + 1)); done; \
         if [ -n \"$j\" ] || [ \"$(systemctl is-system-running 2>/dev/null)\" = starting ]; then \
         echo {UNSETTLED} $j; \
         else modprobe -a {} 2>/dev/null; {PREWARM}; sync; fi",
        machinist_guest::units::NFTABLES_MODULES.join(" ")
    )
}

/// Why a snapshot was not built.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// The node's start-up did not finish in isolation: the units still waiting.
    Unsettled(String),
    /// Anything else.
    Failed(String),
}

impl From<String> for BuildError {
    fn from(s: String) -> Self {
        BuildError::Failed(s)
    }
}

/// The units an unsettled node still waits for, from the settle command's output.
fn unsettled_units(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(UNSETTLED))
        .map(|rest| rest.trim().to_string())
}

pub(crate) fn build(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
    tmp: &Path,
    timeouts: &Timeouts,
) -> Result<(), BuildError> {
    // Sockets need a short directory (108-byte limit); the cache path may be long.
    let sock_dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("mn-snap-XXXXXX"))
        .map_err(|e| format!("creating a socket directory in /tmp: {e}"))?;
    let r = (|| -> Result<(), BuildError> {
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
) -> Result<(), BuildError> {
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
        let settled = main
            .execute(
                &settle_command(),
                Some(step_t + Duration::from_secs(SETTLE_LIMIT_SECS.into())),
                &mut ignore,
            )
            .await
            .map_err(|e| format!("waiting for the guest to settle: {e}"))?;
        if let Some(units) = unsettled_units(&settled.stdout) {
            return Err(BuildError::Unsettled(units));
        }
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
        Ok::<(), BuildError>(())
    };
    let r = match p2.while_running(work).await {
        Ok(r) => r,
        Err(e) => Err(BuildError::Failed(format!(
            "QEMU exited: {e}; stderr: {}",
            process.stderr_tail()
        ))),
    };
    if matches!(r, Err(BuildError::Unsettled(_))) {
        process.start_kill();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsettled_node_names_what_it_waits_for() {
        assert_eq!(
            unsettled_units(b"MACHINIST-UNSETTLED data.mount remote-fs.target\n").as_deref(),
            Some("data.mount remote-fs.target")
        );
        assert_eq!(unsettled_units(b"").as_deref(), None);
        // The command checks the state only after a bounded wait, and saves nothing unsettled.
        let cmd = settle_command();
        assert!(cmd.starts_with(&format!(
            "timeout {SETTLE_LIMIT_SECS} systemctl is-system-running --wait"
        )));
        assert!(cmd.find(UNSETTLED) < cmd.find("sync"));
    }

    /// The settle command is valid shell (it runs under the guest's bash).
    #[test]
    fn settle_command_parses() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &settle_command()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
