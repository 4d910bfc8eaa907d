//! What the image build installs into and removes from the Debian rootfs, as data, so that all
//! of it is part of the image's content hash (no hand-bumped versions).
//!
//! See the crate README ("What we removed and why") for the reasoning behind each entry.

use crate::backdoor_files::BackdoorInstall;
use crate::layer::APPLY_LAYER_PATH;

/// How much boot-time pruning an image gets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Pruned for fast boots under TCG (the default).
    #[default]
    Tuned,
    /// Debian's default units (the naive baseline of `bench boot`); still has the backdoor,
    /// networkd and the apply-layer hook in Debian's own initramfs.
    Stock,
}

impl Profile {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Tuned => "tuned",
            Profile::Stock => "stock",
        }
    }
}

/// One customisation of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Step {
    /// Write a file (parents created 0755).
    File {
        /// Absolute path in the guest.
        path: String,
        /// Contents.
        contents: Vec<u8>,
        /// Mode.
        mode: u32,
    },
    /// Create or replace a symlink.
    Symlink {
        /// Absolute path in the guest.
        path: String,
        /// Target.
        target: String,
    },
    /// Remove a file or directory tree if present.
    Remove {
        /// Absolute path in the guest.
        path: String,
    },
}

fn file(path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Step {
    Step::File {
        path: path.into(),
        contents: contents.into(),
        mode,
    }
}

fn link(path: &str, target: &str) -> Step {
    Step::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// The apply-layer script installed at [`APPLY_LAYER_PATH`].
pub const APPLY_LAYER_SCRIPT: &str = include_str!("scripts/apply-layer.sh");

/// The init script of the tiny initramfs.
pub const INITRD_INIT_SCRIPT: &str = include_str!("scripts/init.sh");

/// Units masked in tuned images (symlinked to /dev/null), with the reason.
pub const MASKED_UNITS: &[(&str, &str)] = &[
    (
        "systemd-firstboot.service",
        "would prompt on the console; machine-id is set at build time",
    ),
    ("getty-static.service", "gettys on tty2-6 are never used"),
    (
        "serial-getty@ttyS0.service",
        "ttyS0 carries the boot log and backdoor stderr",
    ),
    (
        "systemd-random-seed.service",
        "throw-away VM; one process spawn (~0.1 s under TCG)",
    ),
    ("systemd-journal-flush.service", "journal is volatile"),
    ("systemd-update-utmp.service", "no utmp readers"),
    ("systemd-update-utmp-runlevel.service", "no utmp readers"),
    ("modprobe@dm_mod.service", "no device mapper"),
    ("modprobe@loop.service", "no loop devices"),
    ("modprobe@fuse.service", "no FUSE"),
    ("modprobe@configfs.service", "no configfs"),
    ("sys-fs-fuse-connections.mount", "no FUSE"),
    ("sys-kernel-config.mount", "no configfs"),
    ("sys-kernel-debug.mount", "no debugfs users"),
    ("sys-kernel-tracing.mount", "no tracing users"),
    ("dev-hugepages.mount", "no huge pages"),
    ("proc-sys-fs-binfmt_misc.automount", "no foreign binaries"),
    ("systemd-binfmt.service", "no foreign binaries"),
    ("systemd-pcrphase.service", "no TPM"),
    ("systemd-pcrphase-sysinit.service", "no TPM"),
    ("systemd-repart.service", "fixed disk layout"),
    ("systemd-ask-password-wall.path", "no passwords to ask for"),
    (
        "systemd-ask-password-console.path",
        "no passwords to ask for",
    ),
    ("systemd-tmpfiles-clean.timer", "VMs live minutes"),
    (
        "systemd-remount-fs.service",
        "the initramfs mounts / rw,noatime",
    ),
    (
        "systemd-sysusers.service",
        "the node layer runs sysusers in the initramfs; packages create their users at build time",
    ),
    ("systemd-pstore.service", "no pstore"),
    (
        "systemd-logind.service",
        "no dbus in the image, no logins to track; tests use the backdoor",
    ),
    (
        "kmod-static-nodes.service",
        "static /dev nodes for modules we never load",
    ),
    (
        "systemd-tmpfiles-setup-dev.service",
        "devtmpfs already has the nodes; it delays udevd (and so networkd) by ~0.5 s under TCG",
    ),
    (
        "systemd-machine-id-commit.service",
        "machine-id is a regular file",
    ),
    ("apt-daily.timer", "no package updates in a test VM"),
    ("apt-daily-upgrade.timer", "no package updates in a test VM"),
    ("dpkg-db-backup.timer", "no backups in a test VM"),
    ("e2scrub_all.timer", "no fs maintenance in a test VM"),
    ("e2scrub_reap.service", "no fs maintenance in a test VM"),
    ("fstrim.timer", "no fs maintenance in a test VM"),
    (
        "dev-mqueue.mount",
        "no POSIX message queue users; ~1 s of boot under TCG",
    ),
    (
        "systemd-user-sessions.service",
        "/run/nologin is never created (its tmpfiles entry is masked); getty@tty1 waited for it",
    ),
];

/// Generators disabled in tuned images (each costs 0.1-0.25 s of CPU under TCG).
pub const DISABLED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-system-update-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-debug-generator",
    "systemd-sysv-generator",
    "systemd-getty-generator",
    "systemd-fstab-generator",
];

/// udev rules masked in tuned images (`/etc/udev/rules.d/<name>` -> /dev/null): hardware a test
/// VM does not have or does not need (persistent storage links would run blkid on /dev/vda;
/// seats and uaccess are for logind, which is masked).
pub const MASKED_UDEV_RULES: &[&str] = &[
    "55-dm.rules",
    "60-autosuspend.rules",
    "60-block.rules",
    "60-cdrom_id.rules",
    "60-evdev.rules",
    "60-fido-id.rules",
    "60-infiniband.rules",
    "60-input-id.rules",
    "60-persistent-alsa.rules",
    "60-persistent-input.rules",
    "60-persistent-storage-dm.rules",
    "60-persistent-storage-tape.rules",
    "60-persistent-storage.rules",
    "60-persistent-v4l.rules",
    "60-sensor.rules",
    "64-btrfs.rules",
    "70-camera.rules",
    "70-joystick.rules",
    "70-memory.rules",
    "70-mouse.rules",
    "70-power-switch.rules",
    "70-touchpad.rules",
    "70-uaccess.rules",
    "71-seat.rules",
    "73-seat-late.rules",
    "75-probe_mtd.rules",
    "78-sound-card.rules",
    "85-hwclock.rules",
    "95-dm-notify.rules",
    "96-e2scrub.rules",
];

/// tmpfiles.d entries masked in tuned images (`/etc/tmpfiles.d/<name>` -> /dev/null):
/// `systemd-nologin.conf` creates `/run/nologin` at boot, which only the masked
/// `systemd-user-sessions.service` would remove (non-root logins would stay refused).
pub const MASKED_TMPFILES: &[&str] = &["systemd-nologin.conf"];

/// Modules udev would load for nothing under TCG (the default CPU advertises SVM, so kvm_amd).
pub const BLACKLIST: &str = "blacklist kvm\nblacklist kvm_amd\nblacklist kvm_intel\nblacklist serio_raw\nblacklist pcspkr\nblacklist floppy\nblacklist powernow_k8\nblacklist acpi_cpufreq\nblacklist qemu_fw_cfg\nblacklist autofs4\nblacklist ip_tables\n";

/// Files removed from tuned images.
pub const REMOVED_PATHS: &[(&str, &str)] = &[
    (
        "/etc/resolv.conf",
        "copied from the build host; guests have no DNS",
    ),
    (
        "/var/cache/apt",
        "package cache (rebuilt by apt when needed)",
    ),
    (
        "/var/lib/apt/lists",
        "package lists (derived builds run apt-get update)",
    ),
    ("/var/log/apt", "build logs"),
    (
        "/etc/modules-load.d/modules.conf",
        "Debian's link to /etc/modules, which lists no module; without it systemd-modules-load \
         (1 s of a TCG boot, ahead of sysctl and networkd) is skipped. A node loads modules with \
         its own file in /etc/modules-load.d/",
    ),
    ("/var/log/dpkg.log", "build logs"),
];

/// The customisation steps for `profile`, given the backdoor's guest files.
pub fn steps(profile: Profile, backdoor: &BackdoorInstall, machine_id: &str) -> Vec<Step> {
    let mut s = Vec::new();
    // Common to both profiles.
    s.push(file("/etc/hostname", "machinist\n", 0o644));
    s.push(file(
        "/etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    ));
    s.push(file("/etc/fstab", FSTAB, 0o644));
    s.push(file("/etc/machine-id", format!("{machine_id}\n"), 0o444));
    s.push(file(APPLY_LAYER_PATH, APPLY_LAYER_SCRIPT, 0o755));
    for (path, contents, mode) in &backdoor.files {
        s.push(file(path, contents.clone(), *mode));
    }
    for (path, target) in &backdoor.symlinks {
        s.push(link(path, target));
    }
    // networkd on (the node layer configures NICs by MAC), no DNS.
    s.push(link(
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    ));
    s.push(link(
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    ));
    for (path, _) in REMOVED_PATHS {
        s.push(Step::Remove {
            path: (*path).into(),
        });
    }
    match profile {
        Profile::Stock => {
            // Debian's initramfs applies the layer too (busybox is added for it at build time).
            s.push(file(
                "/etc/initramfs-tools/scripts/init-bottom/machinist-layer",
                STOCK_INITRAMFS_HOOK,
                0o755,
            ));
        }
        Profile::Tuned => {
            s.push(link(
                "/etc/systemd/system/default.target",
                "/lib/systemd/system/multi-user.target",
            ));
            // As on NixOS, multi-user.target pulls in network-online.target (reached when
            // systemd-networkd-wait-online sees every VLAN NIC configured), so scripts can wait
            // for it and units ordered after it start once the addresses are there.
            s.push(link(
                "/etc/systemd/system/multi-user.target.wants/network-online.target",
                "/lib/systemd/system/network-online.target",
            ));
            for (unit, _) in MASKED_UNITS {
                s.push(link(&format!("/etc/systemd/system/{unit}"), "/dev/null"));
            }
            for t in MASKED_TMPFILES {
                s.push(link(&format!("/etc/tmpfiles.d/{t}"), "/dev/null"));
            }
            for r in MASKED_UDEV_RULES {
                s.push(link(&format!("/etc/udev/rules.d/{r}"), "/dev/null"));
            }
            for g in DISABLED_GENERATORS {
                s.push(link(
                    &format!("/etc/systemd/system-generators/{g}"),
                    "/dev/null",
                ));
            }
            s.push(Step::Remove {
                path: "/etc/systemd/system/timers.target.wants".into(),
            });
            s.push(file(
                "/etc/systemd/system/systemd-networkd.service",
                NETWORKD_UNIT,
                0o644,
            ));
            for unit in UNSANDBOXED_UNITS {
                s.push(file(
                    &format!("/etc/systemd/system/{unit}.d/10-machinist-no-sandbox.conf"),
                    NO_SANDBOX_DROPIN,
                    0o644,
                ));
            }
            s.push(file(UDEV_TRIGGER_DROPIN_PATH, UDEV_TRIGGER_DROPIN, 0o644));
            s.push(file("/etc/modprobe.d/machinist-tcg.conf", BLACKLIST, 0o644));
            s.push(file(
                "/etc/systemd/journald.conf.d/10-machinist.conf",
                "[Journal]\nStorage=volatile\nForwardToConsole=no\n",
                0o644,
            ));
            s.push(file(
                "/etc/systemd/system.conf.d/10-machinist.conf",
                "[Manager]\nDefaultTimeoutStartSec=60s\nDefaultTimeoutStopSec=10s\n",
                0o644,
            ));
            // Debian's initramfs is not used by tuned images (the tiny one is).
            s.push(file(
                "/etc/initramfs-tools/update-initramfs.conf",
                "update_initramfs=no\nbackup_initramfs=no\n",
                0o644,
            ));
        }
    }
    s
}

/// Debian 12's `systemd-networkd.service` (systemd 252) with one change: it is not ordered after
/// `systemd-udevd.service` (upstream keeps that ordering only for tun/tap devices, which test
/// nodes do not create; networkd waits for udev to initialise each link anyway). networkd then
/// starts in parallel with udevd instead of after it: udevd's start was on the critical path to
/// `multi-user.target`.
pub const NETWORKD_UNIT: &str = "\
# Debian 12's unit (systemd 252) without After=systemd-udevd.service (machinist tuned image).
[Unit]
Description=Network Configuration
Documentation=man:systemd-networkd.service(8)
Documentation=man:org.freedesktop.network1(5)
ConditionCapability=CAP_NET_ADMIN
DefaultDependencies=no
After=systemd-networkd.socket network-pre.target systemd-sysusers.service systemd-sysctl.service
Before=network.target multi-user.target shutdown.target initrd-switch-root.target
Conflicts=shutdown.target initrd-switch-root.target
Wants=systemd-networkd.socket network.target

[Service]
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_RAW
BusName=org.freedesktop.network1
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_RAW
DeviceAllow=char-* rw
ExecStart=!!/lib/systemd/systemd-networkd
ExecReload=networkctl reload
FileDescriptorStoreMax=512
LockPersonality=yes
MemoryDenyWriteExecute=yes
NoNewPrivileges=yes
ProtectProc=invisible
ProtectClock=yes
ProtectControlGroups=yes
ProtectHome=yes
ProtectKernelLogs=yes
ProtectKernelModules=yes
ProtectSystem=strict
Restart=on-failure
RestartKillSignal=SIGUSR2
RestartSec=0
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_PACKET
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RuntimeDirectory=systemd/netif
RuntimeDirectoryPreserve=yes
SystemCallArchitectures=native
SystemCallErrorNumber=EPERM
SystemCallFilter=@system-service
Type=notify
User=systemd-network
WatchdogSec=3min

[Install]
WantedBy=multi-user.target
Also=systemd-networkd.socket
Alias=dbus-org.freedesktop.network1.service
";

/// Where [`UDEV_TRIGGER_DROPIN`] goes.
pub const UDEV_TRIGGER_DROPIN_PATH: &str =
    "/etc/systemd/system/systemd-udev-trigger.service.d/10-machinist.conf";

/// Coldplug only the devices a test node needs udev for: network interfaces (renamed to
/// `vlan<N>` by the layer's `.link` files, and configured by networkd only once udev has seen
/// them) and block devices. Debian's unit replays every device (about 220 on our machine type),
/// which costs 1.5-3 s of a TCG boot; devices added later are handled by udevd as usual, and the
/// initramfs has already loaded the virtio drivers.
pub const UDEV_TRIGGER_DROPIN: &str = "\
# machinist tuned image: coldplug network and block devices only; udevd handles later events as usual.
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=net --subsystem-match=block
";

/// The boot-critical daemons whose sandboxing is turned off in tuned images (see
/// [`NO_SANDBOX_DROPIN`]).
pub const UNSANDBOXED_UNITS: &[&str] = &[
    "systemd-journald.service",
    "systemd-udevd.service",
    "systemd-networkd.service",
];

/// A drop-in that resets the sandboxing of [`UNSANDBOXED_UNITS`]: seccomp filters, BPF
/// address/device filters and mount namespaces are each compiled or set up at every start, which
/// costs tenths of a second per daemon under TCG, on the critical path of every boot; a throw-away
/// test VM gains nothing from them. Users, capabilities and runtime directories are unchanged.
pub const NO_SANDBOX_DROPIN: &str = "\
# machinist tuned image: no sandboxing for boot-critical daemons (cost under TCG, no value in a test VM).
[Service]
SystemCallFilter=
SystemCallArchitectures=
RestrictAddressFamilies=
RestrictNamespaces=no
RestrictRealtime=no
RestrictSUIDSGID=no
MemoryDenyWriteExecute=no
LockPersonality=no
IPAddressDeny=
DeviceAllow=
PrivateMounts=no
ProtectSystem=no
ProtectHome=no
ProtectProc=default
ProtectClock=no
ProtectControlGroups=no
ProtectKernelLogs=no
ProtectKernelModules=no
ProtectHostname=no
";

/// /etc/fstab: empty, because the initramfs already mounted / rw,noatime (an entry would make
/// systemd wait for udev to announce dev-vda.device and run fsck/remount units).
pub const FSTAB: &str =
    "# / is mounted rw,noatime by the initramfs (root=/dev/vda rw); nothing else to mount.\n";

/// Packages every image has.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "bash",
    "coreutils",
    "iproute2",
    "netcat-openbsd",
    "procps",
    "kmod",
    "nftables",
    "iputils-ping",
    "linux-image-cloud-amd64",
];

/// Extra packages of stock images (busybox so Debian's initramfs can run apply-layer).
pub const STOCK_EXTRA_PACKAGES: &[&str] = &["busybox"];

/// initramfs-tools hook of stock images: apply the appended layer like the tiny initrd does.
pub const STOCK_INITRAMFS_HOOK: &str = r#"#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
if [ -d /machinist-layer ]; then
	sh "${rootmnt}/usr/lib/machinist/apply-layer" --root "${rootmnt}" /machinist-layer || echo "machinist: apply-layer failed"
fi
"#;
