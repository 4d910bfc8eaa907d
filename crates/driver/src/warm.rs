//! Warm start: the snapshot cache.
//!
//! A *snapshot* is one booted, settled guest of a given image and machine shape, saved with a live
//! migration to a file (`state`) plus its frozen disk (`disk.qcow2`, a qcow2 layer over the image).
//! Test machines of the same shape start from it with `-incoming "exec:cat state"` and their own
//! overlay on the frozen disk, then get their identity (node layer, MACs, clock, entropy) through
//! the backdoor (see `machine::warm`).
//!
//! Layout: `<cache>/snapshots/<key>/{disk.qcow2,state,manifest.json}`, where `key` is the sha256 of
//! the QEMU version, the image hash and the builder's whole QEMU argv with run-specific paths and
//! MACs normalised (memory, cores, machine type, accelerator, display, NICs and their backends...).
//! Built in `.tmp-<key>-<pid>/`, published with `rename`; `.<key>.lock` (flock) makes concurrent
//! builders wait and re-check.
//!
//! The snapshot is taken with the test NICs unconfigured (no node layer at all) after
//! `systemctl is-system-running --wait`, the firewall modules loaded and `sync`; it is paused
//! (`stop`) and migrated in one pass (restores are `cont`inued). Before migrating,
//! both backdoor shells are *armed*: they block in `read` on their console, so that after a
//! restore the host's first write wakes them. The main shell then reads a length-prefixed identity
//! script and a length-prefixed layer archive in bulk (`head -c`), runs the script, and only then prints the greeting and execs a fresh shell.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use machinist_backdoor::{ConnectOptions, Shell};
use machinist_qemu::{QemuCommand, QemuProcess, Qmp};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::machine::BootSpec;

/// Bumped when the guest-side protocol of a snapshot (arming, identity script) changes.
pub(crate) const FORMAT: &str = "machinist-warm-7";

/// Runs, once before the snapshot is saved, every program the identity step runs, so that their
/// pages are in the saved page cache: under TCG a program's first run after a restore costs up
/// to a second of disk reads (perl: 1.14 s cold, 0.14 s cached).
const PREWARM: &str = "(perl -e 1; tar --version; find --version; mawk -W version; chown --version; \
     systemd-sysusers --version; systemd-tmpfiles --version; nft --version; ip -V; date; \
     head --version; rm --version; mkdir --version; chmod --version; sh -c :) >/dev/null 2>&1 || true";

/// What the armed shells print before blocking.
const ARMED: &str = "MACHINIST-ARMED";

/// Where the restored main shell writes the identity script, its log and exit code.
pub(crate) const RESTORE_SCRIPT: &str = "/run/machinist-restore.sh";
/// The identity script's output.
pub(crate) const RESTORE_LOG: &str = "/run/machinist-restore.log";
/// The identity script's exit code.
pub(crate) const RESTORE_RC: &str = "/run/machinist-restore.rc";
/// Where the restored main shell writes the node layer's archive.
pub(crate) const RESTORE_LAYER_TAR: &str = "/run/machinist-layer.tar";

/// The environment switch: warm start is on unless `MACHINIST_WARM_START=0` (or `false`, `no`,
/// `off`).
pub const WARM_START_ENV: &str = "MACHINIST_WARM_START";

/// Whether warm start is on by default (when [`WARM_START_ENV`] is unset).
pub const WARM_START_DEFAULT: bool = true;

/// Whether warm start is enabled by the environment (default: [`WARM_START_DEFAULT`]).
pub fn warm_start_from_env() -> bool {
    match std::env::var(WARM_START_ENV).ok().as_deref().map(str::trim) {
        Some("0" | "false" | "no" | "off") => false,
        Some("1" | "true" | "yes" | "on") => true,
        _ => WARM_START_DEFAULT,
    }
}

/// The MAC the snapshot builder gives NIC number `i` (the restored guest renames and re-addresses
/// the interface that has it).
pub(crate) fn builder_mac(i: usize) -> String {
    format!("52:54:00:ee:00:{:02x}", i + 1)
}

/// Where snapshots live: `<machinist_qemu::cache_dir()>/snapshots`.
pub fn snapshot_root() -> PathBuf {
    machinist_qemu::cache_dir().join("snapshots")
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) key: String,
    pub(crate) dir: PathBuf,
    pub(crate) disk: PathBuf,
    pub(crate) state: PathBuf,
}

impl Snapshot {
    fn at(root: &Path, key: &str) -> Snapshot {
        let dir = root.join(key);
        Snapshot {
            key: key.to_string(),
            disk: dir.join("disk.qcow2"),
            state: dir.join("state"),
            dir,
        }
    }

    fn is_complete(&self) -> bool {
        self.dir.join("manifest.json").is_file() && self.disk.is_file() && self.state.is_file()
    }

    /// Removes a snapshot that failed to restore (renamed first, so a concurrent reader never
    /// sees half a directory).
    pub(crate) fn discard(&self) {
        let trash =
            self.dir
                .with_file_name(format!(".discard-{}-{}", self.key, std::process::id()));
        if std::fs::rename(&self.dir, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        }
    }
}

/// A snapshot could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the warm-start snapshot {key} failed: {message}")]
pub struct WarmError {
    /// The snapshot key.
    pub key: String,
    /// What went wrong (and what to do).
    pub message: String,
}

/// The builder's machine: the node's boot spec with builder MACs and ports under `dir`.
fn builder_spec(spec: &BootSpec, dir: &Path) -> BootSpec {
    let mut s = spec.clone();
    for (i, n) in s.nics.iter_mut().enumerate() {
        n.mac = builder_mac(i);
        n.port = dir.join(format!("port{i}"));
    }
    let k = s.nics.len();
    if let Some((_, mac)) = s.user_nic.as_mut() {
        *mac = builder_mac(k);
    }
    s
}

fn builder_command(spec: &BootSpec, dir: &Path, plain_initrd: &Path) -> QemuCommand {
    let s = builder_spec(spec, dir);
    crate::machine::command_for(
        "snapshot",
        &s,
        dir,
        &dir.join("disk.qcow2"),
        plain_initrd,
        false,
    )
}

/// The cache key of a machine shape (see the module docs).
pub(crate) fn shape_key(
    spec: &BootSpec,
    image_hash: &str,
    plain_initrd: &Path,
    qemu_version: &str,
) -> String {
    let cmd = builder_command(spec, Path::new("/snapshot"), plain_initrd);
    let mut h = Sha256::new();
    for part in [FORMAT, qemu_version, image_hash] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for a in cmd.args() {
        h.update(a.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Returns the snapshot for `key`, building it if needed (concurrent builders wait on a lock).
/// `log` receives progress lines. Blocking; runs the async parts on `handle`.
pub(crate) fn ensure(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
    plain_initrd: &Path,
    key: &str,
    scale: &dyn Fn(Duration) -> Duration,
    log: &dyn Fn(&str),
) -> Result<Snapshot, WarmError> {
    let root = snapshot_root();
    let err = |m: String| WarmError {
        key: key.to_string(),
        message: m,
    };
    let snap = Snapshot::at(&root, key);
    if snap.is_complete() {
        return Ok(snap);
    }
    std::fs::create_dir_all(&root).map_err(|e| err(format!("creating {}: {e}", root.display())))?;
    let _lock = lock(&root, key, scale(Duration::from_secs(900)), log).map_err(err)?;
    if snap.is_complete() {
        return Ok(snap);
    }
    if snap.dir.exists() {
        // Incomplete (no manifest): never used; rebuild.
        let _ = std::fs::remove_dir_all(&snap.dir);
    }
    let started = Instant::now();
    log(&format!(
        "warm start: building snapshot {key} (one cold boot, then saved for later machines)"
    ));
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(format!("creating {}: {e}", tmp.display())))?;
    let r = build(handle, spec, plain_initrd, &tmp, scale);
    if let Err(m) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err(m));
    }
    let manifest = serde_json::json!({
        "format": FORMAT,
        "key": key,
        "qemu": machinist_qemu::qemu_version().map(|v| v.text).unwrap_or_default(),
        "disk_backing": spec.disk,
        "build_seconds": started.elapsed().as_secs_f64(),
    });
    let publish = || -> std::io::Result<()> {
        for f in ["disk.qcow2", "state"] {
            let p = tmp.join(f);
            let mut perm = std::fs::metadata(&p)?.permissions();
            perm.set_readonly(true);
            std::fs::set_permissions(&p, perm)?;
        }
        let mut f = std::fs::File::create(tmp.join("manifest.json"))?;
        f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &snap.dir)
    };
    publish().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        err(format!("publishing {}: {e}", snap.dir.display()))
    })?;
    log(&format!(
        "warm start: snapshot {key} built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        snap.dir.display()
    ));
    Ok(snap)
}

struct LockGuard(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn lock(
    root: &Path,
    key: &str,
    timeout: Duration,
    log: &dyn Fn(&str),
) -> Result<LockGuard, String> {
    let path = root.join(format!(".{key}.lock"));
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("opening the lock {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(LockGuard(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if !said {
                    log("warm start: waiting for another process building the same snapshot");
                    said = true;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "waited {} s for the lock {}; remove it if no build is running",
                        timeout.as_secs(),
                        path.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err((_, e)) => return Err(format!("locking {}: {e}", path.display())),
        }
    }
}

/// The line that arms a backdoor shell on `device` (see the module docs). Only `head -c` reads
/// the wake-up bytes: it never reads more than asked, unlike bash's `read` on a tty, which would
/// swallow the payload behind the length.
pub(crate) fn arm_line(device: &str, with_payload: bool) -> String {
    let greet = machinist_backdoor::guest::GREETING;
    let run = if with_payload {
        format!(
            "__n=$(head -c 12); head -c \"$__n\" > {RESTORE_SCRIPT}; __n=$(head -c 12); head -c \"$__n\" > {RESTORE_LAYER_TAR}; bash {RESTORE_SCRIPT} </dev/null 2>&1 | tee {RESTORE_LOG} >/dev/ttyS0; echo ${{PIPESTATUS[0]}} > {RESTORE_RC}; "
        )
    } else {
        "head -c 1 >/dev/null; ".to_string()
    };
    // A console is read as bash's script file (as NixOS does); a serial port can be opened only
    // once, so bash keeps reading the already open port on stdin.
    let script = if device.starts_with("hvc") {
        format!(" /dev/{device}")
    } else {
        String::new()
    };
    format!(
        "kill \"$__m_rp\" 2>/dev/null; exec 3>&-; echo {ARMED}; {run}echo 'machinist backdoor: connecting to host on /dev/{device}... (restored)' >&2; echo '{greet}'; PS1= exec bash --norc{script}\n"
    )
}

fn build(
    handle: &tokio::runtime::Handle,
    spec: &BootSpec,
    plain_initrd: &Path,
    tmp: &Path,
    scale: &dyn Fn(Duration) -> Duration,
) -> Result<(), String> {
    // Sockets need a short directory (108-byte limit); the cache path may be long.
    let sock_dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("mn-snap-XXXXXX"))
        .map_err(|e| format!("creating a socket directory in /tmp: {e}"))?;
    let r = (|| {
        let disk = sock_dir.join("disk.qcow2");
        machinist_qemu::overlay::create_qcow2_overlay(&spec.disk, &spec.disk_format, &disk)
            .map_err(|e| format!("creating the disk overlay: {e}"))?;
        let cmd = builder_command(spec, &sock_dir, plain_initrd);
        let state = tmp.join("state");
        let boot_t = scale(Duration::from_secs(300));
        let step_t = scale(Duration::from_secs(120));
        handle.block_on(build_async(
            cmd,
            spec.nics.len(),
            &sock_dir,
            &state,
            boot_t,
            step_t,
        ))?;
        // The disk moves next to the state (same filesystem as the cache: copy if not).
        if std::fs::rename(&disk, tmp.join("disk.qcow2")).is_err() {
            std::fs::copy(&disk, tmp.join("disk.qcow2"))
                .map_err(|e| format!("copying the frozen disk: {e}"))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&sock_dir);
    r
}

async fn build_async(
    cmd: QemuCommand,
    nports: usize,
    dir: &Path,
    state: &Path,
    boot_t: Duration,
    step_t: Duration,
) -> Result<(), String> {
    let bind = |p: PathBuf| {
        machinist_qemu::socket::bind_listener(&p)
            .map_err(|e| format!("binding {}: {e}", p.display()))
    };
    let shell_l = bind(dir.join("shell.sock"))?;
    let control_l = bind(dir.join("control.sock"))?;
    let qmp_l = bind(dir.join("qmp.sock"))?;
    // The NIC ports: accept and hold (the NICs stay unconfigured, nothing is sent).
    let mut port_tasks = Vec::new();
    for i in 0..nports {
        let l = bind(dir.join(format!("port{i}")))?;
        port_tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }));
    }
    let process = Arc::new(QemuProcess::spawn(&cmd).map_err(|e| format!("starting QEMU: {e}"))?);
    crate::orphans::install();
    let p2 = process.clone();
    let work = async {
        let t = Duration::from_secs(60);
        let qmp = Qmp::accept(&qmp_l, t)
            .await
            .map_err(|e| format!("QMP: {e}"))?;
        let main =
            machinist_qemu::socket::accept_within(&shell_l, t, "snapshot", "the shell console")
                .await
                .map_err(|e| e.to_string())?;
        let control =
            machinist_qemu::socket::accept_within(&control_l, t, "snapshot", "the control console")
                .await
                .map_err(|e| e.to_string())?;
        let mut opts = ConnectOptions::new("snapshot");
        opts.timeout = boot_t;
        let mut copts = ConnectOptions::new("snapshot/control");
        copts.device = machinist_backdoor::guest::CONTROL_DEVICE.to_string();
        copts.timeout = boot_t;
        let (main, control) =
            tokio::join!(Shell::connect(main, opts), Shell::connect(control, copts));
        let mut main = main.map_err(|e| format!("backdoor: {e}"))?;
        let control = control.map_err(|e| format!("control backdoor: {e}"))?;
        let mut ignore = |_: &[u8]| {};
        let settle = format!(
            "systemctl is-system-running --wait >/dev/null 2>&1; modprobe -a {} 2>/dev/null; {PREWARM}; sync",
            machinist_guest::units::NFTABLES_MODULES.join(" ")
        );
        main.execute(&settle, Some(step_t), &mut ignore)
            .await
            .map_err(|e| format!("waiting for the guest to settle: {e}"))?;
        arm(
            control.into_stream(),
            machinist_backdoor::guest::CONTROL_DEVICE,
            false,
            step_t,
        )
        .await?;
        let main_stream = arm(
            main.into_stream(),
            machinist_backdoor::guest::MAIN_DEVICE,
            true,
            step_t,
        )
        .await?;
        let uri = format!(
            "exec:cat > {}",
            machinist_guest::shell_quote(&state.to_string_lossy())
        );
        // Paused first: a live migration of a running MTTCG guest produced an inconsistent
        // image once (kernel oops in the restored guest); a stopped VM is copied in one pass.
        // The restored VM therefore comes up paused and gets a `cont`.
        qmp.stop().await.map_err(|e| format!("stop: {e}"))?;
        qmp.migrate(&uri)
            .await
            .map_err(|e| format!("migrate: {e}"))?;
        qmp.wait_migration(step_t)
            .await
            .map_err(|e| format!("migration to {}: {e}", state.display()))?;
        let _ = qmp.quit().await;
        drop(main_stream);
        Ok::<(), String>(())
    };
    let r = match p2.while_running(work).await {
        Ok(r) => r,
        Err(e) => Err(format!(
            "QEMU exited: {e}; stderr: {}",
            process.stderr_tail()
        )),
    };
    if tokio::time::timeout(Duration::from_secs(10), process.wait())
        .await
        .is_err()
    {
        process.start_kill();
        let _ = process.wait().await;
    }
    for t in port_tasks {
        t.abort();
    }
    r
}

async fn arm(
    mut s: Box<dyn machinist_backdoor::ShellStream>,
    device: &str,
    payload: bool,
    t: Duration,
) -> Result<Box<dyn machinist_backdoor::ShellStream>, String> {
    s.write_all(arm_line(device, payload).as_bytes())
        .await
        .map_err(|e| format!("arming the shell on {device}: {e}"))?;
    let mut seen = Vec::new();
    let r = tokio::time::timeout(t, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("console closed"));
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(ARMED.len()).any(|w| w == ARMED.as_bytes()) {
                return Ok(());
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(format!("arming the shell on {device}: {e}")),
        Err(_) => Err(format!(
            "the shell on {device} did not confirm arming within {} s (saw {:?})",
            t.as_secs(),
            String::from_utf8_lossy(&seen)
        )),
    }
}
