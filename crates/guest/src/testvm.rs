//! A minimal single-machine boot helper for this crate's VM tests and the boot benchmark.
//!
//! It boots an [`Image`] with a [`NodeLayer`] appended to the initrd, on a per-VM qcow2 overlay,
//! listens on the two backdoor consoles (QEMU connects), waits for the greeting and runs commands
//! with a plain marker protocol. The driver crate has the full machine API; this exists so the
//! guest crate can test what it builds without depending on the driver.

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use machinist_qemu::{Drive, Nic, QemuCommand, QemuProcess};

use crate::error::GuestError;
use crate::image::Image;
use crate::layer::NodeLayer;

/// The greeting printed by the backdoor.
pub const GREETING: &str = "Spawning backdoor root shell...";

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
    shell: UnixStream,
    _control: Option<UnixStream>,
    /// Time from spawn to the greeting.
    pub greeting_after: Duration,
    counter: u64,
    buf: Vec<u8>,
}

fn accept_within(
    l: &UnixListener,
    deadline: Instant,
    what: &str,
    qemu: &QemuProcess,
) -> Result<UnixStream, GuestError> {
    l.set_nonblocking(true)
        .map_err(|e| GuestError::io("set_nonblocking", what, e))?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| GuestError::io("set_nonblocking", what, e))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = qemu.try_wait() {
                    return Err(GuestError::BuildStep {
                        image: qemu.name().into(),
                        step: "qemu".into(),
                        status: st.to_string(),
                        output: qemu.stderr_tail(),
                    });
                }
                if Instant::now() > deadline {
                    return Err(GuestError::Timeout {
                        what: format!("{}: QEMU connecting to {what}", qemu.name()),
                        seconds: 0.0,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(GuestError::io("accept", what, e)),
        }
    }
}

impl TestVm {
    /// Boot `image` with `layer` appended to its initrd; returns once the greeting arrived.
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
        let sock = |n: &str| dir.join(format!("{}-{n}.sock", spec.name));
        let (p0, p1) = (sock("hvc0"), sock("hvc1"));
        let _ = std::fs::remove_file(&p0);
        let _ = std::fs::remove_file(&p1);
        let l0 = UnixListener::bind(&p0).map_err(|e| GuestError::io("binding", &p0, e))?;
        let l1 = UnixListener::bind(&p1).map_err(|e| GuestError::io("binding", &p1, e))?;
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
        let shell = accept_within(&l0, deadline, "hvc0", &qemu)?;
        let control = accept_within(&l1, deadline, "hvc1", &qemu).ok();
        let mut vm = TestVm {
            qemu,
            shell,
            _control: control,
            greeting_after: Duration::ZERO,
            counter: 0,
            buf: Vec::new(),
        };
        vm.read_until(GREETING.as_bytes(), deadline)?;
        vm.greeting_after = start.elapsed();
        Ok(vm)
    }

    fn read_until(&mut self, needle: &[u8], deadline: Instant) -> Result<Vec<u8>, GuestError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = self.buf.windows(needle.len()).position(|w| w == needle) {
                let out = self.buf[..pos].to_vec();
                self.buf.drain(..pos + needle.len());
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GuestError::Timeout {
                    what: format!(
                        "{}: waiting for {:?}; serial tail:\n{}",
                        self.qemu.name(),
                        String::from_utf8_lossy(needle),
                        self.qemu.serial().tail(30)
                    ),
                    seconds: 0.0,
                });
            }
            self.shell
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .map_err(|e| GuestError::io("set_read_timeout", self.qemu.name(), e))?;
            match self.shell.read(&mut chunk) {
                Ok(0) => {
                    return Err(GuestError::io(
                        "backdoor closed",
                        self.qemu.name(),
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(GuestError::io("reading backdoor", self.qemu.name(), e)),
            }
        }
    }

    /// Run `command` as root in the guest (bash, stdin /dev/null, stderr merged into the output);
    /// returns (exit code, output).
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), GuestError> {
        self.counter += 1;
        let marker = format!("__MACHINIST_GUEST_DONE_{}__", self.counter);
        let wrapped =
            format!("( {command}\n) </dev/null 2>&1; printf '\\n{marker} %s\\n' \"$?\"\n");
        self.shell
            .write_all(wrapped.as_bytes())
            .map_err(|e| GuestError::io("writing backdoor", self.qemu.name(), e))?;
        let deadline = Instant::now() + timeout;
        let out = self.read_until(format!("\n{marker} ").as_bytes(), deadline)?;
        let code = self.read_until(b"\n", deadline)?;
        let code: i32 = String::from_utf8_lossy(&code).trim().parse().unwrap_or(-1);
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
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
