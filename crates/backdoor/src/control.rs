//! The control shell (the second port, `vport0p2`; `hvc1` on a NixOS-style guest): a second, independent guest shell speaking the same protocol. It
//! kills the main shell's running command (timeouts, Ctrl-C), runs short checks while the main
//! shell is busy (polling conditions), and tells whether a guest process is alive.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ShellError;
use crate::shell::{ConnectOptions, Output, Shell, ShellStream};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How long a kill through the control shell may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A shared handle to the control shell. Cheap to clone; calls are serialised.
#[derive(Debug, Clone)]
pub struct Control {
    shell: Arc<tokio::sync::Mutex<Shell>>,
    name: Arc<str>,
}

impl Control {
    /// Connect to the control console (wait for its greeting, install the helpers).
    pub async fn connect<S: ShellStream>(
        stream: S,
        opts: ConnectOptions,
    ) -> Result<Control, ShellError> {
        Ok(Control::from_shell(Shell::connect(stream, opts).await?))
    }

    /// Use an already connected shell as the control shell.
    pub fn from_shell(shell: Shell) -> Control {
        let name = Arc::from(shell.name());
        Control {
            shell: Arc::new(tokio::sync::Mutex::new(shell)),
            name,
        }
    }

    /// The control shell's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a short command (e.g. a polling check) while the main shell may be busy. A timeout
    /// here cannot be enforced by killing (the control shell has no control shell): the control
    /// shell is then declared out of step, so keep these commands short.
    pub async fn execute(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<Output, ShellError> {
        self.execute_boxed(command, timeout).await
    }

    /// Boxed: a shell's `execute` calls its control's `execute` (the future types would recurse).
    fn execute_boxed<'a>(
        &'a self,
        command: &'a str,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<Output, ShellError>> {
        Box::pin(async move {
            self.shell
                .lock()
                .await
                .execute(command, timeout, &mut |_| {})
                .await
        })
    }

    /// Kill `pid` and all its descendants (stopped first so none can fork away, then SIGKILL).
    /// Returns the pids that were signalled (empty if `pid` was already gone).
    pub async fn cancel(&self, pid: u32) -> Result<Vec<u32>, ShellError> {
        if pid <= 1 {
            return Err(ShellError::InvalidCommand {
                name: self.name.to_string(),
                command: format!("kill {pid}"),
                reason: "refusing to kill pid 0 or 1",
            });
        }
        let out = self
            .execute(&crate::protocol::kill_command(pid), Some(KILL_TIMEOUT))
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_ascii_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect())
    }

    /// Kill every descendant of `pid` (not `pid` itself). Used to unblock the main shell's bash.
    pub async fn cancel_children(&self, pid: u32) -> Result<Vec<u32>, ShellError> {
        let out = self
            .execute(
                &crate::protocol::kill_children_command(pid),
                Some(KILL_TIMEOUT),
            )
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_ascii_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect())
    }

    /// Whether guest process `pid` exists (e.g. the main shell's bash, [`Shell::guest_pid`]).
    pub async fn is_alive(&self, pid: u32) -> Result<bool, ShellError> {
        Ok(self
            .execute(&format!("kill -0 {pid}"), Some(KILL_TIMEOUT))
            .await?
            .code
            == 0)
    }

    /// Whether the control shell itself is usable.
    pub async fn is_usable(&self) -> bool {
        self.shell.lock().await.is_usable()
    }

    /// Wait for a new greeting after a reboot (see [`Shell::reconnect`]).
    pub async fn reconnect(&self) -> Result<(), ShellError> {
        self.shell.lock().await.reconnect().await
    }
}
