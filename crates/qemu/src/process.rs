//! A supervised QEMU process: own process group, parent-death signal, kill on drop, reaping,
//! serial capture on stdout and a stderr tail for error messages.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::command::{find_binary, QemuCommand};
use crate::error::QemuError;
use crate::serial::{SerialLog, DEFAULT_MAX_LINES};
use crate::spawner::spawn_supervised;

/// Bytes of QEMU's stderr kept for error messages.
pub const STDERR_TAIL_BYTES: usize = 16 * 1024;
/// Grace period between SIGTERM and SIGKILL when a [`QemuProcess`] is dropped.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    exit: Option<ExitStatus>,
    stderr: Vec<u8>,
    stderr_done: bool,
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

    /// Signals the whole process group unless QEMU has been reaped (the zombie keeps the pid and
    /// group id reserved, so this never hits an unrelated process).
    fn signal_group(&self, sig: libc::c_int) -> bool {
        let st = self.lock();
        if st.exit.is_some() {
            return false;
        }
        // SAFETY: plain kill(2) on our own child's process group.
        unsafe { libc::kill(-self.pid, sig) == 0 }
    }

    fn wait_exit_blocking(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(s) = st.exit {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait_stderr_done_blocking(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while !st.stderr_done {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.lock().stderr).into_owned()
    }
}

/// A running (or exited) QEMU process.
///
/// Dropping it stops QEMU: SIGTERM to its process group, up to [`KILL_GRACE`], then SIGKILL, and
/// waits until QEMU is reaped (so no process is left behind when `drop` returns). Drop blocks for
/// at most a few seconds; use [`QemuProcess::terminate`] to do the same asynchronously.
pub struct QemuProcess {
    shared: Arc<Shared>,
    stdin: Mutex<Option<ChildStdin>>,
    serial: SerialLog,
    command_line: String,
    started: Instant,
}

impl std::fmt::Debug for QemuProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuProcess")
            .field("name", &self.shared.name)
            .field("pid", &self.shared.pid)
            .field("exit", &self.try_wait())
            .finish()
    }
}

impl QemuProcess {
    /// Validates `cmd` and starts QEMU (see [`crate::spawn_supervised`] for how).
    ///
    /// Returns as soon as the process exists; an immediate failure (bad option) shows up as
    /// [`QemuError::Exited`] from [`QemuProcess::while_running`] or [`QemuProcess::exit_error`],
    /// with QEMU's own message.
    pub fn spawn(cmd: &QemuCommand) -> Result<QemuProcess, QemuError> {
        cmd.validate()?;
        let binary = find_binary(&cmd.binary)?;
        let mut c = Command::new(&binary);
        c.args(cmd.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child: Child = spawn_supervised(c).map_err(|source| QemuError::Spawn {
            name: cmd.name.clone(),
            binary: binary.display().to_string(),
            source,
        })?;
        let pid = child.id() as i32;
        crate::groups::register(pid);
        tracing::debug!(machine = %cmd.name, pid, "started QEMU: {}", cmd.command_line());

        let (exit_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            name: cmd.name.clone(),
            pid,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            exit_tx,
        });
        let serial = SerialLog::new(cmd.name.clone(), DEFAULT_MAX_LINES);

        let stdin = child.stdin.take();
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd());
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let log = serial.clone();
        thread(format!("qemu-serial-{}", cmd.name), move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 8192];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => log.push_bytes(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            log.close();
        });

        let sh = shared.clone();
        thread(format!("qemu-stderr-{}", cmd.name), move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            tracing::debug!(machine = %sh.name, "qemu stderr: {line}");
                        }
                        let mut st = sh.lock();
                        st.stderr.extend_from_slice(&buf[..n]);
                        let excess = st.stderr.len().saturating_sub(STDERR_TAIL_BYTES);
                        st.stderr.drain(..excess);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            sh.lock().stderr_done = true;
            sh.cond.notify_all();
        });

        let sh = shared.clone();
        thread(format!("qemu-reaper-{}", cmd.name), move || {
            if wait_exited_nowait(pid) {
                // QEMU is a zombie now: its pid and process group id stay reserved until we
                // reap, so cleaning up leftover group members (e.g. `-incoming exec:` helpers)
                // is safe.
                // SAFETY: kill(2) on our child's group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            // Unlisted before the reap: once reaped, the pid may be reused by another process.
            crate::groups::unregister(pid);
            let mut st = sh.lock();
            let status = loop {
                match child.wait() {
                    Ok(s) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(machine = %sh.name, "cannot reap QEMU: {e}");
                        break std::os::unix::process::ExitStatusExt::from_raw(0x7f00);
                    }
                }
            };
            st.exit = Some(status);
            drop(st);
            sh.cond.notify_all();
            sh.exit_tx.send_replace(Some(status));
            tracing::debug!(machine = %sh.name, pid, "QEMU exited: {status}");
        });

        Ok(QemuProcess {
            shared,
            stdin: Mutex::new(stdin),
            serial,
            command_line: cmd.command_line(),
            started,
        })
    }

    /// The machine name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// QEMU's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.shared.pid as u32
    }

    /// When the process was spawned.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The shell-quoted command line QEMU was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The serial console (ttyS0 on stdio) log.
    pub fn serial(&self) -> &SerialLog {
        &self.serial
    }

    /// The last [`STDERR_TAIL_BYTES`] of QEMU's stderr.
    pub fn stderr_tail(&self) -> String {
        self.shared.stderr_tail()
    }

    /// The whole stderr tail once QEMU has exited: waits up to `timeout` for the reader to reach
    /// end of file (right after the exit, the last lines may still be in the pipe).
    pub(crate) fn stderr_after_exit_blocking(&self, timeout: Duration) -> String {
        self.shared.wait_stderr_done_blocking(timeout);
        self.stderr_tail()
    }

    /// The exit status if QEMU has exited (and been reaped).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.shared.lock().exit
    }

    /// Waits until QEMU exits. Wrap in `tokio::time::timeout` for a deadline.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.shared.exit_tx.subscribe();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `shared`; unreachable while `self` exists.
                return self
                    .shared
                    .wait_exit_blocking(Duration::from_secs(1))
                    .unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(0x7f00));
            }
        }
    }

    /// Blocking variant of [`QemuProcess::wait`] with a deadline (`None` on timeout).
    pub fn wait_timeout_blocking(&self, timeout: Duration) -> Option<ExitStatus> {
        self.shared.wait_exit_blocking(timeout)
    }

    /// Runs `fut` while QEMU runs. If QEMU exits first, returns [`QemuError::Exited`] with its
    /// status and stderr ("QEMU exited with status 1: qemu-system-x86_64: -device foo: ...").
    pub async fn while_running<F: Future>(&self, fut: F) -> Result<F::Output, QemuError> {
        tokio::select! {
            biased;
            out = fut => Ok(out),
            status = self.wait() => Err(self.exited_error(status).await),
        }
    }

    /// Like [`QemuProcess::while_running`] for fallible futures: when `fut` fails, QEMU exiting
    /// is usually the real cause (e.g. QMP closes because QEMU rejected an option), so if QEMU
    /// exits within a second of the failure, [`QemuError::Exited`] (with QEMU's stderr) is
    /// returned instead of `fut`'s error. Success is returned at once.
    pub async fn while_running_try<T, E>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, QemuError> {
        match self.while_running(fut).await? {
            Ok(v) => Ok(Ok(v)),
            Err(e) => match tokio::time::timeout(Duration::from_secs(1), self.wait()).await {
                Ok(status) => Err(self.exited_error(status).await),
                Err(_) => Ok(Err(e)),
            },
        }
    }

    /// If QEMU has exited, the error describing it (with stderr), else `None`.
    pub async fn exit_error(&self) -> Option<QemuError> {
        let status = self.try_wait()?;
        Some(self.exited_error(status).await)
    }

    async fn exited_error(&self, status: ExitStatus) -> QemuError {
        // QEMU has exited; stderr reaches EOF right after. Give the reader a moment to finish.
        let sh = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            sh.wait_stderr_done_blocking(Duration::from_secs(1))
        })
        .await;
        QemuError::Exited {
            name: self.shared.name.clone(),
            status,
            stderr: self.stderr_tail(),
        }
    }

    /// Sends `signal` to QEMU's process group (no-op once QEMU has exited). Returns whether the
    /// signal was sent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        self.shared.signal_group(signal as libc::c_int)
    }

    /// Sends SIGKILL to QEMU's process group without waiting.
    pub fn start_kill(&self) {
        self.shared.signal_group(libc::SIGKILL);
    }

    /// Kills QEMU (SIGKILL to the group) and waits until it is reaped (at most 10 s).
    pub async fn kill(&self) -> Result<ExitStatus, QemuError> {
        self.start_kill();
        self.wait_deadline(Duration::from_secs(10), "QEMU to die after SIGKILL")
            .await
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; waits until QEMU is reaped.
    pub async fn terminate(&self, grace: Duration) -> Result<ExitStatus, QemuError> {
        if self.shared.signal_group(libc::SIGTERM) {
            if let Ok(s) = tokio::time::timeout(grace, self.wait()).await {
                return Ok(s);
            }
        }
        self.kill().await
    }

    async fn wait_deadline(&self, timeout: Duration, what: &str) -> Result<ExitStatus, QemuError> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .map_err(|_| QemuError::Timeout {
                name: self.shared.name.clone(),
                what: what.into(),
                timeout,
            })
    }

    /// Writes `bytes` to QEMU's stdin, i.e. types them on the serial console (`send_console`).
    /// Fails after 10 s if the console does not accept input.
    pub fn write_stdin(&self, bytes: &[u8]) -> Result<(), QemuError> {
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        let mut guard = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let name = &self.shared.name;
        let stdin = guard.as_mut().ok_or_else(|| {
            QemuError::io(
                format!("serial console of `{name}` has no stdin"),
                std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            )
        })?;
        let mut rest = bytes;
        while !rest.is_empty() {
            match stdin.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(QemuError::Timeout {
                            name: name.clone(),
                            what: "the serial console to accept input".into(),
                            timeout,
                        });
                    }
                    poll_writable(stdin.as_raw_fd(), deadline - now);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(QemuError::io(
                        format!("writing to the serial console of `{name}` (has QEMU exited?)"),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if self.shared.signal_group(libc::SIGTERM)
            && self.shared.wait_exit_blocking(KILL_GRACE).is_some()
        {
            return;
        }
        self.shared.signal_group(libc::SIGKILL);
        if self
            .shared
            .wait_exit_blocking(Duration::from_secs(10))
            .is_none()
        {
            tracing::warn!(
                machine = %self.shared.name,
                pid = self.shared.pid,
                "QEMU did not die within 10 s of SIGKILL"
            );
        }
    }
}

fn thread(name: String, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("cannot start a QEMU supervision thread");
}

/// Blocks until `pid` has exited, without reaping it (`waitid(WNOWAIT)`). False if `waitid`
/// failed (then the pid may already be gone and must not be signalled).
fn wait_exited_nowait(pid: i32) -> bool {
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
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
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            tracing::warn!(pid, "waitid on QEMU failed: {err}");
            return false;
        }
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a pipe fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn poll_writable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe {
        libc::poll(&mut pfd, 1, ms.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_qemu, gone_within};

    #[test]
    fn process_group_is_unlisted_before_the_exit_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), "qemu-sleep", "exec sleep 600\n");
        let p = QemuProcess::spawn(&QemuCommand::new("groups").binary(&qemu)).unwrap();
        let pid = p.pid();
        assert!(
            crate::groups::live_process_groups().contains(&pid),
            "a running QEMU's group is listed for the fatal-signal handler"
        );
        p.start_kill();
        let status = p.wait_timeout_blocking(Duration::from_secs(5));
        assert!(status.is_some(), "SIGKILLed fake QEMU not reaped in 5 s");
        // Reaped: the pid may belong to another process now, so a fatal-signal handler must not
        // see it any more. The reaper unlists it before reaping, hence before `exit` is set.
        assert!(
            !crate::groups::live_process_groups().contains(&pid),
            "group {pid} still listed after QEMU was reaped"
        );
        assert!(gone_within(pid, Duration::from_secs(1)));
        drop(p);
    }
}
