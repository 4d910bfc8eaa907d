//! Supervised children: every external command of this crate (mmdebstrap, apt in a chroot,
//! mkfs.ext4, cp, qemu-img, umount) runs through [`spawn`], which
//!
//! * puts the command in a process group of its own, led by a small watchdog shell;
//! * gives the watchdog a parent-death signal (`PR_SET_PDEATHSIG`), so when the thread that
//!   started it dies — even by `kill -9` of the whole process — the watchdog kills the whole group
//!   (`apt-get`, `dpkg`, maintainer scripts, not just the direct child);
//! * kills the whole group when its deadline passes ([`Supervised::wait_deadline`]) or when the
//!   handle is dropped before the command ended (an error or panic in the caller).
//!
//! The watchdog is `/bin/sh -c 'trap "kill -KILL 0" TERM; "$@" & wait $!'`: the command is its
//! child in the same group, and its exit status is the command's (`128 + n` for a signal `n`).
//! A process that leaves the group on purpose (`setsid`) is not followed; no build step does.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The watchdog script: kill the whole process group on SIGTERM (the parent-death signal), else
/// run the command and exit with its status.
pub const WATCHDOG_SCRIPT: &str = "trap 'kill -KILL 0' TERM; \"$@\" & wait $!";

/// How a supervised command failed to complete.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The command could not be started (missing program, no permission, ...).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed; the whole process group was killed.
    #[error("{program} did not finish within {seconds:.1} s; its process group was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The deadline, in seconds.
        seconds: f64,
    },
    /// Waiting for the command failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running supervised command. Dropping it before it ended kills its whole process group.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    program: String,
    finished: bool,
}

/// Start `cmd` supervised (see the module documentation) with the given stdio. The program,
/// arguments, environment changes and working directory of `cmd` are used; its stdio settings
/// are replaced by `stdin`, `stdout` and `stderr`.
pub fn spawn(
    cmd: &Command,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Supervised, SuperviseError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut w = Command::new("/bin/sh");
    w.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("machinist-watchdog")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        w.current_dir(d);
    }
    w.stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        w.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    // The program itself is checked first so a missing tool is reported as such (the watchdog
    // shell would only print "not found" and exit 127).
    if !program_exists(cmd.get_program()) {
        return Err(SuperviseError::Spawn {
            program,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let child = w.spawn().map_err(|source| SuperviseError::Spawn {
        program: program.clone(),
        source,
    })?;
    Ok(Supervised {
        child,
        program,
        finished: false,
    })
}

fn program_exists(program: &std::ffi::OsStr) -> bool {
    let p = std::path::Path::new(program);
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .unwrap_or(false)
}

impl Supervised {
    /// Process id of the watchdog, which is also the process group id of the command.
    pub fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kill the whole process group (SIGKILL) and reap the watchdog.
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid()), Signal::SIGKILL);
        let _ = self.child.wait();
        self.finished = true;
    }

    /// Wait until the command exits or `timeout` passes; on timeout the whole group is killed.
    pub fn wait_deadline(&mut self, timeout: Duration) -> Result<ExitStatus, SuperviseError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.exited() {
                Ok(true) => {
                    // Anything the command left running in its group goes with it. The watchdog
                    // is not reaped yet, so its pid (the group id) cannot have been reused.
                    let _ = killpg(Pid::from_raw(self.pgid()), Signal::SIGKILL);
                    let status = self.child.wait().map_err(|source| SuperviseError::Wait {
                        program: self.program.clone(),
                        source,
                    });
                    self.finished = true;
                    return status;
                }
                Ok(false) if Instant::now() >= deadline => {
                    self.kill_group();
                    return Err(SuperviseError::Timeout {
                        program: self.program.clone(),
                        seconds: timeout.as_secs_f64(),
                    });
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(50)),
                Err(source) => {
                    self.kill_group();
                    return Err(SuperviseError::Wait {
                        program: self.program.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Has the watchdog exited? Checked without reaping it (`WNOWAIT`).
    fn exited(&self) -> std::io::Result<bool> {
        // SAFETY: waitid writes only into `info`, a zeroed siginfo_t we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(info.si_pid() != 0)
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_group();
        }
    }
}

/// Run `cmd` supervised with stdin from /dev/null and the given output, within `timeout`.
pub fn run(
    cmd: &Command,
    stdout: Stdio,
    stderr: Stdio,
    timeout: Duration,
) -> Result<ExitStatus, SuperviseError> {
    spawn(cmd, Stdio::null(), stdout, stderr)?.wait_deadline(timeout)
}

/// Captured result of [`output`].
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (of the command, through the watchdog).
    pub status: ExitStatus,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

/// Run `cmd` supervised within `timeout` and capture its output (stdin is /dev/null).
pub fn output(cmd: &Command, timeout: Duration) -> Result<Output, SuperviseError> {
    let mut s = spawn(cmd, Stdio::null(), Stdio::piped(), Stdio::piped())?;
    let readers: Vec<_> = [
        s.child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        s.child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .map(|r| {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut r) = r {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        rx
    })
    .collect();
    let status = s.wait_deadline(timeout)?;
    // The group is gone, so the pipes reach end of file promptly; bounded anyway.
    let mut outs = readers
        .into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default());
    Ok(Output {
        status,
        stdout: outs.next().unwrap_or_default(),
        stderr: outs.next().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // A zombie (not yet reaped by whoever inherited it) counts as gone.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn exit_status_and_output_pass_through() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output(&cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let cmd = Command::new("machinist-no-such-tool");
        let err = output(&cmd, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&err, SuperviseError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }

    /// A timeout kills the whole group: the command and the background process it started.
    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("sleep 300 & echo $! > \"$1\"; wait")
            .arg("sh")
            .arg(&pidfile);
        let t = Instant::now();
        let err = run(
            &cmd,
            Stdio::null(),
            Stdio::null(),
            Duration::from_millis(1500),
        )
        .unwrap_err();
        assert!(matches!(err, SuperviseError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = Instant::now() + Duration::from_secs(3);
        while alive(pid) && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "sleep {pid} survived the timeout");
    }
}
