//! Building a cache entry once, safely across threads and processes: lock, build aside, publish.
//!
//! Every cache of Machinist (test kernels, guest images and their bootstrap trees, warm-start
//! snapshots) follows the same pattern:
//!
//! 1. look for the finished entry `<dir>/<key>` (no lock: a published entry never changes);
//! 2. take [`CacheLock`] on `<dir>/.<key>.lock` ([`lock_path`]), then look again: another
//!    process may have built it while this one waited;
//! 3. build into a [`Staging`] directory `<dir>/.tmp-<key>-<pid>/`, removed on drop unless
//!    published;
//! 4. [`Staging::publish`] renames it into place (an older entry is moved aside first and removed
//!    afterwards), so a reader sees either no entry or a whole one.
//!
//! The lock is an exclusive `flock` on its own file: released by the kernel when the holder
//! exits, however it exits. A lock file removed (or replaced) by its previous holder while a
//! waiter had it open is noticed, and the waiter locks the file now at the path instead.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiter retries a held lock.
const POLL: Duration = Duration::from_millis(100);

/// Errors of [`CacheLock`] and [`Staging`]; each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The lock stayed held by another process (or thread) past the deadline.
    #[error(
        "waited {} s for the lock {path}: another process is building the same cache entry; \
         see who holds it with `fuser -v {path}`, or remove the lock file if no build is running",
        waited.as_secs(),
        path = path.display()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long was waited.
        waited: Duration,
    },
    /// A file operation failed.
    #[error("{doing} {}: {source}; check the permissions and free space of its directory", path.display())]
    Io {
        /// What was being done, e.g. `locking` or `publishing the cache entry`.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl PublishError {
    fn io(doing: &'static str, path: &Path, source: std::io::Error) -> Self {
        PublishError::Io {
            doing,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The lock file of cache entry `key` in `dir`: `<dir>/.<key>.lock`.
pub fn lock_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!(".{key}.lock"))
}

/// Tries to take an exclusive `flock` on `file` without waiting: `Ok(true)` if taken, `Ok(false)`
/// if another open file description holds it (another process, or another `open` in this one).
pub(crate) fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(e),
    }
}

/// An exclusive lock on a cache entry, held until dropped (or until the process exits).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
    path: PathBuf,
}

/// One attempt at the lock.
enum Attempt {
    Taken(File),
    Busy,
    /// Locked a file that is no longer the one at the path: try again at once.
    Stale,
}

impl CacheLock {
    /// Takes the lock file `path` (created if missing), waiting at most `timeout` for another
    /// holder to release it. `on_wait` runs once, the first time the lock is found held (to log
    /// that this process waits).
    pub fn acquire(
        path: impl Into<PathBuf>,
        timeout: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<CacheLock, PublishError> {
        let path = path.into();
        let started = Instant::now();
        let mut on_wait = Some(on_wait);
        loop {
            match attempt(&path)? {
                Attempt::Taken(file) => return Ok(CacheLock { _file: file, path }),
                Attempt::Stale => continue,
                Attempt::Busy => {}
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(PublishError::LockTimeout { path, waited });
            }
            if let Some(f) = on_wait.take() {
                f();
            }
            std::thread::sleep(POLL.min(timeout - waited));
        }
    }

    /// Takes the lock file `path` if nobody holds it; `None` if somebody does.
    pub fn try_acquire(path: impl Into<PathBuf>) -> Result<Option<CacheLock>, PublishError> {
        let path = path.into();
        loop {
            match attempt(&path)? {
                Attempt::Taken(file) => return Ok(Some(CacheLock { _file: file, path })),
                Attempt::Stale => continue,
                Attempt::Busy => return Ok(None),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn attempt(path: &Path) -> Result<Attempt, PublishError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| PublishError::io("opening the lock", path, e))?;
    lock_opened(file, path)
}

/// Locks `file`, opened from `path` earlier.
fn lock_opened(file: File, path: &Path) -> Result<Attempt, PublishError> {
    if !try_flock(&file).map_err(|e| PublishError::io("locking", path, e))? {
        return Ok(Attempt::Busy);
    }
    // The previous holder may have removed the lock file after this process opened it: a lock
    // on that orphan would exclude nobody who opens the path now.
    let held = file
        .metadata()
        .map_err(|e| PublishError::io("locking", path, e))?;
    match std::fs::metadata(path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(Attempt::Taken(file)),
        _ => Ok(Attempt::Stale),
    }
}

/// Removes a directory tree, ignoring errors (the default remover of [`Staging`]).
fn remove_tree(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A build directory `<dir>/.tmp-<key>-<pid>/` for one cache entry, removed when dropped unless
/// [`published`](Staging::publish). Create it while holding the entry's [`CacheLock`].
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    remove: fn(&Path),
    published: bool,
}

impl Staging {
    /// Creates the empty directory `<dir>/.tmp-<key>-<pid>/` (`dir` must exist); a leftover at
    /// that path (an earlier process with the same pid) is removed first.
    pub fn new(dir: &Path, key: &str) -> Result<Staging, PublishError> {
        Staging::with_remover(dir, key, remove_tree)
    }

    /// Like [`Staging::new`], removing trees with `remove` instead of a plain recursive removal
    /// (e.g. one that first unmounts what a killed build step left mounted below it).
    pub fn with_remover(dir: &Path, key: &str, remove: fn(&Path)) -> Result<Staging, PublishError> {
        let path = dir.join(format!(".tmp-{key}-{}", std::process::id()));
        if path.symlink_metadata().is_ok() {
            remove(&path);
        }
        std::fs::create_dir(&path)
            .map_err(|e| PublishError::io("creating the build directory", &path, e))?;
        Ok(Staging {
            path,
            remove,
            published: false,
        })
    }

    /// The build directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes the whole build directory as `dest` (see [`publish_dir`]).
    pub fn publish(mut self, dest: &Path) -> Result<(), PublishError> {
        publish_dir(&self.path, dest, self.remove)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            (self.remove)(&self.path);
        }
    }
}

/// Renames the finished directory `src` to `dest` (same filesystem). Its entries are synced to
/// disk first and the rename after. An existing `dest` is moved aside to `.old-<name>-<pid>`
/// first (put back if the rename fails) and removed with `remove` afterwards, so `dest` is always
/// either the old entry or the new one. The caller makes the files inside `src` durable itself
/// (e.g. `File::sync_all`) when they must survive a crash.
pub fn publish_dir(src: &Path, dest: &Path, remove: fn(&Path)) -> Result<(), PublishError> {
    sync_dir(src)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let aside = parent.join(format!(".old-{name}-{}", std::process::id()));
    let moved_aside = if dest.symlink_metadata().is_ok() {
        if aside.symlink_metadata().is_ok() {
            remove(&aside);
        }
        std::fs::rename(dest, &aside)
            .map_err(|e| PublishError::io("moving the old cache entry aside", dest, e))?;
        true
    } else {
        false
    };
    if let Err(e) = std::fs::rename(src, dest) {
        if moved_aside {
            let _ = std::fs::rename(&aside, dest);
        }
        return Err(PublishError::io("publishing the cache entry", dest, e));
    }
    sync_dir(parent)?;
    if moved_aside {
        remove(&aside);
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PublishError::io("syncing the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    /// The pattern every cache follows (see the module docs); returns whether this call built.
    fn ensure(dir: &Path, key: &str, builds: &AtomicUsize) -> bool {
        let dest = dir.join(key);
        if dest.join("done").is_file() {
            return false;
        }
        let _lock =
            CacheLock::acquire(lock_path(dir, key), Duration::from_secs(30), || {}).unwrap();
        if dest.join("done").is_file() {
            return false;
        }
        let staging = Staging::new(dir, key).unwrap();
        builds.fetch_add(1, Ordering::SeqCst);
        // Slow enough that the other thread surely finds the lock held.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(staging.path().join("done"), "x").unwrap();
        staging.publish(&dest).unwrap();
        true
    }

    #[test]
    fn two_threads_racing_on_one_key_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (dir, builds, start) =
                    (dir.path().to_path_buf(), builds.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    ensure(&dir, "entry", &builds)
                })
            })
            .collect();
        let built: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1, "built twice");
        assert_eq!(built.iter().filter(|b| **b).count(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("entry/done")).unwrap(),
            "x"
        );
        // Nothing but the entry and its lock file is left.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".entry.lock", "entry"]);
    }

    #[test]
    fn a_dropped_staging_dir_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(dir.path(), "k").unwrap();
        let path = staging.path().to_path_buf();
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!(".tmp-k-{}", std::process::id())
        );
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/file"), "half built").unwrap();
        drop(staging);
        assert!(!path.exists(), "the build directory was left behind");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_leftover_build_dir_of_this_pid_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(format!(".tmp-k-{}", std::process::id()));
        std::fs::create_dir(&leftover).unwrap();
        std::fs::write(leftover.join("stale"), "").unwrap();
        let staging = Staging::new(dir.path(), "k").unwrap();
        assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
    }

    #[test]
    fn publishing_replaces_an_old_entry_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("old"), "").unwrap();
        let staging = Staging::new(dir.path(), "k").unwrap();
        std::fs::write(staging.path().join("new"), "").unwrap();
        staging.publish(&dest).unwrap();
        assert!(dest.join("new").is_file() && !dest.join("old").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the old entry was left aside: {names:?}");
    }

    #[test]
    fn a_failed_publish_keeps_the_old_entry() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("old"), "").unwrap();
        let err = publish_dir(&dir.path().join("missing"), &dest, remove_tree).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(dest.join("old").is_file(), "the old entry was lost");
    }

    #[test]
    fn a_lock_held_past_the_deadline_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), "k");
        let _held = CacheLock::acquire(&path, Duration::ZERO, || {}).unwrap();
        let mut waited = 0;
        let t = Instant::now();
        let err =
            CacheLock::acquire(&path, Duration::from_millis(300), || waited += 1).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(waited, 1, "on_wait runs once");
        match &err {
            PublishError::LockTimeout { path: p, .. } => assert_eq!(p, &path),
            other => panic!("not a lock timeout: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("fuser -v"), "says what to do: {msg}");
        assert!(CacheLock::try_acquire(&path).unwrap().is_none());
        // Another process cannot take it either.
        let st = std::process::Command::new("flock")
            .args(["-n", path.to_str().unwrap(), "true"])
            .status()
            .unwrap();
        assert!(!st.success());
    }

    #[test]
    fn a_lock_file_removed_by_its_holder_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), "k");
        // A waiter opened the lock file; then its holder removed it (as pruning a cache entry
        // does) and released it. Locking the orphan would exclude nobody: it must be refused.
        let opened = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(lock_opened(opened, &path), Ok(Attempt::Stale)));
        let opened = File::create(&path).unwrap();
        let newcomer = File::create(dir.path().join("other")).unwrap();
        std::fs::rename(dir.path().join("other"), &path).unwrap();
        assert!(matches!(lock_opened(opened, &path), Ok(Attempt::Stale)));
        drop(newcomer);
        // The lock then goes to the file now at the path.
        let lock = CacheLock::acquire(&path, Duration::ZERO, || {}).unwrap();
        assert!(CacheLock::try_acquire(&path).unwrap().is_none());
        drop(lock);
        assert!(CacheLock::try_acquire(&path).unwrap().is_some());
    }
}
