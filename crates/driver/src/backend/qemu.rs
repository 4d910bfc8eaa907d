//! The QEMU virtual machine backend: a node's boot spec, its files in the run directory (disk
//! overlay over a pin of the cached image, initrd with the node layer), its QEMU command line,
//! and starting QEMU up to the point where QMP and both backdoor consoles are connected.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use machinist_qemu::{QemuCommand, QemuProcess, Qmp};

use super::{BackendKind, BoxFuture, Instance, ShellTransport, Unsupported};
use crate::ctx::Ctx;
use crate::error::{BoxError, Error, Result};
use crate::timeouts::Wait;
use crate::vlan::VLan;

/// How to boot a machine (everything needed to build its QEMU command line).
#[derive(Debug, Clone)]
pub(crate) struct BootSpec {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
    pub(crate) disk: PathBuf,
    pub(crate) disk_format: String,
    pub(crate) layer_cpio: Vec<u8>,
    /// The accelerator (TCG unless a KVM probe guest booted).
    pub(crate) accel: machinist_qemu::Accel,
    pub(crate) append: String,
    pub(crate) memory_mib: u32,
    pub(crate) cores: u32,
    pub(crate) nics: Vec<NicSpec>,
    pub(crate) user_nic: Option<(String, String)>,
    pub(crate) extra_args: Vec<String>,
}

/// One NIC on a VLAN switch.
#[derive(Debug, Clone)]
pub(crate) struct NicSpec {
    pub(crate) vlan: VLan,
    pub(crate) id: String,
    pub(crate) mac: String,
    pub(crate) port: PathBuf,
}

/// The QEMU command line of a machine (shared by cold boots, restores and the snapshot builder,
/// so that a snapshot's device list matches the machines restored from it).
pub(crate) fn command_for(
    name: &str,
    s: &BootSpec,
    dir: &Path,
    overlay: &Path,
    initrd: &Path,
    allow_reboot: bool,
) -> QemuCommand {
    let mut cmd = QemuCommand::new(name)
        .accel(s.accel)
        .memory_mib(s.memory_mib)
        .cores(s.cores)
        .kernel(&s.kernel)
        .initrd(initrd)
        .append(&s.append)
        .drive(machinist_qemu::Drive::qcow2(overlay))
        .virtserialport("shell", dir.join("shell.sock"))
        .virtserialport("control", dir.join("control.sock"))
        .qmp(dir.join("qmp.sock"))
        .allow_reboot(allow_reboot);
    for n in &s.nics {
        cmd = cmd.nic(machinist_qemu::Nic::stream(&n.id, &n.mac, &n.port));
    }
    if let Some((id, mac)) = &s.user_nic {
        cmd = cmd.nic(machinist_qemu::Nic::user(id, mac, true));
    }
    cmd.args_extra(s.extra_args.iter().cloned())
}

/// One node's QEMU backend: its spec and its directory in the run directory.
#[derive(Debug)]
pub(crate) struct QemuBackend {
    name: String,
    spec: BootSpec,
    dir: PathBuf,
}

/// A started VM and the transport its backdoor shells greet on.
pub(crate) struct Started {
    pub(crate) vm: Arc<QemuVm>,
    pub(crate) transport: ShellTransport,
}

impl QemuBackend {
    pub(crate) fn new(name: &str, spec: BootSpec, dir: PathBuf) -> Self {
        QemuBackend {
            name: name.to_string(),
            spec,
            dir,
        }
    }

    /// What this backend runs nodes on.
    pub(crate) fn kind(&self) -> BackendKind {
        BackendKind::Vm
    }

    pub(crate) fn spec(&self) -> &BootSpec {
        &self.spec
    }

    /// The machine's directory in the run directory (sockets, disk overlay, initrd).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The machine's own disk overlay (exists once it has started).
    pub(crate) fn overlay(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    fn io<T>(&self, what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(format!("{}: {}", self.name, what()), e))
    }

    /// Creates the machine's directory.
    pub(crate) fn make_dir(&self) -> Result<()> {
        self.io(
            || format!("creating {}", self.dir.display()),
            std::fs::create_dir_all(&self.dir),
        )
    }

    /// The machine's pin of its cached disk image (made on first use).
    pub(crate) fn pinned_image(&self) -> Result<PathBuf> {
        machinist_guest::pin_image(&self.spec.disk, &self.dir).map_err(|e| {
            Error::backend(
                Some(&self.name),
                "pinning the disk image into the run directory",
                e,
            )
        })
    }

    /// The disk overlay and the initrd with the node layer (made on first use; a restart after
    /// `crash()` boots from the same overlay, so the guest's writes survive).
    pub(crate) fn prepare_files(&self) -> Result<(PathBuf, PathBuf)> {
        self.make_dir()?;
        let overlay = self.overlay();
        if !overlay.exists() {
            // The overlay's backing file is a pin (hard link) of the cached image in the
            // machine's directory: a rebuilt or pruned cache entry cannot change its bytes, even
            // for a restart after crash().
            let backing = self.pinned_image()?;
            machinist_qemu::overlay::create_qcow2_overlay(
                &backing,
                &self.spec.disk_format,
                &overlay,
            )
            .map_err(|e| Error::backend(Some(&self.name), "creating the disk overlay", e))?;
        }
        let initrd = self.dir.join("initrd");
        if !initrd.exists() {
            let mut base = self.io(
                || format!("reading initrd {}", self.spec.initrd.display()),
                std::fs::read(&self.spec.initrd),
            )?;
            // The kernel unpacks concatenated cpio archives in order; pad to 4 bytes.
            while base.len() % 4 != 0 {
                base.push(0);
            }
            base.extend_from_slice(&self.spec.layer_cpio);
            self.io(
                || format!("writing {}", initrd.display()),
                std::fs::write(&initrd, base),
            )?;
        }
        Ok((overlay, initrd))
    }

    /// The machine's QEMU command line.
    pub(crate) fn command(&self, overlay: &Path, initrd: &Path, allow_reboot: bool) -> QemuCommand {
        command_for(
            &self.name,
            &self.spec,
            &self.dir,
            overlay,
            initrd,
            allow_reboot,
        )
    }

    /// Boots the machine from its kernel (a cold boot).
    pub(crate) fn start_cold(&self, ctx: &Ctx, allow_reboot: bool) -> Result<Started> {
        let (overlay, initrd) = self.prepare_files()?;
        let cmd = self.command(&overlay, &initrd, allow_reboot);
        self.spawn(ctx, &cmd)
    }

    /// Starts QEMU with `cmd` and connects QMP and both backdoor consoles.
    pub(crate) fn spawn(&self, ctx: &Ctx, cmd: &QemuCommand) -> Result<Started> {
        let _g = ctx.handle.enter();
        let bind = |p: PathBuf| {
            let _ = std::fs::remove_file(&p);
            machinist_qemu::socket::bind_listener(&p).map_err(|e| {
                Error::backend(Some(&self.name), format!("binding {}", p.display()), e)
            })
        };
        let shell_l = bind(self.dir.join("shell.sock"))?;
        let control_l = bind(self.dir.join("control.sock"))?;
        let qmp_l = bind(self.dir.join("qmp.sock"))?;
        let process = Arc::new(
            QemuProcess::spawn(cmd)
                .map_err(|e| Error::backend(Some(&self.name), "starting QEMU", e))?,
        );
        crate::orphans::install();
        let accept_timeout = ctx.timeouts.of(Wait::QemuConnect);
        let name = self.name.clone();
        let p2 = process.clone();
        let r = ctx.block_on(false, async move {
            let connect = async {
                let qmp = Qmp::accept(&qmp_l, accept_timeout)
                    .await
                    .map_err(|e| Error::backend(Some(&name), "connecting QMP", e))?;
                let main = machinist_qemu::socket::accept_within(
                    &shell_l,
                    accept_timeout,
                    &name,
                    "the shell console",
                )
                .await
                .map_err(|e| Error::backend(Some(&name), "accepting the shell console", e))?;
                let control = machinist_qemu::socket::accept_within(
                    &control_l,
                    accept_timeout,
                    &name,
                    "the control console",
                )
                .await
                .map_err(|e| Error::backend(Some(&name), "accepting the control console", e))?;
                Ok::<_, Error>((qmp, main, control))
            };
            match p2.while_running(connect).await {
                Ok(r) => r,
                Err(e) => Err(Error::backend(Some(&name), "starting QEMU", e)),
            }
        });
        let (qmp, main, control) = match r {
            Ok(v) => v,
            Err(e) => {
                process.start_kill();
                return Err(e);
            }
        };
        Ok(Started {
            vm: Arc::new(QemuVm { process, qmp }),
            transport: ShellTransport { main, control },
        })
    }
}

/// A running QEMU process and its QMP connection.
pub(crate) struct QemuVm {
    process: Arc<QemuProcess>,
    qmp: Qmp,
}

impl QemuVm {
    /// The QEMU process.
    pub(crate) fn process(&self) -> &QemuProcess {
        &self.process
    }

    /// The QMP connection (warm start drives the restore through it).
    pub(crate) fn monitor(&self) -> &Qmp {
        &self.qmp
    }
}

impl Instance for QemuVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn exit_status(&self) -> Option<String> {
        self.process
            .try_wait()
            .map(|s| machinist_qemu::describe_status(&s))
    }

    fn diagnostics_tail(&self) -> String {
        self.process.stderr_tail()
    }

    fn console(&self) -> &machinist_qemu::SerialLog {
        self.process.serial()
    }

    fn write_console(&self, bytes: &[u8]) -> std::result::Result<(), BoxError> {
        self.process.write_stdin(bytes).map_err(Into::into)
    }

    fn start_kill(&self) {
        self.process.start_kill();
    }

    fn kill_and_wait(&self, grace: Duration) {
        self.process.start_kill();
        let _ = self.process.wait_timeout_blocking(grace);
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.process.wait().await;
        })
    }

    fn power_off_now(&self) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move { self.qmp.quit().await.map_err(Into::into) })
    }

    fn set_link<'a>(
        &'a self,
        nic_id: &'a str,
        up: bool,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move { self.qmp.set_link(nic_id, up).await.map_err(Into::into) })
    }

    fn qmp(&self) -> std::result::Result<&Qmp, Unsupported> {
        Ok(&self.qmp)
    }
}
