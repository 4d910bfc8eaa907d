//! The host process of a container node: `unshare` (a private mount and PID namespace) running
//! the start script, which mounts the node's root and `exec`s `systemd-nspawn`.
//!
//! It is forked by the process-wide spawner ([`machinist_qemu::spawn_supervised`]: its own
//! process group, `PR_SET_PDEATHSIG(SIGKILL)`), and `unshare --kill-child` gives nspawn, the first
//! process of the new PID namespace, the same signal. Killing nspawn ends its PID namespace and so
//! every process of the container; the last process of the mount namespace gone, the kernel drops
//! its mounts (the overlay and the loop mount, whose loop device clears itself). So nothing
//! outlives the driver, even a `kill -9` of it.

use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use machinist_qemu::SerialLog;
use tokio::sync::watch;

/// How much of the process's stderr is kept for error messages.
const STDERR_TAIL: usize = 16 * 1024;

/// Lines of console output kept in memory.
const CONSOLE_LINES: usize = 100_000;

#[derive(Default)]
struct State {
    exit: Option<ExitStatus>,
    stderr: Vec<u8>,
}

struct Shared {
    name: String,
    pid: i32,
    state: Mutex<State>,
    cond: Condvar,
    exit_tx: watch::Sender<Option<ExitStatus>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running (or ended) container process. Dropping it kills the container and waits (a few
/// seconds at most) until it is reaped.
pub(crate) struct NspawnProcess {
    shared: Arc<Shared>,
    serial: SerialLog,
}

impl NspawnProcess {
    /// Starts `cmd` supervised; its stdout is the console log.
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> std::io::Result<NspawnProcess> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child: Child = machinist_qemu::spawn_supervised(cmd)?;
        let pid = child.id() as i32;
        // Killed with the test on SIGINT/SIGTERM, as QEMU is (the signal handler kills the
        // registered groups); unregistered while still a zombie, before it is reaped.
        machinist_qemu::register_process_group(pid);
        let (exit_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            pid,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            exit_tx,
        });
        let serial = SerialLog::new(name.to_string(), CONSOLE_LINES);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let log = serial.clone();
        thread(format!("ct-console-{name}"), move || {
            if let Some(mut out) = stdout {
                let mut buf = [0u8; 8192];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => log.push_bytes(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            log.close();
        });
        let sh = shared.clone();
        thread(format!("ct-stderr-{name}"), move || {
            let Some(mut err) = stderr else { return };
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            tracing::debug!(machine = %sh.name, "nspawn stderr: {line}");
                        }
                        let mut st = sh.lock();
                        st.stderr.extend_from_slice(&buf[..n]);
                        let excess = st.stderr.len().saturating_sub(STDERR_TAIL);
                        st.stderr.drain(..excess);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        let sh = shared.clone();
        thread(format!("ct-reaper-{name}"), move || {
            if exited_nowait(pid) {
                // Still a zombie: its process group id cannot be reused yet, so leftovers of the
                // group can be killed safely.
                // SAFETY: kill(2) on our own child's process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            machinist_qemu::unregister_process_group(pid);
            let status = loop {
                match child.wait() {
                    Ok(s) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(machine = %sh.name, "cannot reap the container: {e}");
                        break std::os::unix::process::ExitStatusExt::from_raw(0x7f00);
                    }
                }
            };
            sh.lock().exit = Some(status);
            sh.cond.notify_all();
            sh.exit_tx.send_replace(Some(status));
        });
        Ok(NspawnProcess { shared, serial })
    }

    /// The host pid of the container's process (`unshare`).
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid as u32
    }

    /// The console output.
    pub(crate) fn serial(&self) -> &SerialLog {
        &self.serial
    }

    /// How it ended, once it has.
    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        self.shared.lock().exit
    }

    /// The last bytes of its stderr (nspawn's own messages).
    pub(crate) fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().stderr).into_owned()
    }

    /// SIGKILL to nspawn, the first process of the container's PID namespace: the kernel then
    /// kills everything in it and `unshare` exits. Without nspawn yet, the whole group.
    pub(crate) fn start_kill(&self) {
        let st = self.shared.lock();
        if st.exit.is_some() {
            return;
        }
        let pid = self.shared.pid;
        let inner = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            });
        // SAFETY: kill(2) on our child (not reaped: its exit is unset under the lock) or on its
        // own child, which it reaps only after this signal has been sent.
        unsafe {
            match inner {
                Some(p) => libc::kill(p, libc::SIGKILL),
                None => libc::kill(-pid, libc::SIGKILL),
            };
        }
    }

    /// Waits at most `timeout` until it has been reaped.
    pub(crate) fn wait_timeout_blocking(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.exit.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.exit
    }

    /// Its exit status as a watch (`Some` once reaped).
    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.shared.exit_tx.subscribe()
    }

    /// Resolves once it has been reaped.
    pub(crate) async fn wait(&self) {
        let mut rx = self.shared.exit_tx.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

impl Drop for NspawnProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.start_kill();
            if self.wait_timeout_blocking(Duration::from_secs(5)).is_none() {
                // SAFETY: not reaped yet, so the group id is still ours.
                unsafe {
                    libc::kill(-self.shared.pid, libc::SIGKILL);
                }
                let _ = self.wait_timeout_blocking(Duration::from_secs(5));
            }
        }
    }
}

fn thread(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name).spawn(f) {
        tracing::warn!("cannot start a container helper thread: {e}");
    }
}

/// Blocks until `pid` has exited, leaving it unreaped.
fn exited_nowait(pid: i32) -> bool {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}
