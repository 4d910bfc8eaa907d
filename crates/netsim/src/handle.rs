//! The public handle: start a switch, add ports, control the policy, read counters.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Impairment, SwitchConfig, Target};
use crate::core::{Core, Limits, RegEntry, Shared};
use crate::engine::{Command, Commands, Engine};
use crate::error::{check_socket_path, NetsimError};
use crate::pcap::PcapWriter;
use crate::stats::{PortCounters, PortKind, PortStats};

/// Namespace of [`Switch::start`].
pub struct Switch;

/// A running switch (one VLAN). Every method takes `&self` and may be called from any thread,
/// async or not; changes take effect from the next frame. Dropping it shuts the switch down.
pub struct SwitchHandle {
    shared: Arc<Shared>,
    tx: Arc<Commands>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    vde_dir: PathBuf,
    pcap: Option<PathBuf>,
    stream_paths: Mutex<Vec<PathBuf>>,
}

/// How long shutdown waits for the switch thread.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Switch {
    /// Create `cfg.dir` (and `<dir>/vde`), bind the VDE control socket, open the pcap file and
    /// start the switch on its own thread. Returns once the switch accepts clients.
    pub fn start(cfg: SwitchConfig) -> Result<SwitchHandle, NetsimError> {
        let vlan = cfg.vlan;
        let vde_dir = cfg.dir.join("vde");
        std::fs::create_dir_all(&vde_dir).map_err(|source| NetsimError::CreateDir {
            path: vde_dir.clone(),
            source,
        })?;
        let ctl_path = vde_dir.join("ctl");
        check_socket_path(&ctl_path)?;
        // Data sockets are `<vde_dir>/NNN.M`: make sure those fit too.
        check_socket_path(&vde_dir.join("000.0000000000"))?;
        let ctl = bind_listener(&ctl_path)?;
        let pcap = match &cfg.pcap {
            Some(p) => Some(PcapWriter::create(p).map_err(|source| NetsimError::Pcap {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let shared = Arc::new(Shared::new(vlan));
        let limits = Limits {
            queue_frames: cfg.queue_frames.max(1),
            queue_bytes: cfg.queue_bytes.max(70_000),
            max_frame: cfg.max_frame.clamp(14, 16 << 20),
        };
        let thread_err = |source| NetsimError::Thread { vlan, source };
        let epfd = crate::engine::epoll_create().map_err(thread_err)?;
        let tx = Arc::new(Commands::new().map_err(thread_err)?);
        let core = Core::new(
            shared.clone(),
            limits,
            cfg.seed,
            pcap,
            std::os::fd::AsRawFd::as_raw_fd(&epfd),
        );
        let engine =
            Engine::new(core, epfd, tx.clone(), ctl, vde_dir.clone()).map_err(thread_err)?;
        let thread = std::thread::Builder::new()
            .name(format!("netsim-vlan{vlan}"))
            .spawn(move || engine.run())
            .map_err(thread_err)?;
        tracing::info!(vlan, dir = %cfg.dir.display(), "netsim: switch started");
        Ok(SwitchHandle {
            shared,
            tx,
            thread: Mutex::new(Some(thread)),
            dir: cfg.dir,
            vde_dir,
            pcap: cfg.pcap,
            stream_paths: Mutex::new(Vec::new()),
        })
    }
}

/// Bind a listening socket, replacing a stale socket file nobody listens on.
fn bind_listener(path: &Path) -> Result<UnixListener, NetsimError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let l = UnixListener::bind(path).map_err(|source| NetsimError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|source| NetsimError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(l)
}

fn is_vde_name(name: &str) -> bool {
    name.len() > 3 && name.starts_with("vde") && name[3..].chars().all(|c| c.is_ascii_digit())
}

fn check_port_name(name: &str) -> Result<(), NetsimError> {
    let bad = |why| {
        Err(NetsimError::InvalidPortName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if is_vde_name(name) {
        return bad("names vde<N> are reserved for VDE clients");
    }
    Ok(())
}

impl SwitchHandle {
    /// The switch's VLAN.
    pub fn vlan(&self) -> u8 {
        self.shared.vlan
    }

    /// The switch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Add a port for machine `name` and bind its listening socket `<dir>/<name>.sock` now,
    /// before QEMU starts. QEMU joins with
    /// `-netdev stream,id=..,server=off,addr.type=unix,addr.path=<returned path>`.
    /// One client at a time; a new client may connect after the previous one left
    /// (e.g. a restarted QEMU).
    pub fn add_stream_port(&self, name: &str) -> Result<PathBuf, NetsimError> {
        check_port_name(name)?;
        let path = self.dir.join(format!("{name}.sock"));
        check_socket_path(&path)?;
        let vlan = self.shared.vlan;
        let mut reg = self
            .shared
            .registry
            .lock()
            .map_err(|_| NetsimError::Stopped { vlan })?;
        if reg.iter().any(|e| e.name == name) {
            return Err(NetsimError::DuplicatePort {
                name: name.to_string(),
                vlan,
            });
        }
        let listener = bind_listener(&path)?;
        let stats = Arc::new(PortStats::default());
        reg.push(RegEntry {
            name: name.to_string(),
            kind: PortKind::Stream { path: path.clone() },
            stats: stats.clone(),
        });
        drop(reg);
        // The switch thread creates the port slot; policy set meanwhile applies once it exists.
        self.tx
            .send(Command::AddStream {
                name: name.to_string(),
                listener,
                stats,
            })
            .then_some(())
            .ok_or(NetsimError::Stopped { vlan })?;
        if let Ok(mut p) = self.stream_paths.lock() {
            p.push(path.clone());
        }
        Ok(path)
    }

    /// Declare the TAP port `name` before its device exists (a container not started yet), so
    /// that `block()`, partitions and impairments can name it from the start;
    /// [`SwitchHandle::add_tap_port`] attaches a device to it later.
    pub fn reserve_tap_port(&self, name: &str) -> Result<(), NetsimError> {
        check_port_name(name)?;
        let vlan = self.shared.vlan;
        let mut reg = self
            .shared
            .registry
            .lock()
            .map_err(|_| NetsimError::Stopped { vlan })?;
        if reg.iter().any(|e| e.name == name) {
            return Err(NetsimError::DuplicatePort {
                name: name.to_string(),
                vlan,
            });
        }
        let stats = Arc::new(PortStats::default());
        reg.push(RegEntry {
            name: name.to_string(),
            kind: PortKind::Tap {
                interface: String::new(),
            },
            stats: stats.clone(),
        });
        drop(reg);
        self.tx
            .send(Command::AddSlot {
                name: name.to_string(),
                stats,
            })
            .then_some(())
            .ok_or(NetsimError::Stopped { vlan })
    }

    /// Attach the TAP device `tap` (see [`crate::tap::create`]) as the port `name`: the switch
    /// reads and writes its frames. A port of that name made earlier by this method gets the new
    /// device (a restarted container), keeping its counters and policy; its old device is
    /// closed. `interface` is the device's host name, for counters and summaries. The port is
    /// closed when the device goes away (a read error, e.g. its network namespace ended).
    pub fn add_tap_port(
        &self,
        name: &str,
        tap: std::os::fd::OwnedFd,
        interface: &str,
    ) -> Result<(), NetsimError> {
        check_port_name(name)?;
        let vlan = self.shared.vlan;
        let mut reg = self
            .shared
            .registry
            .lock()
            .map_err(|_| NetsimError::Stopped { vlan })?;
        let kind = PortKind::Tap {
            interface: interface.to_string(),
        };
        let stats = match reg.iter_mut().find(|e| e.name == name) {
            Some(e) if matches!(e.kind, PortKind::Tap { .. }) => {
                e.kind = kind;
                e.stats.clone()
            }
            Some(_) => {
                return Err(NetsimError::DuplicatePort {
                    name: name.to_string(),
                    vlan,
                })
            }
            None => {
                let stats = Arc::new(PortStats::default());
                reg.push(RegEntry {
                    name: name.to_string(),
                    kind,
                    stats: stats.clone(),
                });
                stats
            }
        };
        drop(reg);
        self.tx
            .send(Command::AddTap {
                name: name.to_string(),
                fd: tap,
                iface: interface.to_string(),
                stats,
            })
            .then_some(())
            .ok_or(NetsimError::Stopped { vlan })
    }

    /// Closes port `name`'s connection if it is the TAP device `interface` (attached with
    /// [`SwitchHandle::add_tap_port`]); returns once the switch has done it, so no frame passes
    /// afterwards. A newer device on the port is left alone, so a late call is harmless.
    pub fn detach_tap(&self, name: &str, interface: &str) -> Result<(), NetsimError> {
        let vlan = self.shared.vlan;
        let (ack, ack_rx) = std::sync::mpsc::channel();
        let cmd = Command::DetachTap {
            name: name.to_string(),
            iface: interface.to_string(),
            ack,
        };
        if !self.tx.send(cmd) {
            return Err(NetsimError::Stopped { vlan });
        }
        ack_rx
            .recv_timeout(SHUTDOWN_TIMEOUT)
            .map_err(|_| NetsimError::Timeout {
                vlan,
                what: "detaching a TAP device".into(),
                timeout: SHUTDOWN_TIMEOUT,
            })
    }

    /// Directory for VDE clients: QEMU `-netdev vde,id=..,sock=<this>`, or `vde_plug <this>`.
    /// VDE ports are named `vde<N>` (`N` = the port a client asked for, else the lowest free).
    pub fn vde_dir(&self) -> &Path {
        &self.vde_dir
    }

    /// The pcap capture file, if capturing.
    pub fn pcap_path(&self) -> Option<&Path> {
        self.pcap.as_deref()
    }

    fn known(&self) -> Vec<String> {
        self.shared
            .registry
            .lock()
            .map(|r| r.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default()
    }

    fn require(&self, name: &str) -> Result<(), NetsimError> {
        let known = self.known();
        if known.iter().any(|k| k == name) {
            Ok(())
        } else {
            Err(NetsimError::UnknownPort {
                name: name.to_string(),
                vlan: self.shared.vlan,
                known: known.join(", "),
            })
        }
    }

    fn update(&self, f: impl FnOnce(&mut crate::policy::Policy)) {
        let mut p = match self.shared.policy.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        f(&mut p);
        self.shared.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Drop every frame to and from `port`; its carrier stays up (a silent partition: the guest
    /// sees no link change, unlike QMP `set_link`, which drops the carrier).
    pub fn block(&self, port: &str) -> Result<(), NetsimError> {
        self.require(port)?;
        tracing::info!(vlan = self.shared.vlan, port, "netsim: block");
        self.update(|p| {
            p.blocked.insert(port.to_string());
        });
        Ok(())
    }

    /// Undo [`block`](Self::block).
    pub fn unblock(&self, port: &str) -> Result<(), NetsimError> {
        self.require(port)?;
        tracing::info!(vlan = self.shared.vlan, port, "netsim: unblock");
        self.update(|p| {
            p.blocked.remove(port);
        });
        Ok(())
    }

    /// Split the ports into groups: frames between different groups are dropped. Ports named in
    /// no group form one more group together. Replaces any earlier partition.
    pub fn partition<G, S>(&self, groups: G) -> Result<(), NetsimError>
    where
        G: IntoIterator,
        G::Item: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let vlan = self.shared.vlan;
        let groups: Vec<Vec<String>> = groups
            .into_iter()
            .map(|g| g.into_iter().map(|s| s.as_ref().to_string()).collect())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for name in groups.iter().flatten() {
            self.require(name)?;
            if !seen.insert(name.clone()) {
                return Err(NetsimError::InvalidPartition {
                    vlan,
                    why: format!("port {name:?} is in more than one group"),
                });
            }
        }
        tracing::info!(vlan, ?groups, "netsim: partition");
        self.update(|p| p.groups = Some(groups));
        Ok(())
    }

    /// Remove the partition.
    pub fn heal(&self) {
        tracing::info!(vlan = self.shared.vlan, "netsim: heal");
        self.update(|p| p.groups = None);
    }

    /// Set (or with `Impairment::default()`, remove) the impairment of a port's cable or of a
    /// pair of ports. A frame from A to B goes through A's, then B's, then the pair's
    /// impairment: losses and duplications are drawn independently, delays add up.
    pub fn set_impairment(
        &self,
        target: impl Into<Target>,
        impairment: Impairment,
    ) -> Result<(), NetsimError> {
        let target = target.into().normalized();
        match &target {
            Target::Port(p) => self.require(p)?,
            Target::Pair(a, b) => {
                self.require(a)?;
                self.require(b)?;
            }
        }
        impairment
            .validate()
            .map_err(|why| NetsimError::InvalidImpairment {
                target: target.to_string(),
                vlan: self.shared.vlan,
                why,
            })?;
        tracing::info!(vlan = self.shared.vlan, %target, %impairment, "netsim: impairment");
        self.update(|p| {
            if impairment.is_none() {
                p.impairments.remove(&target);
            } else {
                p.impairments.insert(target, impairment);
            }
        });
        Ok(())
    }

    /// Remove every impairment (blocks and partitions stay).
    pub fn clear_impairments(&self) {
        self.update(|p| p.impairments.clear());
    }

    /// A snapshot of every port's counters, in the order ports were added.
    pub fn counters(&self) -> Vec<PortCounters> {
        self.shared
            .registry
            .lock()
            .map(|r| {
                r.iter()
                    .map(|e| e.stats.snapshot(&e.name, &e.kind))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The counters of one port.
    pub fn port_counters(&self, name: &str) -> Result<PortCounters, NetsimError> {
        self.require(name)?;
        self.counters()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| NetsimError::UnknownPort {
                name: name.into(),
                vlan: self.shared.vlan,
                known: String::new(),
            })
    }

    /// Learned MAC addresses as `(mac, port)`, e.g. `("52:54:00:12:01:02", "server")`
    /// (refreshed by the switch every 200 ms).
    pub fn mac_table(&self) -> Vec<(String, String)> {
        self.shared
            .macs
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, p)| (crate::mac::format_mac(*k), p.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A readable multi-line report: ports, counters, drops, policy, learned MACs.
    pub fn summary(&self) -> String {
        let policy = match self.shared.policy.lock() {
            Ok(p) => p.describe(),
            Err(p) => p.into_inner().describe(),
        };
        crate::summary::render(
            self.shared.vlan,
            self.pcap.as_deref(),
            &self.counters(),
            &policy,
            &self.mac_table(),
        )
    }

    /// Block until port `name` has a connected client (e.g. QEMU came up), or time out.
    /// A `vde<N>` name may be waited for before its client has appeared.
    pub fn wait_connected(&self, name: &str, timeout: Duration) -> Result<(), NetsimError> {
        if !is_vde_name(name) {
            self.require(name)?;
        }
        let vlan = self.shared.vlan;
        let deadline = Instant::now() + timeout;
        let mut reg = self
            .shared
            .registry
            .lock()
            .map_err(|_| NetsimError::Stopped { vlan })?;
        loop {
            let connected = reg
                .iter()
                .find(|e| e.name == name)
                .is_some_and(|e| e.stats.connected.load(Ordering::Acquire));
            if connected {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NetsimError::Timeout {
                    vlan,
                    what: format!("a client on port {name}"),
                    timeout,
                });
            }
            reg = self
                .shared
                .cv
                .wait_timeout(reg, deadline - now)
                .map_err(|_| NetsimError::Stopped { vlan })?
                .0;
        }
    }

    /// Write buffered pcap records to the file now (the switch also does it every 200 ms and
    /// at shutdown).
    pub fn flush_pcap(&self) -> Result<(), NetsimError> {
        let vlan = self.shared.vlan;
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if !self.tx.send(Command::FlushPcap(ack_tx)) {
            return Err(NetsimError::Stopped { vlan });
        }
        ack_rx
            .recv_timeout(SHUTDOWN_TIMEOUT)
            .map_err(|_| NetsimError::Timeout {
                vlan,
                what: "the pcap flush".into(),
                timeout: SHUTDOWN_TIMEOUT,
            })
    }

    /// Stop the switch: close every client, flush the pcap, remove the socket files.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(thread) = thread else { return };
        let _ = self.tx.send(Command::Shutdown);
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!(
                vlan = self.shared.vlan,
                "netsim: switch thread did not stop within 5 s"
            );
        }
        if let Ok(paths) = self.stream_paths.lock() {
            for p in paths.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
        let _ = std::fs::remove_file(self.vde_dir.join("ctl"));
        let _ = std::fs::remove_dir(&self.vde_dir);
        tracing::info!(vlan = self.shared.vlan, "netsim: switch stopped");
    }
}

impl Drop for SwitchHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SwitchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchHandle")
            .field("vlan", &self.shared.vlan)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}
