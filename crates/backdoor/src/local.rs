//! A guest shell without a VM: the real backdoor script (`backdoor -`) run by the host's bash on
//! one end of a socket pair. For tests of this crate and of its users, and for sanity benchmarks.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;

/// A local backdoor shell process (its own process group, killed with everything it started on
/// drop).
#[derive(Debug)]
pub struct LocalShell {
    child: std::process::Child,
}

impl LocalShell {
    /// Spawn `bash -c <guest script> backdoor -` with stdin/stdout on one end of a new socket
    /// pair and stderr to `stderr`; returns the process and the host end of the pair.
    ///
    /// Must be called inside a tokio runtime (the stream is registered with it).
    pub fn spawn(stderr: Stdio) -> std::io::Result<(LocalShell, tokio::net::UnixStream)> {
        Self::spawn_script(crate::guest::SCRIPT, &["-"], stderr)
    }

    /// Like [`LocalShell::spawn`] with another script (`bash -c <script> backdoor <args>...`),
    /// e.g. one that splits its greeting or re-spawns its shell.
    pub fn spawn_script(
        script: &str,
        args: &[&str],
        stderr: Stdio,
    ) -> std::io::Result<(LocalShell, tokio::net::UnixStream)> {
        let (host, guest) = std::os::unix::net::UnixStream::pair()?;
        let guest_out: OwnedFd = guest.try_clone()?.into();
        let guest_in: OwnedFd = guest.into();
        let child = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("backdoor")
            .args(args)
            .stdin(Stdio::from(guest_in))
            .stdout(Stdio::from(guest_out))
            .stderr(stderr)
            .process_group(0)
            .spawn()?;
        host.set_nonblocking(true)?;
        let host = tokio::net::UnixStream::from_std(host)?;
        Ok((LocalShell { child }, host))
    }

    /// The pid of the outer bash (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the shell and every process in its process group (SIGKILL), and reap it.
    pub fn kill(&mut self) {
        // SAFETY: plain syscall on our own child's process group.
        unsafe {
            libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for LocalShell {
    fn drop(&mut self) {
        self.kill();
    }
}
