//! A typed builder for QEMU command lines with a deterministic argv.
//!
//! The argv order is fixed (identity, machine, accelerator, CPU/memory, defaults, display, serial,
//! kernel, drives, consoles, QMP, NICs, RNG, `-incoming`, extra args) so command lines can be
//! snapshot-tested and used as cache keys.

use std::path::{Path, PathBuf};

use crate::error::{QemuError, QEMU_PACKAGE};
use crate::quote::shell_quote;
use crate::socket::check_socket_path;

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Multi-threaded TCG with a capped code cache: `-accel tcg,thread=multi,tb-size=256`.
    Tcg,
    /// KVM with the host CPU model: `-accel kvm -cpu host`.
    Kvm,
}

impl Accel {
    /// The lowercase name (`tcg` / `kvm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    fn push_args(self, argv: &mut Vec<String>) {
        match self {
            Accel::Tcg => push(argv, ["-accel", "tcg,thread=multi,tb-size=256"]),
            Accel::Kvm => push(argv, ["-accel", "kvm", "-cpu", "host"]),
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Disk image format of a [`Drive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFormat {
    /// qcow2 (typically a per-run overlay over a read-only backing image).
    Qcow2,
    /// A raw image.
    Raw,
}

impl DriveFormat {
    fn as_str(self) -> &'static str {
        match self {
            DriveFormat::Qcow2 => "qcow2",
            DriveFormat::Raw => "raw",
        }
    }
}

/// A `-drive` on the virtio bus (`/dev/vda`, `/dev/vdb`, ... in argv order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Image file.
    pub file: PathBuf,
    /// Image format.
    pub format: DriveFormat,
    /// Optional block node id (`id=`).
    pub id: Option<String>,
    /// Attach read-only (`readonly=on`).
    pub read_only: bool,
    /// Discard writes on exit (`snapshot=on`).
    pub snapshot: bool,
}

impl Drive {
    /// A qcow2 overlay (see [`crate::overlay::create_qcow2_overlay`]) attached read-write.
    pub fn qcow2(file: impl Into<PathBuf>) -> Self {
        Drive {
            file: file.into(),
            format: DriveFormat::Qcow2,
            id: None,
            read_only: false,
            snapshot: false,
        }
    }

    /// A raw image attached read-write.
    pub fn raw(file: impl Into<PathBuf>) -> Self {
        Drive {
            format: DriveFormat::Raw,
            ..Drive::qcow2(file)
        }
    }

    /// Sets the block node id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Attaches the image read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Discards writes when QEMU exits.
    pub fn snapshot(mut self) -> Self {
        self.snapshot = true;
        self
    }
}

/// What a NIC is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// `-netdev stream,server=off,addr.type=unix,addr.path=<path>`: the host-side switch listens
    /// on `path` before QEMU starts (QEMU 7.2 connects once and never reconnects).
    Stream {
        /// The switch port's listening socket.
        path: PathBuf,
    },
    /// `-netdev vde,sock=<dir>`: a VDE switch directory (containing `ctl`).
    Vde {
        /// The switch directory.
        dir: PathBuf,
    },
    /// `-netdev user` (slirp) with optional `restrict=on` and `hostfwd` rules
    /// (e.g. `tcp:127.0.0.1:8080-:80`).
    User {
        /// Isolate the guest from the host network (`restrict=on`).
        restrict: bool,
        /// `hostfwd=` rules, in order.
        hostfwd: Vec<String>,
    },
}

/// A virtio-net NIC with an explicit device id (the name `set_link` uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Device id, e.g. `nic-vlan1`; the netdev gets id `<id>-netdev`.
    pub id: String,
    /// MAC address, e.g. `52:54:00:12:01:01`.
    pub mac: String,
    /// What the NIC is plugged into.
    pub backend: NetBackend,
}

impl Nic {
    /// A NIC plugged into a stream switch port.
    pub fn stream(id: impl Into<String>, mac: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Nic {
            id: id.into(),
            mac: mac.into(),
            backend: NetBackend::Stream { path: path.into() },
        }
    }

    /// A NIC on QEMU's user-mode network.
    pub fn user(id: impl Into<String>, mac: impl Into<String>, restrict: bool) -> Self {
        Nic {
            id: id.into(),
            mac: mac.into(),
            backend: NetBackend::User {
                restrict,
                hostfwd: Vec::new(),
            },
        }
    }

    /// The netdev id QEMU uses for the backend (`<id>-netdev`).
    pub fn netdev_id(&self) -> String {
        format!("{}-netdev", self.id)
    }
}

/// A virtio-serial port whose chardev connects to a host-side listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtConsole {
    /// Chardev id.
    pub id: String,
    /// The socket the host listens on (QEMU connects as a client).
    pub path: PathBuf,
    /// Console (`/dev/hvcN`) or plain serial port (`/dev/vport0pN`).
    pub kind: PortKind,
}

/// How a virtio-serial port appears in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// `virtconsole`: a tty (`/dev/hvcN`). QEMU drops its output when the host reads too slowly.
    Console,
    /// `virtserialport,nr=N`: `/dev/vport0pN`. QEMU throttles the guest instead of dropping
    /// bytes, so large outputs arrive whole: the backdoor's recommended transport.
    SerialPort {
        /// Port number on the virtio-serial bus (1..; 0 is reserved for a console).
        nr: u32,
    },
}

/// Where the guest's first serial port (ttyS0) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serial {
    /// QEMU's stdin/stdout (`-chardev stdio,id=ser0,signal=off -serial chardev:ser0`); the
    /// supervisor captures it line by line.
    #[default]
    Stdio,
    /// No serial port.
    None,
}

/// The guest display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Display {
    /// A standard VGA card and no window (`-display none -vga std`): screendump/OCR work.
    #[default]
    Vga,
    /// No display device at all (`-display none -vga none`).
    None,
}

/// A QEMU command line (builder with public fields).
///
/// ```
/// use machinist_qemu::{QemuCommand, Nic};
/// let cmd = QemuCommand::new("server")
///     .kernel("/cache/vmlinuz")
///     .initrd("/cache/initrd")
///     .append("console=ttyS0 quiet")
///     .qmp("/tmp/run/server-qmp.sock")
///     .nic(Nic::stream("nic-vlan1", "52:54:00:12:01:01", "/tmp/run/vlan1/server.sock"));
/// assert!(cmd.args().contains(&"-nodefaults".to_string()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// Machine name (`-name`), used in errors and logs.
    pub name: String,
    /// QEMU binary (a name looked up on `PATH`, or a path).
    pub binary: PathBuf,
    /// Machine type (`-M`), default `q35`.
    pub machine: String,
    /// Accelerator, default TCG.
    pub accel: Accel,
    /// Guest RAM in MiB (`-m`), default 1024.
    pub memory_mib: u32,
    /// vCPUs (`-smp`), default 2.
    pub cores: u32,
    /// Kernel for direct boot (`-kernel`).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (`-initrd`).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`-append`).
    pub append: Option<String>,
    /// Disks, in order (`/dev/vda`, ...).
    pub drives: Vec<Drive>,
    /// NICs, in order.
    pub nics: Vec<Nic>,
    /// Virtio consoles, in order (`/dev/hvc0`, `/dev/hvc1`, ...).
    pub consoles: Vec<VirtConsole>,
    /// QMP socket the host listens on (QEMU connects).
    pub qmp: Option<PathBuf>,
    /// Serial port routing.
    pub serial: Serial,
    /// Display device.
    pub display: Display,
    /// Let the guest reboot (otherwise `-no-reboot`: a reboot makes QEMU exit).
    pub allow_reboot: bool,
    /// A virtio RNG fed from the host's `/dev/urandom` (`-object rng-random,...` and
    /// `-device virtio-rng-pci,...`), on by default: without it the guest's entropy pool is ready
    /// only many seconds into a TCG boot, and everything that asks for random bytes early waits.
    pub rng: bool,
    /// Restore from a migration stream (`-incoming <uri>`, e.g. `exec:cat state` or `defer`).
    pub incoming: Option<String>,
    /// Raw arguments appended last.
    pub extra_args: Vec<String>,
}

impl QemuCommand {
    /// A command with the defaults: `qemu-system-x86_64`, q35, TCG, 1024 MiB, 2 cores, serial on
    /// stdio, VGA display, `-no-reboot`, a virtio RNG.
    pub fn new(name: impl Into<String>) -> Self {
        QemuCommand {
            name: name.into(),
            binary: PathBuf::from("qemu-system-x86_64"),
            machine: "q35".into(),
            accel: Accel::Tcg,
            memory_mib: 1024,
            cores: 2,
            kernel: None,
            initrd: None,
            append: None,
            drives: Vec::new(),
            nics: Vec::new(),
            consoles: Vec::new(),
            qmp: None,
            serial: Serial::Stdio,
            display: Display::Vga,
            allow_reboot: false,
            rng: true,
            incoming: None,
            extra_args: Vec::new(),
        }
    }

    /// Sets the QEMU binary.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }
    /// Sets the machine type.
    pub fn machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = machine.into();
        self
    }
    /// Sets the accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }
    /// Sets guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    /// Sets the number of vCPUs.
    pub fn cores(mut self, cores: u32) -> Self {
        self.cores = cores;
        self
    }
    /// Sets the kernel for direct boot.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }
    /// Sets the initial ramdisk.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }
    /// Sets the kernel command line.
    pub fn append(mut self, cmdline: impl Into<String>) -> Self {
        self.append = Some(cmdline.into());
        self
    }
    /// Adds a disk.
    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }
    /// Adds a NIC.
    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }
    /// Adds a virtio console whose chardev `id` connects to the host socket `path`.
    pub fn virtconsole(mut self, id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.consoles.push(VirtConsole {
            id: id.into(),
            path: path.into(),
            kind: PortKind::Console,
        });
        self
    }
    /// Adds a virtio serial port (`/dev/vport0p<N>`, N = 1, 2, … in call order) whose chardev
    /// `id` connects to the host socket `path`. Lossless under host load, unlike a console.
    pub fn virtserialport(mut self, id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        let nr = 1 + self
            .consoles
            .iter()
            .filter(|c| matches!(c.kind, PortKind::SerialPort { .. }))
            .count() as u32;
        self.consoles.push(VirtConsole {
            id: id.into(),
            path: path.into(),
            kind: PortKind::SerialPort { nr },
        });
        self
    }
    /// Sets the QMP socket (the host listens; QEMU connects).
    pub fn qmp(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }
    /// Sets the serial routing.
    pub fn serial(mut self, serial: Serial) -> Self {
        self.serial = serial;
        self
    }
    /// Sets the display.
    pub fn display(mut self, display: Display) -> Self {
        self.display = display;
        self
    }
    /// Allows guest reboots (drops `-no-reboot`).
    pub fn allow_reboot(mut self, allow: bool) -> Self {
        self.allow_reboot = allow;
        self
    }
    /// Adds or removes the virtio RNG device (on by default).
    pub fn rng(mut self, on: bool) -> Self {
        self.rng = on;
        self
    }
    /// Starts QEMU waiting for a migration stream (`-incoming`).
    pub fn incoming(mut self, uri: impl Into<String>) -> Self {
        self.incoming = Some(uri.into());
        self
    }
    /// Appends one raw argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
    /// Appends raw arguments.
    pub fn args_extra<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The argv after the binary, in a fixed order.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        push(&mut a, ["-name".to_string(), escape_opt(&self.name)]);
        push(&mut a, ["-M".to_string(), self.machine.clone()]);
        self.accel.push_args(&mut a);
        push(
            &mut a,
            [
                "-smp".to_string(),
                self.cores.to_string(),
                "-m".to_string(),
                self.memory_mib.to_string(),
            ],
        );
        a.push("-nodefaults".into());
        if !self.allow_reboot {
            a.push("-no-reboot".into());
        }
        match self.display {
            Display::Vga => push(&mut a, ["-display", "none", "-vga", "std"]),
            Display::None => push(&mut a, ["-display", "none", "-vga", "none"]),
        }
        match self.serial {
            Serial::Stdio => push(
                &mut a,
                [
                    "-chardev",
                    "stdio,id=ser0,signal=off",
                    "-serial",
                    "chardev:ser0",
                ],
            ),
            Serial::None => push(&mut a, ["-serial", "none"]),
        }
        if let Some(k) = &self.kernel {
            push(&mut a, ["-kernel".to_string(), path_str(k)]);
        }
        if let Some(i) = &self.initrd {
            push(&mut a, ["-initrd".to_string(), path_str(i)]);
        }
        if let Some(ap) = &self.append {
            push(&mut a, ["-append".to_string(), ap.clone()]);
        }
        for d in &self.drives {
            let mut s = format!(
                "file={},if=virtio,format={}",
                escape_opt(&path_str(&d.file)),
                d.format.as_str()
            );
            if let Some(id) = &d.id {
                s.push_str(&format!(",id={id}"));
            }
            if d.read_only {
                s.push_str(",readonly=on");
            }
            if d.snapshot {
                s.push_str(",snapshot=on");
            }
            push(&mut a, ["-drive".to_string(), s]);
        }
        if !self.consoles.is_empty() {
            push(&mut a, ["-device", "virtio-serial"]);
            for c in &self.consoles {
                push(
                    &mut a,
                    [
                        "-chardev".to_string(),
                        format!("socket,id={},path={}", c.id, escape_opt(&path_str(&c.path))),
                        "-device".to_string(),
                        match c.kind {
                            PortKind::Console => format!("virtconsole,chardev={}", c.id),
                            PortKind::SerialPort { nr } => {
                                format!("virtserialport,chardev={},nr={nr}", c.id)
                            }
                        },
                    ],
                );
            }
        }
        if let Some(q) = &self.qmp {
            push(
                &mut a,
                [
                    "-chardev".to_string(),
                    format!("socket,id=qmp,path={}", escape_opt(&path_str(q))),
                    "-mon".to_string(),
                    "chardev=qmp,mode=control".to_string(),
                ],
            );
        }
        for n in &self.nics {
            let nd = n.netdev_id();
            let backend = match &n.backend {
                NetBackend::Stream { path } => format!(
                    "stream,id={nd},server=off,addr.type=unix,addr.path={}",
                    escape_opt(&path_str(path))
                ),
                NetBackend::Vde { dir } => {
                    format!("vde,id={nd},sock={}", escape_opt(&path_str(dir)))
                }
                NetBackend::User { restrict, hostfwd } => {
                    let mut s = format!("user,id={nd}");
                    if *restrict {
                        s.push_str(",restrict=on");
                    }
                    for h in hostfwd {
                        s.push_str(&format!(",hostfwd={h}"));
                    }
                    s
                }
            };
            push(
                &mut a,
                [
                    "-netdev".to_string(),
                    backend,
                    "-device".to_string(),
                    format!("virtio-net-pci,netdev={nd},mac={},id={}", n.mac, n.id),
                ],
            );
        }
        if self.rng {
            // Last among the devices, so that the PCI addresses of the others stay as they were.
            push(
                &mut a,
                [
                    "-object",
                    "rng-random,filename=/dev/urandom,id=rng0",
                    "-device",
                    "virtio-rng-pci,rng=rng0",
                ],
            );
        }
        if let Some(uri) = &self.incoming {
            push(&mut a, ["-incoming".to_string(), uri.clone()]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The whole command line as one shell-quoted string (for logs and "run it yourself" hints).
    pub fn command_line(&self) -> String {
        std::iter::once(path_str(&self.binary))
            .chain(self.args())
            .map(|s| shell_quote(&s))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every unix socket path the command uses (consoles, QMP, stream NICs, VDE control sockets).
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.consoles.iter().map(|c| c.path.clone()).collect();
        v.extend(self.qmp.clone());
        for n in &self.nics {
            match &n.backend {
                NetBackend::Stream { path } => v.push(path.clone()),
                // libvdeplug binds `<dir>/.PPPPP-SSSSS` next to `<dir>/ctl`.
                NetBackend::Vde { dir } => v.push(dir.join(".00000-00000")),
                NetBackend::User { .. } => {}
            }
        }
        v
    }

    /// Checks everything that can be checked before spawning: the binary is installed, kernel /
    /// initrd / disk files exist, socket paths fit, ids are well-formed and unique, sizes are
    /// non-zero. Errors name the offending path or field.
    pub fn validate(&self) -> Result<(), QemuError> {
        find_binary(&self.binary)?;
        check_id("name", &self.name, true)?;
        if self.memory_mib == 0 {
            return Err(invalid("memory_mib", "0", "must be at least 1 (MiB)"));
        }
        if self.cores == 0 {
            return Err(invalid("cores", "0", "must be at least 1"));
        }
        if let Some(k) = &self.kernel {
            must_exist("kernel", k)?;
        }
        if let Some(i) = &self.initrd {
            must_exist("initrd", i)?;
        }
        if let (Some(initrd), None) = (&self.initrd, &self.kernel) {
            return Err(invalid(
                "initrd",
                &path_str(initrd),
                "an initrd needs a kernel (set QemuCommand::kernel)",
            ));
        }
        for d in &self.drives {
            must_exist("disk", &d.file)?;
        }
        let mut ids = std::collections::BTreeSet::new();
        for c in &self.consoles {
            check_id("console id", &c.id, false)?;
            if c.id == "qmp" || c.id == "ser0" || !ids.insert(c.id.clone()) {
                return Err(invalid(
                    "console id",
                    &c.id,
                    "must be unique and not `qmp` or `ser0`",
                ));
            }
        }
        let mut nic_ids = std::collections::BTreeSet::new();
        for n in &self.nics {
            check_id("nic id", &n.id, false)?;
            if !nic_ids.insert(n.id.clone()) {
                return Err(invalid("nic id", &n.id, "NIC ids must be unique"));
            }
            check_mac(&n.mac)?;
            if let NetBackend::User { hostfwd, .. } = &n.backend {
                if let Some(h) = hostfwd.iter().find(|h| h.contains(',')) {
                    return Err(invalid("hostfwd", h, "one rule per entry, no commas"));
                }
            }
        }
        for p in self.socket_paths() {
            check_socket_path(&p)?;
        }
        Ok(())
    }
}

/// Looks up a QEMU (or other) binary: a path must exist and be executable, a bare name must be on
/// `PATH`. The error names the Debian package `qemu-system-x86`.
pub fn find_binary(binary: &Path) -> Result<PathBuf, QemuError> {
    let not_found = || QemuError::BinaryNotFound {
        binary: path_str(binary),
        package: QEMU_PACKAGE,
    };
    if binary.components().count() > 1 || binary.is_absolute() {
        return if is_executable(binary) {
            Ok(binary.to_path_buf())
        } else {
            Err(not_found())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn must_exist(what: &'static str, p: &Path) -> Result<(), QemuError> {
    if p.exists() {
        Ok(())
    } else {
        Err(QemuError::MissingFile {
            what,
            path: p.to_path_buf(),
        })
    }
}

fn invalid(field: &'static str, value: &str, hint: &str) -> QemuError {
    QemuError::InvalidOption {
        field,
        value: value.to_string(),
        hint: hint.to_string(),
    }
}

/// QEMU ids: a letter, then letters, digits, `-`, `.`, `_`. Machine names may also be any
/// printable text without control characters (`-name` is escaped).
fn check_id(field: &'static str, id: &str, loose: bool) -> Result<(), QemuError> {
    let ok = if loose {
        !id.is_empty() && !id.chars().any(char::is_control)
    } else {
        let mut chars = id.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            && id.len() <= 127
    };
    if ok {
        Ok(())
    } else if loose {
        Err(invalid(
            field,
            id,
            "must be non-empty without control characters",
        ))
    } else {
        Err(invalid(
            field,
            id,
            "must start with a letter and contain only letters, digits, `-`, `.`, `_`",
        ))
    }
}

fn check_mac(mac: &str) -> Result<(), QemuError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16)
            .map(|b| b & 1 == 0)
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "mac",
            mac,
            "must be a unicast MAC like 52:54:00:12:01:01",
        ))
    }
}

fn push<S: Into<String>, const N: usize>(argv: &mut Vec<String>, items: [S; N]) {
    argv.extend(items.into_iter().map(Into::into));
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// QEMU option values separate keys with commas; a literal comma is written as `,,`.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typical() -> QemuCommand {
        QemuCommand::new("server")
            .kernel("/cache/kernel/6.1.0-56-cloud-amd64/boot/vmlinuz-6.1.0-56-cloud-amd64")
            .initrd("/cache/images/abc/initrd")
            .append("console=ttyS0 root=/dev/vda rw quiet")
            .drive(Drive::qcow2("/tmp/mach-1/server.qcow2"))
            .virtconsole("shell", "/tmp/mach-1/server-shell.sock")
            .virtconsole("control", "/tmp/mach-1/server-ctl.sock")
            .qmp("/tmp/mach-1/server-qmp.sock")
            .nic(Nic::stream(
                "nic-vlan1",
                "52:54:00:12:01:01",
                "/tmp/mach-1/vlan1/server.sock",
            ))
            .nic(Nic {
                id: "nic-user".into(),
                mac: "52:54:00:12:ff:01".into(),
                backend: NetBackend::User {
                    restrict: true,
                    hostfwd: vec!["tcp:127.0.0.1:8022-:22".into()],
                },
            })
    }

    fn lines(cmd: &QemuCommand) -> String {
        // One option (with its value) per line, for readable snapshots.
        let mut out = cmd.binary.display().to_string();
        for a in cmd.args() {
            if a.starts_with('-') {
                out.push_str(" \\\n  ");
            } else {
                out.push(' ');
            }
            out.push_str(&shell_quote(&a));
        }
        out
    }

    #[test]
    fn typical_test_node() {
        insta::assert_snapshot!(lines(&typical()));
    }

    #[test]
    fn incoming_restore() {
        let cmd = typical()
            .incoming("exec:cat /tmp/mach-1/state")
            .arg("-S")
            .memory_mib(2048)
            .cores(1);
        insta::assert_snapshot!(lines(&cmd));
    }

    #[test]
    fn kvm_vde_no_display() {
        let cmd = QemuCommand::new("client")
            .accel(Accel::Kvm)
            .allow_reboot(true)
            .display(Display::None)
            .serial(Serial::None)
            .drive(
                Drive::raw("/img/base,v2.img")
                    .read_only()
                    .snapshot()
                    .id("root"),
            )
            .nic(Nic {
                id: "nic-vlan2".into(),
                mac: "52:54:00:12:02:02".into(),
                backend: NetBackend::Vde {
                    dir: "/tmp/mach-1/vde2".into(),
                },
            });
        insta::assert_snapshot!(lines(&cmd));
    }

    #[test]
    fn every_vm_gets_a_virtio_rng_unless_turned_off() {
        let with = typical().args();
        let object = with.iter().position(|a| a == "-object").expect("-object");
        assert_eq!(with[object + 1], "rng-random,filename=/dev/urandom,id=rng0");
        assert_eq!(with[object + 2], "-device");
        assert_eq!(with[object + 3], "virtio-rng-pci,rng=rng0");
        // After the NICs, so the other devices keep their PCI addresses.
        let last_nic = with
            .iter()
            .rposition(|a| a.starts_with("virtio-net-pci"))
            .expect("a NIC");
        assert!(object > last_nic, "{with:?}");
        let without = typical().rng(false).args();
        assert!(!without.iter().any(|a| a.contains("rng")), "{without:?}");
    }

    #[test]
    fn args_are_deterministic() {
        assert_eq!(typical().args(), typical().args());
        assert_eq!(typical().command_line(), typical().command_line());
        assert!(typical()
            .command_line()
            .contains("'console=ttyS0 root=/dev/vda rw quiet'"));
    }

    #[test]
    fn validate_missing_binary_names_package() {
        let err = QemuCommand::new("vm")
            .binary("qemu-system-does-not-exist")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("qemu-system-x86"), "{err}");
        assert!(err.contains("qemu-system-does-not-exist"), "{err}");
        let err = QemuCommand::new("vm")
            .binary("/nonexistent/qemu")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
    }

    #[test]
    fn validate_missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"k").unwrap();
        let missing = dir.path().join("no-initrd");
        let err = QemuCommand::new("vm")
            .kernel(&k)
            .initrd(&missing)
            .validate()
            .unwrap_err();
        assert!(matches!(err, QemuError::MissingFile { what: "initrd", .. }));
        assert!(err.to_string().contains("no-initrd"));
        let err = QemuCommand::new("vm")
            .kernel(dir.path().join("nope"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kernel `") && err.contains("nope"), "{err}");
        let err = QemuCommand::new("vm")
            .drive(Drive::qcow2(dir.path().join("disk.qcow2")))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("disk `") && err.contains("disk.qcow2"),
            "{err}"
        );
    }

    #[test]
    fn validate_socket_path_length() {
        let long = format!("/tmp/{}/qmp.sock", "d".repeat(110));
        let err = QemuCommand::new("vm").qmp(&long).validate().unwrap_err();
        assert!(matches!(err, QemuError::SocketPathTooLong { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&long) && msg.contains("shorter run directory"),
            "{msg}"
        );
        let long_vde = format!("/tmp/{}", "v".repeat(95));
        let err = QemuCommand::new("vm")
            .nic(Nic {
                id: "n1".into(),
                mac: "52:54:00:00:00:01".into(),
                backend: NetBackend::Vde {
                    dir: long_vde.into(),
                },
            })
            .validate()
            .unwrap_err();
        assert!(matches!(err, QemuError::SocketPathTooLong { .. }), "{err}");
    }

    #[test]
    fn validate_ids_and_macs() {
        let err = QemuCommand::new("vm")
            .nic(Nic::user("1bad", "52:54:00:00:00:01", true))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("nic id") && err.contains("1bad"), "{err}");
        let err = QemuCommand::new("vm")
            .nic(Nic::user("n1", "53:54:00:00:00:01", true))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("mac"), "{err}");
        let err = QemuCommand::new("vm")
            .virtconsole("a", "/tmp/a")
            .virtconsole("a", "/tmp/b")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("console id"), "{err}");
        assert!(QemuCommand::new("vm").memory_mib(0).validate().is_err());
        assert!(QemuCommand::new("vm, odd name").validate().is_ok());
        assert!(QemuCommand::new("a,b").args().contains(&"a,,b".to_string()));
    }
}
