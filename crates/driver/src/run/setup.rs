//! Setting up a run from a validated declaration: output and run directories, the log, the
//! async runtime, the switches (one per VLAN), the images (built once, cached) and the
//! machines (declared, not started), then the watchdog of the global timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use machinist_guest::{ImageCache, ImageSpec, NetworkPlan, NodeConfig, NodeLayer, Progress};
use machinist_netsim::{Switch, SwitchConfig};

use super::TestRun;
use crate::backend::container::{ContainerBackend, ContainerNic};
use crate::backend::qemu::{BootSpec, NicSpec, QemuBackend};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::log::{Event, Logger};
use crate::machine::Machine;
use crate::node::Node;
use crate::polling::Registry;
use crate::settle::{BootBoard, Booting};
use crate::timeouts::{TimeoutScale, Timeouts};
use crate::vlan::VLan;

/// A validated test declaration, as the run needs it.
pub(crate) struct Declaration {
    pub(crate) name: String,
    pub(crate) nodes: BTreeMap<String, NodeConfig>,
    pub(crate) global_timeout: Duration,
    pub(crate) boot_deadline: Duration,
    pub(crate) output_dir: Option<PathBuf>,
    pub(crate) keep_state: bool,
    pub(crate) logger: Option<Logger>,
    pub(crate) image_cache: Option<ImageCache>,
    pub(crate) print_serial: bool,
    pub(crate) warm_start: Option<bool>,
}

/// A machine as the boot board holds it.
pub(super) fn booting(m: &Arc<Machine>) -> Weak<dyn Booting> {
    let b: Arc<dyn Booting> = m.clone();
    Arc::downgrade(&b)
}

impl TestRun {
    /// Sets up a validated declaration: the output and run directories, the log, the runtime,
    /// the switches, the images and the machines (declared, not started).
    pub(crate) fn start(decl: Declaration) -> Result<TestRun> {
        let scale = TimeoutScale::from_env()?;
        let timeouts = Timeouts::new(scale, decl.boot_deadline, decl.global_timeout);
        let logger = decl.logger.clone().unwrap_or_else(Logger::stderr);
        logger.set_print_serial(decl.print_serial);
        let out_dir = decl
            .output_dir
            .clone()
            .map_or_else(|| default_output_dir(&decl.name), Ok)?;
        std::fs::create_dir_all(&out_dir).map_err(|e| {
            Error::io(
                format!("creating output directory {}", out_dir.display()),
                e,
            )
        })?;
        remove_stale_artefacts(&out_dir);
        let json_path = out_dir.join("log.jsonl");
        logger
            .write_json_to(&json_path)
            .map_err(|e| Error::io(format!("creating {}", json_path.display()), e))?;
        if !scale.is_identity() {
            logger.log(
                None,
                &format!(
                    "timeouts are scaled by {} (MACHINIST_TIMEOUT_SCALE)",
                    scale.factor()
                ),
            );
        }
        let run_dir = make_run_dir(&logger, decl.keep_state)?;
        crate::orphans::register_dir(run_dir.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("machinist-rt")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the tokio runtime", e))?;
        let (abort_tx, _) = tokio::sync::watch::channel(None);
        // Never trust /dev/kvm without a probe: decided once per process (cached per host).
        let accel = machinist_qemu::accel::choose();
        logger.log(None, &format!("accelerator: {accel}"));
        let ctx = Arc::new(Ctx {
            logger: logger.clone(),
            handle: rt.handle().clone(),
            timeouts,
            run_dir: run_dir.clone(),
            out_dir: out_dir.clone(),
            abort_tx,
            interrupt_tx: tokio::sync::watch::channel(0).0,
            polling: Registry::new(),
            keep_state: decl.keep_state,
            warm_start: decl
                .warm_start
                .unwrap_or_else(crate::warm::warm_start_from_env),
            boots: BootBoard::default(),
            accel: accel.accel,
        });
        let global_timeout = timeouts.global();
        let mut run = TestRun {
            name: decl.name.clone(),
            ctx: ctx.clone(),
            nodes: BTreeMap::new(),
            machines: BTreeMap::new(),
            extra: Arc::new(Mutex::new(Vec::new())),
            vlans: BTreeMap::new(),
            poller: Mutex::new(None),
            rt: Some(rt),
            watchdog: None,
            started: Instant::now(),
            plan_nodes: decl.nodes.clone(),
            image_cache: decl
                .image_cache
                .clone()
                .unwrap_or_else(ImageCache::from_env),
            finished: false,
            _forward: crate::log::forward::attach(&logger),
        };
        run.setup()?;
        run.watchdog = Some(super::watchdog::Watchdog::start(
            ctx,
            global_timeout,
            run.machines.values().cloned().collect(),
            run.extra.clone(),
        ));
        logger.log(
            None,
            &format!(
                "Test will time out and terminate in {} seconds",
                global_timeout.as_secs()
            ),
        );
        Ok(run)
    }

    /// Builds the network plan, the switches, the images and the machines (nothing boots).
    fn setup(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let pairs: Vec<(&str, &NodeConfig)> = self
            .plan_nodes
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        let plan = NetworkPlan::new(&pairs);
        // Switches first: they must listen before any QEMU starts.
        let mut vlan_nrs: Vec<u8> = plan
            .nodes()
            .flat_map(|n| n.interfaces.iter().map(|i| i.vlan))
            .collect();
        vlan_nrs.sort_unstable();
        vlan_nrs.dedup();
        for nr in vlan_nrs {
            let cfg = SwitchConfig::new(nr, ctx.run_dir.join(format!("vlan{nr}")))
                .with_pcap(ctx.out_dir.join(format!("vlan{nr}.pcap")));
            let sw = Switch::start(cfg).map_err(|e| {
                Error::backend(None, format!("starting the switch of vlan {nr}"), e)
            })?;
            self.vlans.insert(
                nr,
                VLan {
                    nr,
                    switch: Arc::new(sw),
                },
            );
        }
        // Images: one per distinct package set, built once and cached.
        let mut images: Vec<(ImageSpec, machinist_guest::Image)> = Vec::new();
        let specs: Vec<ImageSpec> = {
            let mut v: Vec<ImageSpec> = pairs.iter().map(|(_, c)| ImageSpec::for_node(c)).collect();
            v.sort_by_key(|a| format!("{a:?}"));
            v.dedup();
            v
        };
        for spec in specs {
            let name = spec.name();
            let img = ctx
                .logger
                .nested(None, &format!("ensuring image {name}"), || {
                    let began = Instant::now();
                    let cached = matches!(self.image_cache.lookup(&spec), Ok(Some(_)));
                    let img = self
                        .image_cache
                        .ensure(&spec, Progress::Lines)
                        .map_err(|e| Error::backend(None, format!("building image {name}"), e))?;
                    ctx.logger.event(Event::ImageReady {
                        image: name.clone(),
                        built: !cached,
                        seconds: began.elapsed().as_secs_f64(),
                    });
                    Ok::<_, Error>(img)
                })?;
            images.push((spec, img));
        }
        for (name, cfg) in &pairs {
            let planned = plan.node(name).cloned().ok_or_else(|| {
                Error::Internal(format!("node `{name}` is missing from the network plan"))
            })?;
            let want = ImageSpec::for_node(cfg);
            let img = images
                .iter()
                .find(|(s, _)| *s == want)
                .map(|(_, i)| i.clone())
                .ok_or_else(|| Error::Internal(format!("no image was made for node `{name}`")))?;
            let layer =
                NodeLayer::render(name, cfg, &plan).map_err(|e| Error::Invalid(e.to_string()))?;
            let m = build_machine(&ctx, name, cfg, &planned, &img, &layer, &self.vlans)?;
            self.nodes.insert(
                name.to_string(),
                Node {
                    name: name.to_string(),
                    config: (*cfg).clone(),
                    plan: planned,
                },
            );
            ctx.boots.register(booting(&m));
            self.machines.insert(name.to_string(), m);
        }
        Ok(())
    }
}

/// `$MACHINIST_OUTPUT_DIR/<name>`, else `<tmp>/machinist-out-<uid>/<name>`: a directory of this
/// user's own (mode 0700, owner checked), so another user of a shared host cannot plant or read
/// artefacts there.
fn default_output_dir(name: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MACHINIST_OUTPUT_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join(name));
    }
    let uid = nix::unistd::getuid().as_raw();
    let base = std::env::temp_dir().join(format!("machinist-out-{uid}"));
    private_dir(&base, uid)?;
    Ok(base.join(name))
}

/// Makes `dir` (mode 0700) or checks that the existing one is a real directory of `uid` that
/// nobody else can write; refuses it otherwise.
fn private_dir(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("checking {}", dir.display()), e))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(Error::Io {
            what: format!(
                "refusing the output directory {}: it is not a directory of uid {uid} that only \
                 its owner can write (remove it, or set MACHINIST_OUTPUT_DIR or --output)",
                dir.display()
            ),
            cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    Ok(())
}

/// Artefacts of an earlier run in the same output directory would be misleading.
fn remove_stale_artefacts(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("-console.log")
                || name.ends_with(".pcap")
                || name.ends_with("-final.png")
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A fresh short run directory `/tmp/mn-XXXXXX` (unix socket paths must stay < 108 bytes),
/// owned by this process (see [`crate::stale`]); run directories of killed test processes are
/// removed first.
fn make_run_dir(logger: &Logger, keep_state: bool) -> Result<PathBuf> {
    let base = crate::stale::run_dir_base();
    for d in crate::stale::remove_stale_run_dirs(&base) {
        logger.log(
            None,
            &format!(
                "removed {}: left behind by a test process that was killed",
                d.display()
            ),
        );
    }
    let template = base.join("mn-XXXXXX");
    let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
        Error::io(
            format!("creating run directory {}", template.display()),
            e.into(),
        )
    })?;
    if !keep_state {
        crate::stale::claim(&dir)
            .map_err(|e| Error::io(format!("writing the owner of {}", dir.display()), e))?;
    }
    Ok(dir)
}

/// The kernel command line, QEMU NICs and resources of a node.
pub(super) fn build_machine(
    ctx: &Arc<Ctx>,
    name: &str,
    cfg: &NodeConfig,
    planned: &machinist_guest::PlannedNode,
    img: &machinist_guest::Image,
    layer: &NodeLayer,
    vlans: &BTreeMap<u8, VLan>,
) -> Result<Arc<Machine>> {
    let is_container = cfg.backend == Some(machinist_guest::NodeBackend::Container);
    if is_container {
        container_problems(name, cfg)?;
    }
    let mut nics = Vec::new();
    let mut machine_vlans = Vec::new();
    for iface in &planned.interfaces {
        let vlan = vlans.get(&iface.vlan).cloned().ok_or_else(|| {
            Error::Internal(format!("node `{name}`: vlan {} has no switch", iface.vlan))
        })?;
        // A container's port is its TAP device, attached at each start; the port exists from
        // now on, as a VM's does, so that policy can name it before the start.
        let port = if is_container {
            vlan.switch.reserve_tap_port(name).map_err(|e| {
                Error::backend(
                    Some(name),
                    format!("adding a port on vlan {}", iface.vlan),
                    e,
                )
            })?;
            PathBuf::new()
        } else {
            vlan.switch.add_stream_port(name).map_err(|e| {
                Error::backend(
                    Some(name),
                    format!("adding a port on vlan {}", iface.vlan),
                    e,
                )
            })?
        };
        nics.push(NicSpec {
            vlan: vlan.clone(),
            id: iface.qemu_id(),
            mac: iface.mac.clone(),
            port,
        });
        machine_vlans.push(vlan);
    }
    let mut append = machinist_guest::KERNEL_CMDLINE.to_string();
    for a in &cfg.kernel_args {
        append.push(' ');
        append.push_str(a);
    }
    let spec = BootSpec {
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
        disk: img.disk.clone(),
        disk_format: "raw".into(),
        layer_cpio: layer
            .to_cpio()
            .map_err(|e| Error::backend(Some(name), "packing the node layer", e))?,
        append,
        memory_mib: cfg.memory_mib,
        cores: cfg.cores,
        accel: ctx.accel,
        nics,
        user_nic: planned
            .user_interface
            .as_ref()
            .map(|u| ("nic-user0".to_string(), u.mac.clone())),
        extra_args: cfg.qemu_args.clone(),
    };
    let warm = crate::warm::plan(ctx.warm_start, cfg, img);
    let backend = QemuBackend::new(name, spec, ctx.run_dir.join(name));
    let machine = Machine::new(name, ctx.clone(), backend, warm, machine_vlans);
    if !is_container {
        return Ok(Arc::new(machine));
    }
    let ct_nics = planned
        .interfaces
        .iter()
        .zip(&machine.vlans)
        .map(|(iface, vlan)| ContainerNic {
            vlan: vlan.clone(),
            id: iface.qemu_id(),
            guest_name: iface.name.clone(),
            alt_name: iface.alt_name.clone(),
            mac: iface.mac.clone(),
        })
        .collect();
    let ct = ContainerBackend::new(
        name,
        img.disk.clone(),
        layer.clone(),
        ctx.run_dir.join(name),
        ct_nics,
    );
    Ok(Arc::new(machine.with_container(ct)))
}

/// What a container node cannot have (QEMU and kernel arguments, QEMU's user network), and a
/// host that cannot run containers: a declaration error before anything boots.
fn container_problems(name: &str, cfg: &NodeConfig) -> Result<()> {
    let mut why = Vec::new();
    if !cfg.qemu_args.is_empty() {
        why.push("qemu_args (a container has no QEMU)".to_string());
    }
    if !cfg.kernel_args.is_empty() {
        why.push("kernel_args (a container runs on the host's kernel)".to_string());
    }
    if cfg.user_net {
        why.push("user_net (QEMU's user network; not available to containers)".to_string());
    }
    if !why.is_empty() {
        return Err(Error::Invalid(format!(
            "node `{name}` runs as a container but sets {}; remove them or run it as a VM",
            why.join(", ")
        )));
    }
    if let Some(p) = crate::backend::container::host_problem() {
        return Err(Error::Invalid(format!(
            "node `{name}` runs as a container, which this host cannot run: {p}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_output_base_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let dir = tmp.path().join("out");
        private_dir(&dir, uid).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Reused as it is.
        private_dir(&dir, uid).unwrap();
        // World-writable, a symlink, or another owner: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&dir, uid).is_err());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(private_dir(&link, uid).is_err());
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(private_dir(&other, uid + 1).is_err());
    }
}
