//! The host-wide VM test lock: one VM-booting test at a time on a small host.
//!
//! Slot 0 is `/tmp/machinist-vm-tests.lock` (the same file the shell `flock` command takes, so
//! `flock /tmp/machinist-vm-tests.lock cargo test` and code-level locking cooperate). With
//! `MACHINIST_VM_TESTS=N`, slots `1..N` are `/tmp/machinist-vm-tests.lock.<i>`.
//!
//! The lock file is opened with `O_NOFOLLOW` (a symlink planted at the path is refused, not
//! followed) and made world-accessible only when this process created it.
//!
//! If the lock is held by an *ancestor* of this process (e.g. the test runs under
//! `flock /tmp/machinist-vm-tests.lock cargo test`), it counts as ours: waiting for it would
//! deadlock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::QemuError;
use crate::publish::try_flock;

/// The lock file of slot 0.
pub const VM_LOCK_PATH: &str = "/tmp/machinist-vm-tests.lock";
/// How long [`VmTestLock::acquire`] waits by default (override: `MACHINIST_VM_LOCK_TIMEOUT`
/// in seconds).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A held VM test slot; released on drop.
///
/// Slots are counted in-process too, so threads of one test binary (plain `cargo test`) queue
/// even when an ancestor holds the file lock.
#[derive(Debug)]
pub struct VmTestLock {
    _file: Option<File>,
    path: PathBuf,
    inherited: bool,
    _slot: LocalSlot,
}

/// One of the in-process slots; returned on drop.
#[derive(Debug)]
struct LocalSlot;

fn local_slots() -> &'static (Mutex<usize>, Condvar) {
    static SLOTS: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    SLOTS.get_or_init(|| (Mutex::new(0), Condvar::new()))
}

impl LocalSlot {
    fn acquire(max: usize, deadline: Instant) -> Option<LocalSlot> {
        let (m, c) = local_slots();
        let mut used = m.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= max {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            used = c
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += 1;
        Some(LocalSlot)
    }
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        let (m, c) = local_slots();
        let mut used = m.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(1);
        c.notify_one();
    }
}

impl VmTestLock {
    /// Takes a VM test slot, waiting up to `MACHINIST_VM_LOCK_TIMEOUT` seconds (default 30 min).
    pub fn acquire() -> Result<VmTestLock, QemuError> {
        let timeout = std::env::var("MACHINIST_VM_LOCK_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LOCK_TIMEOUT);
        Self::acquire_timeout(timeout)
    }

    /// Takes a VM test slot, waiting at most `timeout`.
    pub fn acquire_timeout(timeout: Duration) -> Result<VmTestLock, QemuError> {
        let slots = std::env::var("MACHINIST_VM_TESTS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        Self::acquire_at(Path::new(VM_LOCK_PATH), slots, timeout)
    }

    /// Takes one of `slots` slots whose lock files are `base`, `base.1`, ... (for tests).
    fn acquire_at(base: &Path, slots: usize, timeout: Duration) -> Result<VmTestLock, QemuError> {
        let paths: Vec<PathBuf> = (0..slots).map(|i| slot_path(base, i)).collect();
        let started = Instant::now();
        let timeout_err = || QemuError::Timeout {
            name: "-".into(),
            what: format!(
                "a VM test slot ({}; see who holds it with `fuser -v {}`; \
                 MACHINIST_VM_TESTS=N allows N concurrent VM tests)",
                paths[0].display(),
                paths[0].display()
            ),
            timeout,
        };
        let slot = LocalSlot::acquire(slots, started + timeout).ok_or_else(timeout_err)?;
        let mut logged = false;
        loop {
            for p in &paths {
                let file = open(p)?;
                if matches!(try_flock(&file), Ok(true)) {
                    tracing::debug!("VM test lock {} taken", p.display());
                    return Ok(VmTestLock {
                        _file: Some(file),
                        path: p.clone(),
                        inherited: false,
                        _slot: slot,
                    });
                }
                if held_by_ancestor(&file) {
                    tracing::debug!(
                        "VM test lock {} is held by an ancestor process",
                        p.display()
                    );
                    return Ok(VmTestLock {
                        _file: None,
                        path: p.clone(),
                        inherited: true,
                        _slot: slot,
                    });
                }
            }
            if started.elapsed() >= timeout {
                return Err(timeout_err());
            }
            if !logged {
                tracing::info!("waiting for the VM test lock {}", paths[0].display());
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lock file of the slot held.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the slot is held by an ancestor process rather than by this guard.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }
}

fn slot_path(base: &Path, i: usize) -> PathBuf {
    if i == 0 {
        base.to_path_buf()
    } else {
        PathBuf::from(format!("{}.{i}", base.display()))
    }
}

/// Opens (creating if needed) a lock file without following a symlink at its path: in a shared
/// `/tmp`, another user could plant one pointing at a file of ours. Only a file this call created
/// is made world-accessible (0666, so other users can share the lock); an existing file's mode is
/// left alone. `flock` needs no write access, so an existing file is opened read-only.
fn open(p: &Path) -> Result<File, QemuError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let symlink_err = |e| {
        QemuError::io(
            format!(
                "refusing the VM test lock {p}: it is a symbolic link and is not followed                  (someone may have planted it); remove it (rm {p}) and retry",
                p = p.display()
            ),
            e,
        )
    };
    let other_err = |e| QemuError::io(format!("opening the VM test lock {}", p.display()), e);
    // The file can disappear between the two opens (someone removed it): try again a few times.
    for _ in 0..5 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
        {
            Ok(f) => {
                // Created by us: undo the umask so other users can take the lock too.
                let _ = f.set_permissions(std::fs::Permissions::from_mode(0o666));
                return Ok(f);
            }
            // O_EXCL: a symlink at the path is "exists" too, and is refused just below.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(other_err(e)),
        }
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(p)
        {
            Ok(f) => {
                let meta = f.metadata().map_err(other_err)?;
                if !meta.is_file() {
                    return Err(QemuError::io(
                        format!(
                            "refusing the VM test lock {p}: it is not a regular file; remove it                              (rm {p}) and retry",
                            p = p.display()
                        ),
                        std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    ));
                }
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(symlink_err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(other_err(e)),
        }
    }
    Err(other_err(std::io::Error::other(
        "it keeps disappearing while being opened",
    )))
}

/// Whether a flock on `file`'s inode is held by one of our ancestor processes (per /proc/locks).
fn held_by_ancestor(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let ino = meta.ino();
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let ancestors = ancestors();
    locks.lines().any(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            return false;
        }
        let Ok(pid) = f[4].parse::<u32>() else {
            return false;
        };
        let inode_ok = f[5].rsplit(':').next().and_then(|s| s.parse::<u64>().ok()) == Some(ino);
        inode_ok && ancestors.contains(&pid)
    })
}

fn ancestors() -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            break;
        };
        if ppid <= 1 {
            break;
        }
        out.push(ppid);
        pid = ppid;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_queue_threads_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vm.lock");
        let t = Duration::from_secs(10);
        let a = VmTestLock::acquire_at(&base, 1, t).unwrap();
        assert_eq!(a.path(), base.as_path());
        assert!(!a.is_inherited());
        let b2 = base.clone();
        let blocked = std::thread::spawn(move || {
            VmTestLock::acquire_at(&b2, 1, Duration::from_millis(200)).is_err()
        });
        assert!(blocked.join().unwrap(), "a second slot should not be free");
        // Another process (flock -n) cannot take it either.
        let st = std::process::Command::new("flock")
            .args(["-n", base.to_str().unwrap(), "true"])
            .status()
            .unwrap();
        assert!(!st.success());
        drop(a);
        let b = VmTestLock::acquire_at(&base, 1, t).unwrap();
        drop(b);
        // Two slots: two holders at once, on different files.
        let x = VmTestLock::acquire_at(&base, 2, t).unwrap();
        let y = VmTestLock::acquire_at(&base, 2, t).unwrap();
        assert_ne!(x.path(), y.path());
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let base = dir.path().join("vm.lock");
        std::os::unix::fs::symlink(&victim, &base).unwrap();
        let err = VmTestLock::acquire_at(&base, 1, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("symbolic link") && err.contains(&base.display().to_string()),
            "{err}"
        );
        assert!(err.contains("rm "), "says what to do: {err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode(&victim), 0o600, "the symlink's target was chmodded");
        // A dangling symlink: nothing is created at its target.
        let nowhere = dir.path().join("nowhere");
        let dangling = dir.path().join("dangling.lock");
        std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
        let err = open(&dangling).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!nowhere.exists(), "the lock was created through a symlink");
    }

    #[test]
    fn a_fifo_at_the_lock_path_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo.lock");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let err = open(&p).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn the_mode_is_set_only_on_a_file_created_here() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.lock");
        drop(open(&fresh).unwrap());
        assert_eq!(
            mode(&fresh),
            0o666,
            "a new lock file is shared with other users"
        );
        let existing = dir.path().join("existing.lock");
        std::fs::write(&existing, "").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
        let f = open(&existing).unwrap();
        assert!(
            try_flock(&f).unwrap(),
            "a read-only lock file can be locked"
        );
        assert_eq!(
            mode(&existing),
            0o640,
            "an existing file's mode was changed"
        );
    }

    #[test]
    fn ancestors_include_parent() {
        let a = ancestors();
        // SAFETY: getppid cannot fail.
        let ppid = unsafe { libc::getppid() } as u32;
        if ppid > 1 {
            assert_eq!(a.first(), Some(&ppid));
        }
    }
}
