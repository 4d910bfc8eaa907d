//! The cache's entries, their sizes and last use, and a least-recently-used clean-up.
//!
//! An entry is one directory a cache publishes (see [`crate::publish`]):
//!
//! | kind                      | directory                         | lock file                   |
//! |---------------------------|-----------------------------------|-----------------------------|
//! | [`EntryKind::Image`]      | `images/<hash>/`, `images/bootstrap-<hash>/` | `images/.<name>.lock` |
//! | [`EntryKind::Snapshot`]   | `snapshots/<key>/`                | `snapshots/.<key>.lock`     |
//! | [`EntryKind::Kernel`]     | `kernel/<release>/`               | `kernel/.lock`              |
//! | [`EntryKind::Other`]      | anything else at the top (`accel.json`, ...) | none: never removed |
//!
//! Names starting with `.` (lock files, build directories `.tmp-*`, entries being removed) are
//! work in progress and are not listed.
//!
//! The last use of an entry is the modification time of its [`LAST_USE_FILE`], which every cache
//! touches ([`touch_last_use`]) on a hit and after a build; an entry without one falls back to
//! the directory's own modification time.
//!
//! [`gc`] removes the least recently used entries until the cache holds at most
//! [`GcOptions::keep_bytes`]. It never removes an entry that is in use:
//!
//! - one whose lock a build holds is skipped ([`Skipped::Busy`]); the lock is held (taken without
//!   waiting) while the entry is removed, so no build starts on it meanwhile;
//! - one used within [`GcOptions::min_idle`] is kept ([`Skipped::Recent`]): a test that has just
//!   looked an entry up may not have opened its files yet;
//! - files a running test has already opened stay readable: removal only unlinks names, and on
//!   Linux an open file lives until its last descriptor closes. Running tests hard-link the image
//!   they boot into their run directory, copy the snapshot disk they restore, and stream the
//!   snapshot state from an open file, so removing the cache entry afterwards breaks none of them.
//!
//! An entry is first renamed aside (`.gc-<name>-<pid>`) and removed there, so a reader sees either
//! the whole entry or none.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::publish::{lock_path, CacheLock};

/// The stamp file inside an entry whose modification time is the entry's last use.
pub const LAST_USE_FILE: &str = "last-use";

/// The environment variable bounding the cache after each test run (see [`max_bytes_from_env`]).
pub const MAX_BYTES_ENV: &str = "MACHINIST_CACHE_MAX_BYTES";

/// The default bound of [`MAX_BYTES_ENV`]: 20 GiB (a few images and snapshots on a CI disk).
pub const DEFAULT_MAX_BYTES: u64 = 20 << 30;

/// The default [`GcOptions::min_idle`]: entries used in the last 30 minutes are kept.
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(30 * 60);

/// What kind of cache an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// A guest image or the bootstrap tree images are built from (`images/`).
    Image,
    /// A warm-start snapshot (`snapshots/`).
    Snapshot,
    /// A test kernel (`kernel/`).
    Kernel,
    /// Anything else (`accel.json`, unknown files): listed, never removed.
    Other,
}

impl EntryKind {
    /// The kind's name as printed: `image`, `snapshot`, `kernel`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Image => "image",
            EntryKind::Snapshot => "snapshot",
            EntryKind::Kernel => "kernel",
            EntryKind::Other => "other",
        }
    }

    /// The directory below the cache root holding entries of this kind (`None` for `Other`).
    fn subdir(self) -> Option<&'static str> {
        match self {
            EntryKind::Image => Some("images"),
            EntryKind::Snapshot => Some("snapshots"),
            EntryKind::Kernel => Some("kernel"),
            EntryKind::Other => None,
        }
    }
}

const KINDS: [EntryKind; 3] = [EntryKind::Image, EntryKind::Snapshot, EntryKind::Kernel];

/// One entry of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Which cache it belongs to.
    pub kind: EntryKind,
    /// The entry's directory (or file, for [`EntryKind::Other`]).
    pub path: PathBuf,
    /// Space it takes on disk (allocated blocks; a file hard-linked twice inside it counts once).
    pub bytes: u64,
    /// When it was last used (see the module docs).
    pub last_use: SystemTime,
}

impl CacheEntry {
    /// The lock file its builder takes (`None` for [`EntryKind::Other`]).
    pub fn lock_file(&self) -> Option<PathBuf> {
        let parent = self.path.parent()?;
        let name = self.path.file_name()?.to_string_lossy();
        match self.kind {
            EntryKind::Image | EntryKind::Snapshot => Some(lock_path(parent, &name)),
            // One lock for the whole kernel cache (see `kernel::test_kernel_of_in`).
            EntryKind::Kernel => Some(parent.join(".lock")),
            EntryKind::Other => None,
        }
    }
}

/// Marks the entry directory `entry_dir` as used now (creates or touches its
/// [`LAST_USE_FILE`]). Best effort: a read-only cache only loses the LRU order, so a failure is
/// logged at debug level and otherwise ignored.
pub fn touch_last_use(entry_dir: &Path) {
    let stamp = entry_dir.join(LAST_USE_FILE);
    let r = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&stamp)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = r {
        tracing::debug!("cannot mark {} as used: {e}", stamp.display());
    }
}

/// The last use of the entry at `path` (see the module docs).
pub fn last_use(path: &Path) -> Option<SystemTime> {
    fs::metadata(path.join(LAST_USE_FILE))
        .or_else(|_| fs::symlink_metadata(path))
        .and_then(|m| m.modified())
        .ok()
}

/// Space `path` takes on disk: allocated blocks of it and everything below it (symbolic links
/// not followed), each inode counted once.
pub fn disk_usage(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Every entry of the cache at `root` (e.g. [`crate::cache_dir`]), by kind then path. A missing
/// cache has no entries.
pub fn list(root: &Path) -> Vec<CacheEntry> {
    let mut entries = Vec::new();
    for (path, name) in visible_children(root) {
        let kind = KINDS
            .into_iter()
            .find(|k| k.subdir() == Some(name.as_str()) && path.is_dir());
        match kind {
            Some(kind) => {
                for (p, _) in visible_children(&path) {
                    entries.push(entry(kind, p));
                }
            }
            None => entries.push(entry(EntryKind::Other, path)),
        }
    }
    entries.sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
    entries
}

fn entry(kind: EntryKind, path: PathBuf) -> CacheEntry {
    CacheEntry {
        kind,
        bytes: disk_usage(&path),
        last_use: last_use(&path).unwrap_or(SystemTime::UNIX_EPOCH),
        path,
    }
}

/// The children of `dir` whose names do not start with `.`, sorted.
fn visible_children(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, String)> = rd
        .flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .filter(|(_, n)| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// How [`gc`] cleans up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Remove least recently used entries until the cache holds at most this many bytes.
    pub keep_bytes: u64,
    /// Only say what would be removed.
    pub dry_run: bool,
    /// Keep entries used more recently than this (a running test may not have opened them yet).
    pub min_idle: Duration,
}

impl GcOptions {
    /// Keep at most `keep_bytes`, really removing, with [`DEFAULT_MIN_IDLE`].
    pub fn new(keep_bytes: u64) -> GcOptions {
        GcOptions {
            keep_bytes,
            dry_run: false,
            min_idle: DEFAULT_MIN_IDLE,
        }
    }
}

/// An entry [`gc`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The entry as listed before removal.
    pub entry: CacheEntry,
}

/// Why [`gc`] left a removable entry in place although the cache was over the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// A build holds its lock.
    Busy(CacheEntry),
    /// It was used within [`GcOptions::min_idle`].
    Recent(CacheEntry),
    /// Removing it failed (the reason); what could not be removed is left in a `.gc-*` directory.
    Failed(CacheEntry, String),
}

/// What [`gc`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcReport {
    /// Removed entries, least recently used first.
    pub removed: Vec<Removed>,
    /// Entries that would have been removed but were kept, and why.
    pub skipped: Vec<Skipped>,
    /// The cache's size before.
    pub bytes_before: u64,
    /// The cache's size after (in a dry run: what it would be).
    pub bytes_after: u64,
}

impl GcReport {
    /// Bytes freed (or that a dry run would free).
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|r| r.entry.bytes).sum()
    }
}

/// Removes the least recently used entries of the cache at `root` until it holds at most
/// `opts.keep_bytes`, never one in use (see the module docs). [`EntryKind::Other`] entries count
/// towards the total but are never removed.
pub fn gc(root: &Path, opts: &GcOptions) -> GcReport {
    let entries = list(root);
    let mut report = GcReport {
        bytes_before: entries.iter().map(|e| e.bytes).sum(),
        ..GcReport::default()
    };
    let mut total = report.bytes_before;
    let mut candidates: Vec<CacheEntry> = entries
        .into_iter()
        .filter(|e| e.kind != EntryKind::Other)
        .collect();
    candidates.sort_by(|a, b| (a.last_use, &a.path).cmp(&(b.last_use, &b.path)));
    let now = SystemTime::now();
    for e in candidates {
        if total <= opts.keep_bytes {
            break;
        }
        match remove(&e, opts, now) {
            Ok(()) => {
                total -= e.bytes;
                report.removed.push(Removed { entry: e });
            }
            Err(s) => report.skipped.push(s),
        }
    }
    report.bytes_after = total;
    report
}

fn is_recent(e: &CacheEntry, opts: &GcOptions, now: SystemTime) -> bool {
    // A last use in the future (clock changes) counts as recent.
    now.duration_since(e.last_use)
        .map_or(true, |idle| idle < opts.min_idle)
}

/// Removes one entry (or, in a dry run, checks that it could be), holding its lock.
fn remove(e: &CacheEntry, opts: &GcOptions, now: SystemTime) -> Result<(), Skipped> {
    if is_recent(e, opts, now) {
        return Err(Skipped::Recent(e.clone()));
    }
    let Some(lock_file) = e.lock_file() else {
        return Err(Skipped::Failed(e.clone(), "not a removable entry".into()));
    };
    // A dry run leaves no lock file behind: no file means nobody holds it.
    if opts.dry_run && !lock_file.exists() {
        return Ok(());
    }
    let lock = match CacheLock::try_acquire(&lock_file) {
        Ok(Some(l)) => l,
        Ok(None) => return Err(Skipped::Busy(e.clone())),
        Err(err) => return Err(Skipped::Failed(e.clone(), err.to_string())),
    };
    // Used while this process waited for nothing but the listing: look again under the lock.
    let fresh = CacheEntry {
        last_use: last_use(&e.path).unwrap_or(e.last_use),
        ..e.clone()
    };
    if is_recent(&fresh, opts, now) {
        return Err(Skipped::Recent(fresh));
    }
    if opts.dry_run {
        return Ok(());
    }
    let name = e.path.file_name().unwrap_or_default().to_string_lossy();
    let aside = e
        .path
        .with_file_name(format!(".gc-{name}-{}", std::process::id()));
    if let Err(err) = fs::rename(&e.path, &aside) {
        return Err(Skipped::Failed(
            e.clone(),
            format!("moving it aside to {}: {err}", aside.display()),
        ));
    }
    let removal = if aside.is_dir() {
        fs::remove_dir_all(&aside)
    } else {
        fs::remove_file(&aside)
    };
    let result = removal.map_err(|err| {
        Skipped::Failed(
            e.clone(),
            format!(
                "removing {}: {err}; remove that directory by hand",
                aside.display()
            ),
        )
    });
    // A per-entry lock file goes with its entry (removed while held: a waiter that opened it
    // notices and locks the new file instead); the kernel cache's shared one stays.
    if e.kind != EntryKind::Kernel {
        let _ = fs::remove_file(lock.path());
    }
    drop(lock);
    result
}

/// Parses a size in bytes: `1048576`, `500M`, `10G`, `1.5T`, `64K` (powers of 1024; an optional
/// `B` or `iB` after the unit, any case).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ if lower.ends_with("ib") => return Err(bad_size(s)),
        _ => (body, 0),
    };
    let num = num.trim();
    if num.is_empty() {
        return Err(bad_size(s));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(|| too_large(s));
    }
    let v: f64 = num.parse().map_err(|_| bad_size(s))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad_size(s));
    }
    let bytes = v * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(too_large(s));
    }
    Ok(bytes.round() as u64)
}

fn bad_size(s: &str) -> String {
    format!("`{s}` is not a size: give bytes or a number with K, M, G or T (e.g. 500M, 10G)")
}

fn too_large(s: &str) -> String {
    format!("`{s}` is too large")
}

/// The bound after each test run: [`MAX_BYTES_ENV`] parsed with [`parse_bytes`], else
/// [`DEFAULT_MAX_BYTES`]; `Ok(None)` when it is `0` (off). An unparsable value is an error
/// naming the variable.
pub fn max_bytes_from_env() -> Result<Option<u64>, String> {
    max_bytes_of(std::env::var(MAX_BYTES_ENV).ok().as_deref())
}

fn max_bytes_of(value: Option<&str>) -> Result<Option<u64>, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Some(DEFAULT_MAX_BYTES)),
        Some(v) => match parse_bytes(v) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(format!("{MAX_BYTES_ENV}: {e}; 0 turns the bound off")),
        },
    }
}

/// `bytes` for people: `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// How long ago `then` was, for people: `12 s`, `5 min`, `3 h`, `2 d` (`0 s` for the future).
pub fn human_age(then: SystemTime, now: SystemTime) -> String {
    let s = now.duration_since(then).unwrap_or_default().as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests;
