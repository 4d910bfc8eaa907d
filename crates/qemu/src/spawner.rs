//! The process-wide spawner thread.
//!
//! Linux delivers the parent-death signal (`PR_SET_PDEATHSIG`) when the *thread* that forked the
//! child exits, not the process. Children forked from tokio's blocking pool would be killed when
//! an idle pool thread retires. So every supervised child is forked from one dedicated thread that
//! lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("machinist-spawner".into())
            .spawn(move || {
                // Lives for the whole process: the sender is in a static and never dropped.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("cannot start the machinist spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` as a supervised child: from the long-lived spawner thread, in its own process
/// group, with `PR_SET_PDEATHSIG(SIGKILL)` so it dies when this process dies (even by SIGKILL).
///
/// If this process dies between `fork` and `prctl`, the child notices (its parent pid changed)
/// and fails to start instead of running unsupervised.
pub fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid) and does not
    // allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before prctl took effect: do not run unsupervised.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the machinist spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the machinist spawner thread dropped the request"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_gets_own_group_and_pdeathsig() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("grep -E '^(SigQ|PPid)' /proc/self/status >/dev/null; cat /proc/self/stat");
        cmd.stdout(std::process::Stdio::piped());
        let child = spawn_supervised(cmd).unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stat = String::from_utf8(out.stdout).unwrap();
        // Field 5 of /proc/self/stat (after the comm) is the process group.
        let after = stat.rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        assert_eq!(fields[2], pid.to_string(), "pgid should equal pid: {stat}");
    }
}
