//! `machinist cache` (list, gc) and the bound applied after every test run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use machinist_qemu::cache_entries::{
    self, human_age, human_bytes, CacheEntry, GcOptions, GcReport, Skipped, MAX_BYTES_ENV,
};

use crate::{EXIT_FAILURE, EXIT_PASS};

/// `machinist cache [list]`: prints one line per entry and the total.
pub fn list_cmd(root: &Path) -> u8 {
    print!(
        "{}",
        render_list(root, &cache_entries::list(root), SystemTime::now())
    );
    EXIT_PASS
}

/// The listing: `kind  size  last use  path` per entry, then the total.
pub fn render_list(root: &Path, entries: &[CacheEntry], now: SystemTime) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        let _ = writeln!(out, "the cache {} is empty", root.display());
        return out;
    }
    for e in entries {
        let _ = writeln!(out, "{}", entry_line(e, now));
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let _ = writeln!(
        out,
        "total {} in {} entries ({})",
        human_bytes(total),
        entries.len(),
        root.display()
    );
    out
}

fn entry_line(e: &CacheEntry, now: SystemTime) -> String {
    format!(
        "{:<8}  {:>10}  used {:>7} ago  {}",
        e.kind.name(),
        human_bytes(e.bytes),
        human_age(e.last_use, now),
        e.path.display()
    )
}

/// `machinist cache gc`: removes least recently used entries, prints what it removed (or would)
/// and the space freed. Exit 1 if an entry could not be removed.
pub fn gc_cmd(root: &Path, opts: &GcOptions) -> u8 {
    let report = cache_entries::gc(root, opts);
    print!("{}", render_gc(&report, opts, SystemTime::now()));
    if report
        .skipped
        .iter()
        .any(|s| matches!(s, Skipped::Failed(..)))
    {
        EXIT_FAILURE
    } else {
        EXIT_PASS
    }
}

/// What `machinist cache gc` prints for `report`.
pub fn render_gc(report: &GcReport, opts: &GcOptions, now: SystemTime) -> String {
    let mut out = String::new();
    let verb = if opts.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for r in &report.removed {
        let _ = writeln!(out, "{verb}  {}", entry_line(&r.entry, now));
    }
    for s in &report.skipped {
        let (e, why) = match s {
            Skipped::Busy(e) => (e, "a build holds its lock".to_string()),
            Skipped::Recent(e) => (
                e,
                format!(
                    "used within --min-idle ({} s): a running test may need it",
                    opts.min_idle.as_secs()
                ),
            ),
            Skipped::Failed(e, why) => (e, why.clone()),
        };
        let _ = writeln!(out, "kept  {}  ({why})", entry_line(e, now));
    }
    let freed = if opts.dry_run { "would free" } else { "freed" };
    let _ = writeln!(
        out,
        "{freed} {}: {} -> {} (keeping at most {})",
        human_bytes(report.freed()),
        human_bytes(report.bytes_before),
        human_bytes(report.bytes_after),
        human_bytes(opts.keep_bytes)
    );
    out
}

/// After a test run: bound the cache by [`MAX_BYTES_ENV`] (default 20 GiB, `0` = off), removing
/// least recently used entries not used in the last half hour; one line on stderr if it removed
/// something (or could not read the variable).
pub fn bound_after_run() {
    match cache_entries::max_bytes_from_env() {
        Err(e) => eprintln!("machinist: not cleaning the cache: {e}"),
        Ok(None) => {}
        Ok(Some(max)) => {
            let root = machinist_qemu::cache_dir();
            let report = cache_entries::gc(&root, &GcOptions::new(max));
            if let Some(line) = bound_line(&report, max) {
                eprintln!("{line}");
            }
        }
    }
}

/// The line [`bound_after_run`] logs, if it removed something.
fn bound_line(report: &GcReport, max: u64) -> Option<String> {
    if report.removed.is_empty() {
        return None;
    }
    Some(format!(
        "machinist: the cache was over {} ({MAX_BYTES_ENV}): removed {} least recently used \
         entries, freed {} (now {}; `machinist cache` lists it, {MAX_BYTES_ENV}=0 turns this off)",
        human_bytes(max),
        report.removed.len(),
        human_bytes(report.freed()),
        human_bytes(report.bytes_after)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinist_qemu::cache_entries::{EntryKind, Removed};
    use std::path::PathBuf;
    use std::time::Duration;

    fn entry(kind: EntryKind, path: &str, bytes: u64, ago_s: u64, now: SystemTime) -> CacheEntry {
        CacheEntry {
            kind,
            path: PathBuf::from(path),
            bytes,
            last_use: now - Duration::new(ago_s, 0),
        }
    }

    #[test]
    fn listing_and_gc_lines() {
        let now = SystemTime::now();
        let entries = vec![
            entry(EntryKind::Image, "/c/images/abc", 3 << 30, 7200 * 24, now),
            entry(EntryKind::Snapshot, "/c/snapshots/k", 700 << 20, 300, now),
            entry(EntryKind::Other, "/c/accel.json", 4096, 30, now),
        ];
        insta::assert_snapshot!(render_list(Path::new("/c"), &entries, now));
        insta::assert_snapshot!("empty", render_list(Path::new("/c"), &[], now));
        let opts = GcOptions {
            keep_bytes: 1 << 30,
            dry_run: true,
            min_idle: machinist_qemu::cache_entries::DEFAULT_MIN_IDLE,
        };
        let report = GcReport {
            removed: vec![Removed {
                entry: entries[0].clone(),
            }],
            skipped: vec![Skipped::Recent(entries[1].clone())],
            bytes_before: (3 << 30) + (700 << 20) + 4096,
            bytes_after: (700 << 20) + 4096,
        };
        insta::assert_snapshot!("gc_dry_run", render_gc(&report, &opts, now));
        let line = bound_line(&report, 1 << 30).unwrap();
        assert!(
            line.contains("removed 1 least recently used") && line.contains("freed 3.0 GiB"),
            "{line}"
        );
        assert_eq!(bound_line(&GcReport::default(), 1 << 30), None);
    }
}
