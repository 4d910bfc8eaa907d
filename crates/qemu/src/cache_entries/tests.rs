use super::*;
use std::io::Read as _;

const MIB: u64 = 1 << 20;

/// Writes `bytes` of non-zero data (so the file really takes that many blocks).
fn write_file(path: &Path, bytes: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![0xa5u8; bytes as usize]).unwrap();
}

/// An entry directory with one file of `bytes`, last used `ago` before now.
fn make_entry(dir: &Path, bytes: u64, ago: Duration) -> PathBuf {
    write_file(&dir.join("data"), bytes);
    set_last_use(dir, ago);
    dir.to_path_buf()
}

fn set_last_use(dir: &Path, ago: Duration) {
    touch_last_use(dir);
    File::options()
        .write(true)
        .open(dir.join(LAST_USE_FILE))
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn no_idle(keep_bytes: u64) -> GcOptions {
    GcOptions {
        keep_bytes,
        dry_run: false,
        min_idle: Duration::ZERO,
    }
}

fn names(paths: impl IntoIterator<Item = PathBuf>, root: &Path) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect()
}

fn removed_names(r: &GcReport, root: &Path) -> Vec<String> {
    names(r.removed.iter().map(|r| r.entry.path.clone()), root)
}

#[test]
fn lists_every_kind_and_hides_work_in_progress() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("images/abc"), 4096, hours(1));
    make_entry(&r.join("images/bootstrap-def"), 4096, hours(1));
    make_entry(&r.join("snapshots/k1"), 4096, hours(1));
    make_entry(&r.join("kernel/6.1.0-cloud-amd64"), 4096, hours(1));
    write_file(&r.join("accel.json"), 10);
    // Work in progress and locks are not entries.
    fs::write(r.join("images/.abc.lock"), "").unwrap();
    write_file(&r.join("images/.tmp-xyz-12/data"), 4096);
    fs::write(r.join("kernel/.lock"), "").unwrap();

    let entries = list(r);
    let got: Vec<(EntryKind, String)> = entries
        .iter()
        .map(|e| {
            (
                e.kind,
                e.path.strip_prefix(r).unwrap().display().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (EntryKind::Image, "images/abc".to_string()),
            (EntryKind::Image, "images/bootstrap-def".to_string()),
            (EntryKind::Snapshot, "snapshots/k1".to_string()),
            (EntryKind::Kernel, "kernel/6.1.0-cloud-amd64".to_string()),
            (EntryKind::Other, "accel.json".to_string()),
        ]
    );
    assert_eq!(
        entries[0].lock_file().unwrap(),
        r.join("images/.abc.lock"),
        "the image cache's lock file"
    );
    assert_eq!(entries[3].lock_file().unwrap(), r.join("kernel/.lock"));
    assert_eq!(entries[4].lock_file(), None);
}

#[test]
fn a_missing_cache_has_no_entries() {
    let root = tempfile::tempdir().unwrap();
    assert!(list(&root.path().join("nothing")).is_empty());
}

#[test]
fn sizes_count_blocks_and_hard_links_once() {
    let root = tempfile::tempdir().unwrap();
    let one = make_entry(&root.path().join("images/one"), MIB, hours(1));
    let two = make_entry(&root.path().join("images/two"), MIB, hours(1));
    fs::hard_link(two.join("data"), two.join("pinned-data")).unwrap();
    let a = disk_usage(&one);
    let b = disk_usage(&two);
    assert!(a >= MIB, "a 1 MiB file takes at least 1 MiB: {a}");
    assert!(a < 2 * MIB, "{a}");
    assert_eq!(a, b, "the hard link was counted twice");
    // A second, distinct file does count.
    write_file(&one.join("more"), MIB);
    assert!(disk_usage(&one) >= a + MIB);
}

#[test]
fn touching_sets_the_last_use_and_a_plain_dir_falls_back_to_its_mtime() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("images/a");
    fs::create_dir_all(&dir).unwrap();
    let old = SystemTime::now() - hours(5);
    File::open(&dir).unwrap().set_modified(old).unwrap();
    assert_eq!(last_use(&dir), Some(old), "fallback: the directory's mtime");
    let before = SystemTime::now() - Duration::from_secs(1);
    touch_last_use(&dir);
    let used = last_use(&dir).unwrap();
    assert!(used >= before, "{used:?} < {before:?}");
    assert_eq!(list(root.path())[0].last_use, used);
}

#[test]
fn gc_removes_least_recently_used_first_until_under_the_bound() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("images/newest"), MIB, hours(1));
    make_entry(&r.join("snapshots/oldest"), MIB, hours(30));
    make_entry(&r.join("kernel/middle"), MIB, hours(10));
    make_entry(&r.join("images/older"), MIB, hours(20));
    let total: u64 = list(r).iter().map(|e| e.bytes).sum();
    let per = list(r)[0].bytes;

    assert!(list(r).iter().all(|e| e.bytes == per));
    // Room for two and a half entries: the two least recently used go, oldest first.
    let report = gc(r, &no_idle(2 * per + per / 2));
    assert_eq!(
        removed_names(&report, r),
        ["snapshots/oldest", "images/older"]
    );
    assert_eq!(report.bytes_before, total);
    assert_eq!(report.bytes_after, total - 2 * per);
    assert_eq!(report.freed(), 2 * per);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(
        names(list(r).into_iter().map(|e| e.path), r),
        ["images/newest", "kernel/middle"]
    );
    // Nothing is left aside, and the removed entries' lock files are gone.
    assert_eq!(
        names(
            fs::read_dir(r.join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().path()),
            r
        ),
        Vec::<String>::new()
    );

    // Already under the bound: nothing to do.
    let again = gc(r, &no_idle(total));
    assert!(again.removed.is_empty());
}

#[test]
fn gc_keeps_the_shared_kernel_lock_and_never_removes_other_files() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("kernel/6.1"), MIB, hours(3));
    write_file(&r.join("accel.json"), 100);
    let report = gc(r, &no_idle(0));
    assert_eq!(removed_names(&report, r), ["kernel/6.1"]);
    assert!(r.join("kernel/.lock").exists(), "the kernel cache's lock");
    assert!(r.join("accel.json").exists());
    assert!(report.bytes_after > 0, "accel.json still counts");
}

#[test]
fn gc_skips_an_entry_whose_lock_a_build_holds() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("images/busy"), MIB, hours(40));
    make_entry(&r.join("images/idle"), MIB, hours(2));
    // A build of `busy` holds its lock (another open file description: flock excludes it).
    let held = CacheLock::try_acquire(lock_path(&r.join("images"), "busy"))
        .unwrap()
        .unwrap();
    let report = gc(r, &no_idle(0));
    assert_eq!(removed_names(&report, r), ["images/idle"]);
    match &report.skipped[..] {
        [Skipped::Busy(e)] => assert_eq!(e.path, r.join("images/busy")),
        other => panic!("expected busy to be skipped: {other:?}"),
    }
    assert!(r.join("images/busy/data").is_file());
    drop(held);
    let report = gc(r, &no_idle(0));
    assert_eq!(removed_names(&report, r), ["images/busy"]);
}

#[test]
fn gc_keeps_entries_used_within_min_idle() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("snapshots/just-used"), MIB, Duration::from_secs(60));
    make_entry(&r.join("snapshots/stale"), MIB, hours(2));
    let report = gc(r, &GcOptions::new(0));
    assert_eq!(removed_names(&report, r), ["snapshots/stale"]);
    assert!(
        matches!(&report.skipped[..], [Skipped::Recent(e)] if e.path.ends_with("just-used")),
        "{:?}",
        report.skipped
    );
}

#[test]
fn a_dry_run_removes_nothing_and_leaves_no_lock_files() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_entry(&r.join("images/a"), MIB, hours(5));
    make_entry(&r.join("images/b"), MIB, hours(4));
    let before = list(r);
    let report = gc(
        r,
        &GcOptions {
            dry_run: true,
            ..no_idle(0)
        },
    );
    assert_eq!(removed_names(&report, r), ["images/a", "images/b"]);
    assert_eq!(report.bytes_after, 0);
    assert_eq!(list(r), before, "a dry run changed the cache");
    assert!(!r.join("images/.a.lock").exists());
}

#[test]
fn a_file_a_running_test_opened_stays_readable_after_gc() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let dir = make_entry(&r.join("snapshots/k"), MIB, hours(3));
    // What a restore streams from: opened before the entry is removed.
    let mut open = File::open(dir.join("data")).unwrap();
    let report = gc(r, &no_idle(0));
    assert_eq!(removed_names(&report, r), ["snapshots/k"]);
    assert!(!dir.exists());
    let mut back = Vec::new();
    open.read_to_end(&mut back).unwrap();
    assert_eq!(back.len() as u64, MIB);
    assert!(back.iter().all(|b| *b == 0xa5));
}

#[test]
fn an_image_hard_linked_into_a_run_dir_survives_gc() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let dir = make_entry(&r.join("images/img"), MIB, hours(3));
    let run = tempfile::tempdir().unwrap();
    let pinned = run.path().join("pinned-img-data");
    fs::hard_link(dir.join("data"), &pinned).unwrap();
    let report = gc(r, &no_idle(0));
    assert_eq!(removed_names(&report, r), ["images/img"]);
    assert_eq!(fs::read(&pinned).unwrap().len() as u64, MIB);
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_bytes("1048576"), Ok(MIB));
    assert_eq!(parse_bytes("500M"), Ok(500 * MIB));
    assert_eq!(parse_bytes("10G"), Ok(10 << 30));
    assert_eq!(parse_bytes("10g"), Ok(10 << 30));
    assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
    assert_eq!(parse_bytes("10GB"), Ok(10 << 30));
    assert_eq!(parse_bytes("64K"), Ok(64 << 10));
    assert_eq!(parse_bytes("1T"), Ok(1 << 40));
    assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
    assert_eq!(parse_bytes(" 0 "), Ok(0));
    assert_eq!(parse_bytes("12B"), Ok(12));
    for bad in ["", "G", "ten", "-1G", "5X", "5iB", "1e400", "99999999999T"] {
        let e = parse_bytes(bad).expect_err(bad);
        assert!(e.contains(&format!("`{bad}`")), "{e}");
    }
}

#[test]
fn the_bound_comes_from_the_environment_value() {
    assert_eq!(max_bytes_of(None), Ok(Some(DEFAULT_MAX_BYTES)));
    assert_eq!(max_bytes_of(Some("")), Ok(Some(DEFAULT_MAX_BYTES)));
    assert_eq!(max_bytes_of(Some("0")), Ok(None));
    assert_eq!(max_bytes_of(Some("5G")), Ok(Some(5 << 30)));
    let e = max_bytes_of(Some("lots")).unwrap_err();
    assert!(e.starts_with(MAX_BYTES_ENV) && e.contains("lots"), "{e}");
    assert_eq!(DEFAULT_MAX_BYTES, 20 * 1024 * 1024 * 1024);
}

#[test]
fn sizes_and_ages_print_for_people() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    let now = SystemTime::now();
    assert_eq!(human_age(now - Duration::from_secs(5), now), "5 s");
    assert_eq!(human_age(now - Duration::from_secs(600), now), "10 min");
    assert_eq!(human_age(now - hours(3), now), "3 h");
    assert_eq!(human_age(now - hours(72), now), "3 d");
    assert_eq!(human_age(now + hours(1), now), "0 s");
}
