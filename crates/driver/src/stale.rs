//! Run directories left behind by a test process that was killed outright (`kill -9`, OOM):
//! each run directory records its owner process (pid and start time) in [`OWNER_FILE`]; the next
//! run (or `machinist doctor`) removes every run directory whose owner is gone.

use std::path::{Path, PathBuf};

/// The file in a run directory naming its owner: `<pid> <start time in clock ticks>`.
pub const OWNER_FILE: &str = "owner";

/// Where run directories are made: `MACHINIST_RUN_DIR_BASE`, else `/tmp`.
pub fn run_dir_base() -> PathBuf {
    match std::env::var_os("MACHINIST_RUN_DIR_BASE").filter(|b| !b.is_empty()) {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from("/tmp"),
    }
}

/// Records this process as the owner of `run_dir`.
pub(crate) fn claim(run_dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    std::fs::write(run_dir.join(OWNER_FILE), format!("{pid} {start}\n"))
}

/// Forgets the owner of `run_dir` (kept on purpose with `--keep-state`: never swept).
pub(crate) fn release(run_dir: &Path) {
    let _ = std::fs::remove_file(run_dir.join(OWNER_FILE));
}

/// Removes every run directory (`mn-*` under `base`) whose owner process is gone; returns
/// those removed. Directories without an owner file (kept with `--keep-state`, or being created
/// right now) and directories of live processes are left alone.
pub fn remove_stale_run_dirs(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let is_run_dir = e.file_name().to_string_lossy().starts_with("mn-")
            && e.file_type().is_ok_and(|t| t.is_dir());
        if !is_run_dir || !owned_by_us(&path) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        if owner_is_gone(&owner) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The directory belongs to this user (never touch another user's files in a shared /tmp).
fn owned_by_us(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == nix::unistd::getuid().as_raw())
}

/// True when the `<pid> <start time>` in an owner file names no running process (the pid is
/// unused, or reused by a process that started at another time).
fn owner_is_gone(owner: &str) -> bool {
    let mut words = owner.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next()) else {
        // Unreadable: written by something else; leave it.
        return false;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    match start_time(pid) {
        None => true,
        Some(now) => start != 0 && now != start,
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_owners_run_dir_is_removed_and_a_live_ones_is_kept() {
        let base = tempfile::tempdir().unwrap();
        // A real process that exits: its pid is then unused (or reused with another start time).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        let dead_start = start_time(dead_pid);
        child.wait().unwrap();
        let dead = base.path().join("mn-dead01");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("disk.qcow2"), b"x").unwrap();
        std::fs::write(
            dead.join(OWNER_FILE),
            format!("{dead_pid} {}\n", dead_start.unwrap_or(1)),
        )
        .unwrap();
        let live = base.path().join("mn-live01");
        std::fs::create_dir(&live).unwrap();
        claim(&live).unwrap();
        let kept = base.path().join("mn-kept01");
        std::fs::create_dir(&kept).unwrap();
        let other = base.path().join("not-a-run-dir");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER_FILE), format!("{dead_pid} 1\n")).unwrap();

        let removed = remove_stale_run_dirs(base.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.exists() && kept.exists() && other.exists());
        release(&live);
        assert!(remove_stale_run_dirs(base.path()).is_empty());
    }

    #[test]
    fn start_time_tells_a_reused_pid_apart() {
        let me = std::process::id();
        let start = start_time(me).expect("this process runs");
        assert!(!owner_is_gone(&format!("{me} {start}")));
        assert!(owner_is_gone(&format!("{me} {}", start + 1)));
        assert!(!owner_is_gone("garbage"));
    }
}
