//! The guest side: the backdoor script and its systemd units, as files to install into an image.
//!
//! What the host sees is NixOS-compatible: after the line `Spawning backdoor root shell...` a
//! non-interactive `bash --norc` reads commands from the virtio console (`/dev/hvc0`), its stdout is
//! the console, its stderr is the serial port `/dev/ttyS0` (so it lands in the serial log), the
//! console is in `raw -echo` mode, the environment is root's login environment from `/etc/profile`
//! and the working directory is `/tmp`.
//!
//! The ordering is ours, for boot speed: the template unit `machinist-backdoor@.service` has
//! `DefaultDependencies=no`, is wanted by `sysinit.target` and polls for the device node itself
//! instead of depending on the udev device unit. The main shell is on the virtio serial port
//! `/dev/vport0p1`, the control shell on `/dev/vport0p2` (the same script on a second port); the
//! NixOS console devices `hvc0`/`hvc1` work the same way and stay supported.
//!
//! The script also serves a virtio *serial port* (`backdoor vport0p1`, QEMU
//! `-device virtserialport`): QEMU silently drops what a guest writes to a `virtconsole` when the
//! host socket is full (it cannot throttle a console), while it throttles a serial port, so large
//! outputs only survive a slow host reader on a serial port. See [`SERIAL_PORT_DEVICES`].

/// Where the backdoor script is installed in the guest.
pub const SCRIPT_PATH: &str = "/usr/lib/machinist/backdoor";

/// Where the systemd template unit is installed in the guest.
pub const UNIT_PATH: &str = "/etc/systemd/system/machinist-backdoor@.service";

/// The line the guest prints on the console when the shell is ready (same bytes as NixOS).
pub const GREETING: &str = "Spawning backdoor root shell...";

/// The device of the main shell: the first virtio serial port (QEMU
/// `-device virtserialport,chardev=..,nr=1`), lossless under host load. NixOS uses the console
/// `hvc0` instead; the script serves both (see [`CONSOLE_DEVICES`]).
pub const MAIN_DEVICE: &str = "vport0p1";

/// The device of the control shell: the second virtio serial port (`nr=2`).
pub const CONTROL_DEVICE: &str = "vport0p2";

/// The NixOS-style console devices (`virtconsole`), main and control. The same script serves
/// them, but QEMU drops console output when the host reads late, so Machinist uses serial ports.
pub const CONSOLE_DEVICES: [&str; 2] = ["hvc0", "hvc1"];

/// Guest devices of the main and control shells on virtio serial ports (QEMU
/// `-device virtio-serial -device virtserialport,chardev=..,nr=1` and `nr=2`, no udev needed):
/// lossless under host load, unlike `virtconsole`.
pub const SERIAL_PORT_DEVICES: [&str; 2] = ["vport0p1", "vport0p2"];

/// The backdoor script. `backdoor <device>` serves a shell on `/dev/<device>`; `backdoor -` serves
/// it on the inherited stdin/stdout/stderr (used by tests that run it on a socket without a VM).
pub const SCRIPT: &str = r#"#!/bin/bash
# Machinist backdoor: a root shell for the test driver on a virtio console.
#   backdoor <device>  serve on /dev/<device> (stdin+stdout), stderr on /dev/ttyS0
#   backdoor -         serve on the inherited stdin/stdout/stderr (tests without a VM)
# The host side is NixOS-compatible: after the greeting line a non-interactive
# `bash --norc` reads commands from the device. Nothing may be printed after the greeting.
dev=${1:?usage: backdoor <device>|-}
# Guest uptime at start (a builtin read, no process): the serial log shows how long the shell
# took from its start to the device (boot-time diagnosis).
read -r started _ </proc/uptime || started=?
export USER=root HOME=/root DISPLAY=:0.0
if [[ -r /etc/profile ]]; then
    set +u
    # Debian's /etc/profile runs `$(id -u)`: answered by a function (no exec of id, ~0.5 s of a
    # TCG boot) for the duration of the sourcing only.
    id() { if [[ $# == 1 && $1 == -u ]]; then echo "$EUID"; else command id "$@"; fi; }
    . /etc/profile
    unset -f id
fi
read -r profiled _ </proc/uptime || profiled=?
export PAGER= SYSTEMD_PAGER=
cd /tmp || cd /
if [[ $dev == - ]]; then
    echo "Spawning backdoor root shell..."
    PS1= exec bash --norc
fi
# Wait for the device node itself (no dependency on udev's device unit: faster boot).
n=0
until [[ -c /dev/$dev ]]; do
    if (( n++ < 200 )); then sleep 0.05; else sleep 1; fi
done
# One read-write open: a virtio serial port (vportNpM) can be opened only once at a time.
exec <>"/dev/$dev" >&0
while ! exec 2>/dev/ttyS0; do sleep 0.1; done
read -r opened _ </proc/uptime || opened=?
echo "machinist backdoor: connecting to host on /dev/$dev... (started at $started s, profile read at $profiled s, device open at $opened s)" >&2
if [[ -t 0 ]]; then
    # A console (hvcN, as NixOS): raw, i.e. no NL -> CR/NL conversion, no echo, no signals.
    stty raw -echo
    echo "Spawning backdoor root shell..."
    # The device as script argument keeps bash non-interactive (no prompt, no job control).
    PS1= exec bash --norc "/dev/$dev"
fi
# A virtio serial port: no line discipline at all; stdin is not a terminal, so bash reading it
# is non-interactive. (QEMU drops console output when the host reads late, but throttles a
# serial port instead: no byte is lost.)
echo "Spawning backdoor root shell..."
PS1= exec bash --norc
"#;

/// The systemd template unit; instantiate as `machinist-backdoor@hvc0.service`.
pub const UNIT: &str = r#"[Unit]
Description=Machinist backdoor root shell on /dev/%I
# Ordered early, for boot speed: no default dependencies, wanted by sysinit.target; the script
# polls for the console device itself instead of waiting for udev.
DefaultDependencies=no
IgnoreOnIsolate=yes
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/lib/machinist/backdoor %I
KillSignal=SIGHUP
# A shell that exits (e.g. `exit` typed in an interactive session) comes back with a new greeting.
Restart=always
RestartSec=100ms

[Install]
WantedBy=sysinit.target
"#;

/// A regular file to install into the guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: &'static str,
    /// File contents.
    pub contents: &'static str,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
}

/// A symbolic link to install into the guest image (the units' `WantedBy=` enablement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSymlink {
    /// Absolute path of the link in the guest.
    pub path: String,
    /// What the link points to.
    pub target: &'static str,
}

/// The unit instance name serving `device`, e.g. `machinist-backdoor@hvc0.service`.
pub fn unit_name(device: &str) -> String {
    format!("machinist-backdoor@{device}.service")
}

/// The files of the guest side: the script and the template unit.
pub fn files() -> Vec<GuestFile> {
    vec![
        GuestFile {
            path: SCRIPT_PATH,
            contents: SCRIPT,
            mode: 0o755,
        },
        GuestFile {
            path: UNIT_PATH,
            contents: UNIT,
            mode: 0o644,
        },
    ]
}

/// The enablement symlinks: the main shell on `vport0p1` and the control shell on `vport0p2`, both wanted by
/// `sysinit.target`.
pub fn symlinks() -> Vec<GuestSymlink> {
    [MAIN_DEVICE, CONTROL_DEVICE]
        .iter()
        .map(|dev| GuestSymlink {
            path: format!(
                "/etc/systemd/system/sysinit.target.wants/{}",
                unit_name(dev)
            ),
            target: UNIT_PATH,
        })
        .collect()
}

/// The directory of a container node where its backdoor sockets are made: the host binds a
/// directory of its own there, so the host connects to `<that directory>/shell.sock` and
/// `control.sock`.
pub const CONTAINER_SOCKET_DIR: &str = "/run/machinist-host";

/// The socket files of the main and control shells in [`CONTAINER_SOCKET_DIR`].
pub const CONTAINER_SOCKETS: [&str; 2] = ["shell.sock", "control.sock"];

/// Where the container socket unit is installed.
pub const CONTAINER_SOCKET_UNIT_PATH: &str = "/etc/systemd/system/machinist-backdoor-ct.socket";

/// Where the container service template is installed.
pub const CONTAINER_SERVICE_UNIT_PATH: &str = "/etc/systemd/system/machinist-backdoor-ct@.service";

/// The socket unit of a container node: one listening socket per shell in
/// [`CONTAINER_SOCKET_DIR`]; each connection gets its own backdoor script (`Accept=yes`), whose
/// stdin and stdout are the connection. Inert anywhere but in a container.
pub const CONTAINER_SOCKET_UNIT: &str = r#"[Unit]
Description=Machinist backdoor root shells on unix sockets (containers)
ConditionVirtualization=container
DefaultDependencies=no
IgnoreOnIsolate=yes

[Socket]
ListenStream=/run/machinist-host/shell.sock
ListenStream=/run/machinist-host/control.sock
Accept=yes
SocketMode=0600

[Install]
WantedBy=sysinit.target
"#;

/// The service template of [`CONTAINER_SOCKET_UNIT`]: the backdoor script on the accepted
/// connection (`backdoor -`), its stderr on the container's console (the console log), as a
/// VM's goes to its serial port.
pub const CONTAINER_SERVICE_UNIT: &str = r#"[Unit]
Description=Machinist backdoor root shell on a unix socket (containers)
DefaultDependencies=no
IgnoreOnIsolate=yes

[Service]
ExecStart=/usr/lib/machinist/backdoor -
StandardInput=socket
StandardOutput=socket
StandardError=tty
TTYPath=/dev/console
KillSignal=SIGHUP
"#;

/// The guest files of a container node (added to its root before boot, not to the image): the
/// socket unit and its service template. The backdoor script itself comes with the image.
pub fn container_files() -> Vec<GuestFile> {
    vec![
        GuestFile {
            path: CONTAINER_SOCKET_UNIT_PATH,
            contents: CONTAINER_SOCKET_UNIT,
            mode: 0o644,
        },
        GuestFile {
            path: CONTAINER_SERVICE_UNIT_PATH,
            contents: CONTAINER_SERVICE_UNIT,
            mode: 0o644,
        },
    ]
}

/// The symlinks of a container node: the socket unit wanted by `sysinit.target`, and the VM
/// shells' units (on virtio serial ports a container does not have) masked.
pub fn container_symlinks() -> Vec<GuestSymlink> {
    let mut v = vec![GuestSymlink {
        path: "/etc/systemd/system/sysinit.target.wants/machinist-backdoor-ct.socket".into(),
        target: CONTAINER_SOCKET_UNIT_PATH,
    }];
    for dev in [MAIN_DEVICE, CONTROL_DEVICE] {
        v.push(GuestSymlink {
            path: format!("/etc/systemd/system/{}", unit_name(dev)),
            target: "/dev/null",
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_passes_bash_syntax_check() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", SCRIPT])
            .output()
            .expect("run bash -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn container_socket_unit_listens_on_the_documented_sockets() {
        for s in CONTAINER_SOCKETS {
            let line = format!("ListenStream={CONTAINER_SOCKET_DIR}/{s}");
            assert!(CONTAINER_SOCKET_UNIT.contains(&line), "{line}");
        }
        assert!(CONTAINER_SOCKET_UNIT.contains("ConditionVirtualization=container"));
        assert!(CONTAINER_SERVICE_UNIT.contains(&format!("ExecStart={SCRIPT_PATH} -")));
    }

    #[test]
    fn greeting_in_script_matches() {
        assert!(SCRIPT.contains(&format!("echo \"{GREETING}\"")));
    }

    #[test]
    fn guest_files_snapshot() {
        insta::assert_snapshot!("script", SCRIPT);
        insta::assert_snapshot!("unit", UNIT);
        insta::assert_snapshot!("container_socket_unit", CONTAINER_SOCKET_UNIT);
        insta::assert_snapshot!("container_service_unit", CONTAINER_SERVICE_UNIT);
        insta::assert_debug_snapshot!("symlinks", symlinks());
    }
}
