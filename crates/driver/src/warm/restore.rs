//! Restoring a machine from a snapshot: its own copy of the frozen disk (pointed at the
//! machine's pin of the image), a fresh overlay, QEMU started with `-incoming`, and the VM
//! continued once the state is loaded.

use std::sync::Arc;

use super::cache::Snapshot;
use super::identity::PendingIdentity;
use crate::backend::qemu::{QemuBackend, Started};
use crate::backend::Instance as _;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::timeouts::{Pace, Wait};

/// Removes a machine's disks after a failed restore (the next try starts from nothing).
pub(crate) fn remove_disks(backend: &QemuBackend) {
    let _ = std::fs::remove_file(backend.overlay());
    let _ = std::fs::remove_file(backend.dir().join("snapshot-disk.qcow2"));
}

/// Restores `snap` as the machine of `backend`; returns the running VM and the identity it
/// still has to be given.
pub(crate) fn restore(
    ctx: &Ctx,
    backend: &QemuBackend,
    snap: &Snapshot,
    allow_reboot: bool,
    name: &str,
) -> Result<(Started, PendingIdentity)> {
    backend.make_dir()?;
    let io = |what: String, e: std::io::Error| Error::io(format!("{name}: {what}"), e);
    // The machine's own copy of the frozen disk (small: the guest's writes up to the
    // snapshot), pointed at the machine's pin of the image it was taken on (the snapshot key
    // holds that image's content id): a later cold boot (after crash()) needs both even if
    // the snapshot or the cache entry is discarded or rebuilt meanwhile.
    let base = backend.dir().join("snapshot-disk.qcow2");
    let _ = std::fs::remove_file(&base);
    std::fs::copy(&snap.disk, &base)
        .map_err(|e| io(format!("copying {}", snap.disk.display()), e))?;
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| io(format!("making {} writable", base.display()), e))?;
    let pinned = backend.pinned_image()?;
    machinist_qemu::overlay::repoint_backing(&base, &pinned, &backend.spec().disk_format).map_err(
        |e| {
            Error::backend(
                Some(name),
                "pointing the snapshot disk at the pinned image",
                e,
            )
        },
    )?;
    machinist_qemu::overlay::create_qcow2_overlay(&base, "qcow2", &backend.overlay())
        .map_err(|e| Error::backend(Some(name), "creating the disk overlay", e))?;
    let (overlay, initrd) = backend.prepare_files()?;
    let cmd = backend
        .command(&overlay, &initrd, allow_reboot)
        .incoming(format!(
            "exec:cat {}",
            machinist_guest::shell_quote(&snap.state.to_string_lossy())
        ));
    let pending = PendingIdentity::new(&snap.key);
    let started = backend.spawn(ctx, &cmd)?;
    let vm = started.vm.clone();
    if let Err(e) = run_when_loaded(ctx, vm.clone(), name) {
        vm.kill_and_wait(ctx.timeouts.of(Wait::KillGrace));
        return Err(e);
    }
    Ok((started, pending))
}

/// Waits for the incoming state to load, then continues the (paused) VM.
fn run_when_loaded(ctx: &Ctx, vm: Arc<crate::backend::qemu::QemuVm>, name: &str) -> Result<()> {
    let t = ctx.timeouts.of(Wait::RestoreLoad);
    let name = name.to_string();
    ctx.block_on(false, async move {
        let deadline = tokio::time::Instant::now() + t;
        let qmp = vm.monitor();
        let poll = async {
            loop {
                match qmp.query_status().await {
                    Ok(s) if s.status == "running" => return Ok(()),
                    Ok(s) if s.status == "paused" || s.status == "postmigrate" => {
                        qmp.cont()
                            .await
                            .map_err(|e| Error::backend(Some(&name), "cont", e))?;
                    }
                    Ok(s) if s.status == "inmigrate" || s.status == "prelaunch" => {}
                    Ok(s) => {
                        return Err(Error::backend(
                            Some(&name),
                            "restoring",
                            format!("the VM is `{}` after loading the state", s.status),
                        ))
                    }
                    Err(e) => return Err(Error::backend(Some(&name), "query-status", e)),
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::backend(
                        Some(&name),
                        "restoring",
                        format!("still loading the state after {} s", t.as_secs()),
                    ));
                }
                tokio::time::sleep(Pace::RestorePoll.get()).await;
            }
        };
        match vm.process().while_running(poll).await {
            Ok(r) => r,
            Err(e) => Err(Error::backend(
                Some(&name),
                "restoring",
                format!("QEMU exited: {e}: {}", vm.process().stderr_tail().trim()),
            )),
        }
    })
}
