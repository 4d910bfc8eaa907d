//! The NixOS test driver's backdoor protocol (host side), reimplemented byte for byte as the
//! baseline for benchmarks: `[timeout N] bash -c '<set -euo pipefail; cmd>' | (base64 -w 0; echo)`,
//! read until a newline, decode; then `echo ${PIPESTATUS[0]}` for the exit code (two round trips,
//! three guest processes per command). It only needs the guest's bash, so it runs on the same
//! connected [`Shell`] as our protocol, interleaved.

use base64::Engine as _;
use tokio::time::Instant;

use crate::error::ShellError;
use crate::shell::{Output, Shell};

/// Python's `shlex.quote`: unchanged if only safe characters, else single quotes with `'` as
/// `'"'"'`.
pub fn shlex_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// The exact first line NixOS sends for `command` (`timeout` in seconds, guest-side).
pub fn command_bytes(command: &str, timeout: Option<u64>) -> String {
    let timeout_str = timeout.map(|t| format!("timeout {t}")).unwrap_or_default();
    let quoted = shlex_quote(&format!("set -euo pipefail; {command}"));
    format!("{timeout_str} bash -c {quoted} | (base64 -w 0; echo)\n")
}

/// The exact second line NixOS sends to learn the exit code.
pub const STATUS_BYTES: &str = "echo ${PIPESTATUS[0]}\n";

impl Shell {
    /// Run `command` with the NixOS protocol (baseline for benchmarks; no streaming, no
    /// background-holder detection, no host-side timeout: it waits as long as NixOS would, up to
    /// `wait`).
    pub async fn execute_nixos(
        &mut self,
        command: &str,
        timeout: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<Output, ShellError> {
        self.check_usable()?;
        let deadline = Instant::now() + wait;
        let r = async {
            self.send(command_bytes(command, timeout).as_bytes())
                .await?;
            let encoded = self.read_line(deadline, command).await?;
            let stdout = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim_ascii())
                .map_err(|e| {
                    self.desync(format!("NixOS protocol: bad base64 for `{command}`: {e}"))
                })?;
            self.send(STATUS_BYTES.as_bytes()).await?;
            let status = self.read_line(deadline, command).await?;
            let code = std::str::from_utf8(status.trim_ascii())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    self.desync(format!("NixOS protocol: bad status line for `{command}`"))
                })?;
            Ok(Output { code, stdout })
        }
        .await;
        if let Err(e) = &r {
            self.note_failure(e);
        }
        r
    }

    /// Read through the next newline (exclusive), leaving the rest buffered.
    async fn read_line(&mut self, deadline: Instant, command: &str) -> Result<Vec<u8>, ShellError> {
        let mut scanned = 0;
        loop {
            if let Some(n) = self.buffered()[scanned..].iter().position(|&b| b == b'\n') {
                let mut line = self.take_buffered(scanned + n + 1);
                line.pop();
                return Ok(line);
            }
            scanned = self.buffered().len();
            if !self.fill_until(deadline).await? {
                return Err(self.desync(format!("NixOS protocol: no reply to `{command}` in time")));
            }
        }
    }
}
