//! A minimal single-machine boot helper for this crate's VM tests and the boot benchmark.
//!
//! It boots an [`Image`] with a [`NodeLayer`] appended to the initrd, on a per-VM qcow2 overlay,
//! listens on the two backdoor ports (QEMU connects), connects the backdoor's main and control
//! shells ([`machinist_backdoor::Shell`]) and runs commands through them, blocking. The driver
//! crate has the full machine API; this exists so the guest crate can test what it builds without
//! depending on the driver.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use machinist_backdoor::{ConnectOptions, Control, Shell, ShellError};
use machinist_qemu::{Drive, Nic, QemuCommand, QemuProcess};
use tokio::net::{UnixListener, UnixStream};

use crate::error::GuestError;
use crate::image::Image;
use crate::layer::NodeLayer;

/// How to boot one test VM.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Machine name.
    pub name: String,
    /// Run directory (overlay, sockets, initrd); must exist.
    pub dir: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Use this initrd instead of the image's tiny one (e.g. Debian's, for the baseline).
    pub base_initrd: Option<PathBuf>,
    /// NICs.
    pub nics: Vec<Nic>,
    /// vCPUs.
    pub cores: u32,
    /// Memory.
    pub memory_mib: u32,
    /// Extra QEMU args.
    pub extra_args: Vec<String>,
    /// Deadline for the greeting.
    pub boot_timeout: Duration,
}

impl BootSpec {
    /// Defaults: our kernel command line, 2 cores, 1024 MiB, no NIC, 120 s boot deadline.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        BootSpec {
            name: name.into(),
            dir: dir.into(),
            append: crate::KERNEL_CMDLINE.into(),
            base_initrd: None,
            nics: Vec::new(),
            cores: crate::DEFAULT_CORES,
            memory_mib: crate::DEFAULT_MEMORY_MIB,
            extra_args: Vec::new(),
            boot_timeout: Duration::from_secs(120),
        }
    }
}

/// A booted test VM. Dropping it kills QEMU.
pub struct TestVm {
    /// The QEMU process (serial log, kill on drop).
    pub qemu: QemuProcess,
    /// The main shell, with the control shell attached (it kills a command at its timeout).
    shell: Shell,
    /// Time from spawn to the connected main shell (greeting and helper preamble).
    pub greeting_after: Duration,
    /// Drives the shells' sockets (dropped last: the shell's sockets are registered with it).
    runtime: tokio::runtime::Runtime,
}

/// Accepts QEMU's connection to `what` by `deadline`; fails at once if QEMU exits first.
async fn accept_by(
    listener: &UnixListener,
    deadline: Instant,
    what: &str,
    qemu: &QemuProcess,
) -> Result<UnixStream, GuestError> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), listener.accept()) => match r {
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(e)) => Err(GuestError::io("accept", what, e)),
            Err(_) => Err(GuestError::Timeout {
                what: format!("{}: QEMU connecting to {what}", qemu.name()),
                seconds: 0.0,
            }),
        },
        status = qemu.wait() => Err(GuestError::BuildStep {
            image: qemu.name().into(),
            step: "qemu".into(),
            status: status.to_string(),
            output: qemu.stderr_tail(),
        }),
    }
}

/// `command` for the backdoor, which runs each command in its own subshell with
/// `set -euo pipefail` and stderr on the serial console: as a plain bash would (no `-e`, `-u`
/// or `pipefail`), with stderr merged into the output.
fn plain(command: &str) -> String {
    format!("set +euo pipefail\nexec 2>&1\n{command}")
}

impl TestVm {
    /// Boot `image` with `layer` appended to its initrd; returns once the backdoor shells are
    /// connected.
    pub fn boot(
        image: &Image,
        layer: Option<&NodeLayer>,
        spec: &BootSpec,
    ) -> Result<TestVm, GuestError> {
        let dir = &spec.dir;
        let overlay = dir.join(format!("{}.qcow2", spec.name));
        let _ = std::fs::remove_file(&overlay);
        image.create_pinned_overlay(dir, &overlay)?;
        let base_initrd = spec
            .base_initrd
            .clone()
            .unwrap_or_else(|| image.initrd.clone());
        let initrd = dir.join(format!("{}-initrd.img", spec.name));
        match layer {
            Some(l) => image.write_initrd_with(&base_initrd, l, &initrd)?,
            None => {
                std::fs::copy(&base_initrd, &initrd)
                    .map_err(|e| GuestError::io("copying", &base_initrd, e))?;
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| GuestError::io("starting the I/O runtime of", &spec.name, e))?;
        let sock = |n: &str| dir.join(format!("{}-{n}.sock", spec.name));
        let (p0, p1) = (sock("hvc0"), sock("hvc1"));
        let (l0, l1) = {
            let _in_runtime = runtime.enter();
            let bind = |p: &PathBuf| {
                let _ = std::fs::remove_file(p);
                UnixListener::bind(p).map_err(|e| GuestError::io("binding", p, e))
            };
            (bind(&p0)?, bind(&p1)?)
        };
        let mut cmd = QemuCommand::new(&spec.name)
            .cores(spec.cores)
            .memory_mib(spec.memory_mib)
            .kernel(&image.kernel)
            .initrd(&initrd)
            .append(&spec.append)
            .drive(Drive::qcow2(&overlay))
            .virtserialport("shell", &p0)
            .virtserialport("control", &p1)
            .args_extra(spec.extra_args.iter().cloned());
        for n in &spec.nics {
            cmd = cmd.nic(n.clone());
        }
        let start = Instant::now();
        let qemu = QemuProcess::spawn(&cmd).map_err(|e| GuestError::BuildStep {
            image: spec.name.clone(),
            step: "spawn qemu".into(),
            status: "error".into(),
            output: e.to_string(),
        })?;
        let deadline = start + spec.boot_timeout;
        let connected = runtime.block_on(async {
            let main = accept_by(&l0, deadline, "hvc0", &qemu).await?;
            let control = accept_by(&l1, deadline, "hvc1", &qemu).await?;
            let opts = ConnectOptions::new(&spec.name)
                .timeout(deadline.saturating_duration_since(Instant::now()));
            let main = async {
                let shell = Shell::connect(main, opts.clone()).await;
                (shell, start.elapsed())
            };
            let ((shell, greeting_after), control) =
                tokio::join!(main, Control::connect(control, opts.control()));
            Ok::<_, GuestError>(
                shell
                    .and_then(|s| Ok((s, control?)))
                    .map(|(s, c)| (s, c, greeting_after)),
            )
        })?;
        let (mut shell, control, greeting_after) =
            connected.map_err(|e: ShellError| GuestError::BuildStep {
                image: spec.name.clone(),
                step: "connecting to the backdoor shell".into(),
                status: e.to_string(),
                output: qemu.serial().tail(30),
            })?;
        shell.set_control(control);
        Ok(TestVm {
            qemu,
            shell,
            greeting_after,
            runtime,
        })
    }

    /// Run `command` as root in the guest (bash, stdin /dev/null, stderr merged into the output,
    /// no `set -e`); returns (exit code, output). At `timeout` the command is killed and
    /// [`GuestError::Shell`] reports the timeout.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), GuestError> {
        let out = self.runtime.block_on(self.shell.execute(
            &plain(command),
            Some(timeout),
            &mut |_| {},
        ))?;
        Ok((out.code, out.stdout_lossy()))
    }

    /// Like [`TestVm::run`] but fails unless the exit code is 0.
    pub fn succeed(&mut self, command: &str) -> Result<String, GuestError> {
        let (code, out) = self.run(command, Duration::from_secs(60))?;
        if code != 0 {
            return Err(GuestError::BuildStep {
                image: self.qemu.name().into(),
                step: command.into(),
                status: format!("exit code {code}"),
                output: out,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinist_backdoor::local::LocalShell;

    async fn run(shell: &mut Shell, command: &str) -> (i32, String) {
        let out = shell
            .execute(&plain(command), None, &mut |_| {})
            .await
            .unwrap();
        (out.code, out.stdout_lossy())
    }

    #[test]
    fn commands_run_as_in_a_plain_shell_with_stderr_merged() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_local, stream) = LocalShell::spawn(std::process::Stdio::null()).unwrap();
            let opts = ConnectOptions::new("local").timeout(Duration::from_secs(20));
            let sh = &mut Shell::connect(stream, opts).await.unwrap();
            // stderr is part of the output, in order.
            assert_eq!(
                run(sh, "echo out; echo err >&2; echo out2").await,
                (0, "out\nerr\nout2\n".into())
            );
            // No `set -e`, `-u` or `pipefail`: a failing command does not end the script.
            assert_eq!(
                run(sh, "false; echo $unset_var after; false | true; echo $?").await,
                (0, "after\n0\n".into())
            );
            assert_eq!(run(sh, "echo x; exit 3").await, (3, "x\n".into()));
            // Each command starts afresh: the last one's `set +e` and redirection are gone.
            let out = shell_execute_raw(sh, "echo gone >&2; echo kept").await;
            assert_eq!(out, "kept\n");
        });
    }

    /// Runs `command` as the backdoor does, without [`plain`].
    async fn shell_execute_raw(shell: &mut Shell, command: &str) -> String {
        let out = shell.execute(command, None, &mut |_| {}).await.unwrap();
        out.stdout_lossy()
    }
}
