//! The container backend: a node as a `systemd-nspawn --boot` container of the same cached
//! image a VM boots.
//!
//! Its root is an overlay: the image's raw ext4 file system loop-mounted read-only as the lower
//! layer (through the machine's pin of the image, so the cache is never written and a rebuilt
//! cache entry cannot change it) and a writable upper directory in the machine's run directory,
//! which survives a crash and a restart. Before each boot the node layer is applied to it by the
//! image's own `apply-layer`, as a VM's initramfs does. Both mounts live in a private mount
//! namespace of the container's host process (see [`process`]), so they vanish with it.
//!
//! The backdoor shells are the image's script, started per connection by a systemd socket unit
//! (`machinist_backdoor::guest::container_files`) on two unix sockets in a directory bound from
//! the run directory; the host connects once they exist ([`relay`]). The container's console is
//! the node's console log. It has no display, QMP monitor or console input: those operations
//! answer [`Unsupported`].

mod process;
mod relay;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use machinist_backdoor::guest as bd;
use machinist_guest::{LayerEntry, NodeLayer};

use self::process::NspawnProcess;
use super::{BackendKind, BoxFuture, Instance, ShellTransport, Unsupported};
use crate::ctx::Ctx;
use crate::error::{BoxError, Error, Result};
use crate::vlan::VLan;

/// The nspawn program (Debian package `systemd-container`).
pub(crate) const NSPAWN: &str = "systemd-nspawn";

/// The start script, run by `unshare` in the container's private mount and PID namespaces:
/// `script <machine dir> <image> <nspawn args...>`, with `MACHINIST_NICS` the NICs as
/// `<host interface>,<guest name>,<alternative name>,<MAC>` words. Mounts the root, applies the node layer (a
/// failure is reported on the console and the node boots anyway, as a VM's initramfs does),
/// makes the container's network namespace (bound to a file of this mount namespace only) and
/// moves each NIC's TAP device into it under its guest name, then becomes nspawn.
const START_SCRIPT: &str = r#"set -eu
d=$1 img=$2
shift 2
mount -o ro,noload,loop -- "$img" "$d/lower"
mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/root"
if sh "$d/root/usr/lib/machinist/apply-layer" --root "$d/root" "$d/layer"; then
	echo "machinist-container: node layer applied"
else
	echo "machinist-container: ERROR: apply-layer failed (status $?); booting anyway"
fi
: > "$d/netns"
unshare --net="$d/netns" true
for nic in ${MACHINIST_NICS:-}; do
	host=${nic%%,*} rest=${nic#*,}
	guest=${rest%%,*} rest=${rest#*,}
	alt=${rest%%,*} mac=${rest#*,}
	ip link set dev "$host" address "$mac"
	ip link set dev "$host" netns "$d/netns"
	nsenter --net="$d/netns" ip link set dev "$host" name "$guest"
	nsenter --net="$d/netns" ip link property add dev "$guest" altname "$alt"
done
# The node's kernel variables of its own network namespace (nspawn mounts /proc/sys read-only
# when it does not create the namespace itself, so systemd-sysctl skips them inside). Only net.*
# keys: any other would change the host's kernel.
s="$d/root/etc/sysctl.d/60-machinist-node.conf"
if [ -s "$s" ]; then
	sed -n 's|^\(net[./][^ =]*\) *= *\(.*\)$|\1 \2|p' "$s" | while read -r k v; do
		case $k in */*) p=$k ;; *) p=$(printf %s "$k" | tr . /) ;; esac
		printf '%s\n' "$v" | nsenter --net="$d/netns" tee "/proc/sys/$p" >/dev/null ||
			echo "machinist-container: WARNING: cannot set $k = $v"
	done
fi
exec systemd-nspawn --network-namespace-path="$d/netns" "$@"
"#;

/// Why this host cannot run container nodes, if it cannot (root, `systemd-nspawn`, `unshare`,
/// `nsenter`, `ip`, `/dev/net/tun`, overlayfs).
pub fn host_problem() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "container nodes need root (mounts, namespaces and systemd-nspawn); run the test as \
             root or use VMs"
                .into(),
        );
    }
    for (prog, pkg) in [
        (NSPAWN, "systemd-container"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ] {
        if find_in_path(prog).is_none() {
            return Some(format!(
                "{prog} not found: install the Debian package {pkg} (`cargo xtask deps` does)"
            ));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some(
            "/dev/net/tun is missing: container NICs are TAP devices (modprobe tun)".into(),
        );
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.trim_end().ends_with("overlay")) {
        return Some("the kernel has no overlay file system (modprobe overlay)".into());
    }
    None
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy.
fn cgroup2_host() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // SAFETY: a zeroed statfs is a valid out-parameter; the path is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) == 0
            && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// A container's NIC: a TAP device attached to its VLAN's switch, moved into the container.
#[derive(Debug, Clone)]
pub(crate) struct ContainerNic {
    /// The VLAN (its switch gets the TAP port, named after the machine).
    pub(crate) vlan: VLan,
    /// The NIC's id (`nic-vlan<v>`, as a VM's).
    pub(crate) id: String,
    /// The interface name in the container (`vlan<v>`).
    pub(crate) guest_name: String,
    /// Its alternative name (NixOS's `eth<i>`).
    pub(crate) alt_name: String,
    /// The MAC of the network plan.
    pub(crate) mac: String,
}

/// A host-unique TAP interface name (at most 15 bytes): `mn<pid>n<counter>` in hex.
fn tap_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("mn{:x}n{:x}", std::process::id(), n & 0xffff)
}

/// One node's container backend: what it boots and its directory in the run directory.
#[derive(Debug)]
pub(crate) struct ContainerBackend {
    name: String,
    image: PathBuf,
    layer: NodeLayer,
    dir: PathBuf,
    nics: Vec<ContainerNic>,
}

impl ContainerBackend {
    /// A container of `name` booting the raw root file system `image` with `layer`, its files in
    /// `dir`.
    pub(crate) fn new(
        name: &str,
        image: PathBuf,
        layer: NodeLayer,
        dir: PathBuf,
        nics: Vec<ContainerNic>,
    ) -> Self {
        ContainerBackend {
            name: name.to_string(),
            image,
            layer,
            dir,
            nics,
        }
    }

    /// A TAP device per NIC, attached to its switch (the port named after the machine; a
    /// restart reattaches the same port). Returns the `MACHINIST_NICS` words and the attached
    /// devices.
    fn attach_nics(&self) -> Result<(String, Vec<Tap>)> {
        let mut words = Vec::new();
        let mut fds = Vec::new();
        for n in &self.nics {
            let host = tap_name();
            let fd = machinist_netsim::tap::create(&host).map_err(|e| {
                Error::backend(
                    Some(&self.name),
                    format!("creating the TAP device of {}", n.id),
                    e,
                )
            })?;
            let ctl = self.io(
                || format!("duplicating the TAP descriptor of {}", n.id),
                fd.try_clone(),
            )?;
            n.vlan
                .switch
                .add_tap_port(&self.name, fd, &host)
                .map_err(|e| {
                    Error::backend(
                        Some(&self.name),
                        format!("attaching {host} to the switch of vlan {}", n.vlan.nr),
                        e,
                    )
                })?;
            words.push(format!("{host},{},{},{}", n.guest_name, n.alt_name, n.mac));
            fds.push(Tap {
                nic_id: n.id.clone(),
                ctl,
                vlan: n.vlan.clone(),
                interface: host,
            });
        }
        Ok((words.join(" "), fds))
    }

    /// What this backend runs nodes on.
    pub(crate) fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    /// The directory bound into the container at the backdoor's socket directory.
    fn socket_dir(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn io<T>(&self, what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(format!("{}: {}", self.name, what()), e))
    }

    /// The machine's directories (the upper layer is kept from one boot to the next), a fresh
    /// copy of the node layer with the container's backdoor units, no stale sockets. Returns the
    /// pin of the image.
    fn prepare(&self) -> Result<PathBuf> {
        for d in ["lower", "root", "upper", "work", "host"] {
            let p = self.dir.join(d);
            self.io(
                || format!("creating {}", p.display()),
                std::fs::create_dir_all(&p),
            )?;
        }
        for s in bd::CONTAINER_SOCKETS {
            let _ = std::fs::remove_file(self.socket_dir().join(s));
        }
        let layer = self.dir.join("layer");
        let _ = std::fs::remove_dir_all(&layer);
        self.io(
            || format!("writing the node layer to {}", layer.display()),
            write_layer(&self.layer, &layer),
        )?;
        machinist_guest::pin_image(&self.image, &self.dir).map_err(|e| {
            Error::backend(
                Some(&self.name),
                "pinning the disk image into the run directory",
                e,
            )
        })
    }

    /// The `unshare` + start script + `systemd-nspawn` command line.
    fn command(&self, pinned: &Path, nics: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--fork",
            "--pid",
            "--mount-proc",
            "--mount",
            "--propagation",
            "private",
            "--kill-child=SIGKILL",
            "--",
            "sh",
            "-c",
            START_SCRIPT,
            "machinist-container",
        ])
        .arg(&self.dir)
        .arg(pinned)
        .args([
            "--quiet",
            // This host's init need not be systemd: no scope unit, no machined registration.
            "--keep-unit",
            "--register=no",
            "--boot",
            "--console=read-only",
            // Its own network namespace: networkd, nftables and carrier changes need this
            // (nspawn grants it by itself only with --private-network).
            "--capability=CAP_NET_ADMIN",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ])
        // A machine name is a host name: a node's `_` becomes `-` (as its host name does).
        .arg(format!("--machine={}", self.name.replace('_', "-")))
        .arg(format!("--directory={}", self.dir.join("root").display()))
        .arg(format!(
            "--bind={}:{}",
            self.socket_dir().display(),
            bd::CONTAINER_SOCKET_DIR
        ));
        c.env("MACHINIST_NICS", nics);
        if !cgroup2_host() {
            // A cgroup v1 host: the container gets the legacy hierarchy too.
            c.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0");
        }
        c
    }

    /// Boots the container (the upper layer of an earlier boot is kept); returns at once, with
    /// the transport its backdoor shells will greet on.
    pub(crate) fn start(&self, ctx: &Ctx) -> Result<(Arc<dyn Instance>, ShellTransport)> {
        if let Some(why) = host_problem() {
            return Err(Error::backend(
                Some(&self.name),
                "starting the container",
                why,
            ));
        }
        let pinned = self.prepare()?;
        let (nics, taps) = self.attach_nics()?;
        let _g = ctx.handle.enter();
        let process =
            NspawnProcess::spawn(&self.name, self.command(&pinned, &nics)).map_err(|e| {
                Error::backend(
                    Some(&self.name),
                    "starting systemd-nspawn (through unshare)",
                    e,
                )
            })?;
        let exit = process.exit_watch();
        let mut relays = Vec::new();
        let mut ends = Vec::new();
        for s in bd::CONTAINER_SOCKETS {
            let (near, task) = self.io(
                || "making a socket pair".into(),
                relay::connect_later(self.socket_dir().join(s), exit.clone()),
            )?;
            ends.push(near);
            relays.push(task);
        }
        let control = ends.pop();
        let main = ends.pop();
        let (Some(main), Some(control)) = (main, control) else {
            return Err(Error::Internal(
                "container: two shell sockets expected".into(),
            ));
        };
        Ok((
            Arc::new(ContainerInstance {
                name: self.name.clone(),
                process,
                relays,
                taps,
            }),
            ShellTransport { main, control },
        ))
    }
}

/// Writes the node layer (and the container's backdoor units) as the directory tree
/// `apply-layer` reads.
fn write_layer(layer: &NodeLayer, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries: Vec<(String, LayerEntry)> = layer
        .entries()
        .iter()
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    for f in bd::container_files() {
        entries.push((
            format!("root{}", f.path),
            LayerEntry::File {
                contents: f.contents.as_bytes().to_vec(),
                mode: f.mode,
            },
        ));
    }
    for l in bd::container_symlinks() {
        entries.push((
            format!("root{}", l.path),
            LayerEntry::Symlink {
                target: l.target.to_string(),
            },
        ));
    }
    std::fs::create_dir_all(dir.join("root"))?;
    for (path, entry) in entries {
        let p = dir.join(&path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match entry {
            LayerEntry::File { contents, mode } => {
                std::fs::write(&p, contents)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            }
            LayerEntry::Symlink { target } => {
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p)?;
            }
        }
    }
    Ok(())
}

/// A NIC's TAP device as attached to its switch.
struct Tap {
    nic_id: String,
    /// A second descriptor of the device (for its carrier).
    ctl: OwnedFd,
    vlan: VLan,
    interface: String,
}

/// A running container.
pub(crate) struct ContainerInstance {
    name: String,
    process: NspawnProcess,
    relays: Vec<tokio::task::JoinHandle<()>>,
    taps: Vec<Tap>,
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        for r in &self.relays {
            r.abort();
        }
        self.unplug();
    }
}

impl ContainerInstance {
    /// Takes its TAP devices off the switches. Once its processes are dead its network
    /// namespace may still answer for a moment (the kernel frees it asynchronously): a crashed
    /// or stopped container must be off the network at once. Harmless when done twice, or
    /// after a restart attached new devices.
    fn unplug(&self) {
        for t in &self.taps {
            if let Err(e) = t.vlan.switch.detach_tap(&self.name, &t.interface) {
                tracing::debug!(machine = %self.name, "detaching {}: {e}", t.interface);
            }
        }
    }

    fn unsupported(lacks: &'static str) -> Unsupported {
        Unsupported {
            kind: BackendKind::Container,
            lacks,
        }
    }
}

/// An [`Unsupported`] as the seam's boxed error.
#[derive(Debug, thiserror::Error)]
#[error("the {} backend has no {}", .0.kind, .0.lacks)]
struct UnsupportedError(Unsupported);

impl Instance for ContainerInstance {
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

    fn write_console(&self, _bytes: &[u8]) -> std::result::Result<(), BoxError> {
        Err(UnsupportedError(Self::unsupported("console input")).into())
    }

    fn start_kill(&self) {
        self.process.start_kill();
    }

    fn kill_and_wait(&self, grace: Duration) {
        self.process.start_kill();
        self.unplug();
        let _ = self.process.wait_timeout_blocking(grace);
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.process.wait().await;
            self.unplug();
        })
    }

    fn power_off_now(&self) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.process.start_kill();
            self.unplug();
            Ok(())
        })
    }

    fn set_link<'a>(
        &'a self,
        nic_id: &'a str,
        up: bool,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            let tap = self
                .taps
                .iter()
                .find(|t| t.nic_id == nic_id)
                .ok_or_else(|| format!("no NIC {nic_id}"))?;
            machinist_netsim::tap::set_carrier(tap.ctl.as_raw_fd(), up)
                .map_err(|e| format!("setting the carrier of {nic_id}: {e}").into())
        })
    }

    fn qmp(&self) -> std::result::Result<&machinist_qemu::Qmp, Unsupported> {
        Err(Self::unsupported("QMP monitor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_script_passes_sh_syntax_check() {
        let out = Command::new("sh")
            .args(["-n", "-c", START_SCRIPT])
            .output()
            .expect("run sh -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_layer_tree_has_the_node_files_and_the_container_units() {
        let cfg = machinist_guest::NodeConfig::new()
            .file(machinist_guest::FileSpec::new("/etc/motd", "hi"))
            .container();
        let plan = machinist_guest::NetworkPlan::new(&[("n1", &cfg)]);
        let layer = NodeLayer::render("n1", &cfg, &plan).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_layer(&layer, tmp.path()).unwrap();
        let root = tmp.path().join("root");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "hi"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname"))
                .unwrap()
                .trim(),
            "n1"
        );
        assert!(root
            .join("etc/systemd/system/machinist-backdoor-ct.socket")
            .is_file());
        let mask = root.join("etc/systemd/system/machinist-backdoor@vport0p1.service");
        assert_eq!(std::fs::read_link(mask).unwrap(), Path::new("/dev/null"));
    }
}
