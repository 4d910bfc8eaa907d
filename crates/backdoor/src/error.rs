//! Errors of the host side. Every message names the shell and, where there is one, the command,
//! and says what to do next.

use std::time::Duration;

/// Why a shell operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// No greeting arrived before the connect deadline.
    #[error(
        "guest shell {name}: no greeting (`Spawning backdoor root shell...`) within {waited:?}; \
         look at the serial log, or run `systemctl status {unit}` on the serial console"
    )]
    ConnectTimeout {
        /// The shell's name.
        name: String,
        /// The systemd unit serving the shell in the guest.
        unit: String,
        /// How long we waited.
        waited: Duration,
    },

    /// The stream closed (QEMU exited, the VM crashed or the socket was closed).
    #[error(
        "guest shell {name}: disconnected{}: the VM or QEMU is gone (socket closed); \
         check the serial log and QEMU's exit status, then restart the machine",
        command.as_ref().map(|c| format!(" while running `{c}`")).unwrap_or_default()
    )]
    Disconnected {
        /// The shell's name.
        name: String,
        /// The command that was running, if any.
        command: Option<String>,
    },

    /// The command ran past its timeout; it was killed through the control shell and the shell
    /// is usable again. NixOS-style callers report this as exit code 124.
    #[error(
        "guest shell {name}: command `{command}` timed out after {timeout:?}; it was killed \
         and the shell is usable again (exit code 124 for NixOS-style callers)"
    )]
    Timeout {
        /// The shell's name.
        name: String,
        /// The command.
        command: String,
        /// The timeout that expired.
        timeout: Duration,
        /// Output produced before the kill.
        stdout: Vec<u8>,
    },

    /// The command was cancelled (e.g. Ctrl-C in the REPL); it was killed and the shell is
    /// usable again.
    #[error("guest shell {name}: command `{command}` was cancelled and killed; the shell is usable again")]
    Cancelled {
        /// The shell's name.
        name: String,
        /// The command.
        command: String,
        /// Output produced before the kill.
        stdout: Vec<u8>,
    },

    /// The command exited but left processes holding its stdout (a background process that was
    /// not redirected). Under NixOS this hangs forever.
    #[error(
        "guest shell {name}: command `{command}` exited (code {code}) but left background \
         process(es) {pids:?} holding its stdout; redirect the background process's output, \
         e.g. `cmd >/dev/null 2>&1 &` or `cmd >&2 &`"
    )]
    BackgroundHolder {
        /// The shell's name.
        name: String,
        /// The command.
        command: String,
        /// The processes still holding the output.
        pids: Vec<u32>,
        /// The command's exit code.
        code: i32,
        /// The command's output.
        stdout: Vec<u8>,
    },

    /// The shell is out of step (no end line after a kill, a malformed reply, or an earlier
    /// failure); it is not used again until it reconnects.
    #[error("guest shell {name}: out of step: {detail}; restart the machine (or reconnect after a reboot)")]
    Desync {
        /// The shell's name.
        name: String,
        /// What went wrong.
        detail: String,
    },

    /// The guest shell greeted again while a command ran: the guest rebooted or its shell was
    /// re-spawned. The command's result is unknown; call `reconnect` to use the new shell.
    #[error(
        "guest shell {name}: the shell re-spawned (new greeting) while `{command}` was running: \
         the guest rebooted or the shell died; reconnect to continue"
    )]
    Respawned {
        /// The shell's name.
        name: String,
        /// The command that was running.
        command: String,
    },

    /// The command cannot be sent (it contains a NUL byte).
    #[error("guest shell {name}: cannot send command `{command}`: {reason}")]
    InvalidCommand {
        /// The shell's name.
        name: String,
        /// The command (lossy).
        command: String,
        /// Why.
        reason: &'static str,
    },

    /// The command hit its timeout (or was cancelled) but no control shell is attached to kill
    /// it: it is still running and the shell is unusable until it reconnects.
    #[error(
        "guest shell {name}: command `{command}` timed out or was cancelled but cannot be stopped \
         without a control shell; it is still running and the shell is unusable; attach one with \
         `Shell::set_control` (the control shell runs on the guest's second virtio serial port, vport0p2)"
    )]
    NoControl {
        /// The shell's name.
        name: String,
        /// The command.
        command: String,
    },

    /// An I/O error on the stream.
    #[error("guest shell {name}: I/O error while {doing}: {source}")]
    Io {
        /// The shell's name.
        name: String,
        /// What we were doing.
        doing: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ShellError {
    /// The exit code a NixOS-style caller reports for this error: 124 for a timeout (what
    /// coreutils `timeout` returns in NixOS), `None` otherwise.
    pub fn nixos_exit_code(&self) -> Option<i32> {
        match self {
            ShellError::Timeout { .. } => Some(124),
            _ => None,
        }
    }
}
