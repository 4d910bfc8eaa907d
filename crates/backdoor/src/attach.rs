//! Raw attach for interactive use (`shell_interact`): bytes flow both ways until the escape byte,
//! then the channel is handed back resynchronised.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::error::ShellError;
use crate::guest::GREETING;
use crate::protocol::{self, find};
use crate::shell::Shell;

/// The conventional escape byte: Ctrl-] (as telnet).
pub const ESCAPE_CTRL_RIGHT_BRACKET: u8 = 0x1d;

/// How long each resynchronisation step waits.
const RESYNC_STEP: Duration = Duration::from_secs(3);

/// What a resync wait found.
enum Found {
    /// Our end line: the shell is in step.
    End,
    /// A new greeting: the shell was re-spawned.
    Greeting,
}

impl Shell {
    /// Connect `input` to the guest shell's stdin and its output to `output`, byte for byte, until
    /// `escape` is read from `input` (or `input` ends). Then resynchronise: send a fresh marker
    /// line and drain (forwarding to `output`) until it comes back. If the shell does not answer
    /// (a program still reads the console), the control shell kills the shell's children; if the
    /// shell was re-spawned (e.g. `exit` was typed), the new greeting is handled.
    ///
    /// The guest shell has no prompt and sends stderr to the serial console, as under NixOS.
    pub async fn attach_raw<R, W>(
        &mut self,
        mut input: R,
        mut output: W,
        escape: u8,
    ) -> Result<(), ShellError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.check_usable()?;
        let r = async {
            let pending = self.take_buffered(self.buffered().len());
            write_out(&mut output, &pending).await?;
            let mut ibuf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    r = input.read(&mut ibuf) => {
                        let n = r.map_err(|e| self.local_io("reading local input", e))?;
                        if n == 0 {
                            break;
                        }
                        match ibuf[..n].iter().position(|&b| b == escape) {
                            Some(k) => {
                                self.send(&ibuf[..k]).await?;
                                break;
                            }
                            None => self.send(&ibuf[..n]).await?,
                        }
                    }
                    r = self.fill_until(Instant::now() + Duration::from_secs(3600)) => {
                        r?;
                        let got = self.take_buffered(self.buffered().len());
                        write_out(&mut output, &got).await?;
                    }
                }
            }
            self.resync(&mut output).await
        }
        .await;
        if let Err(e) = &r {
            self.note_failure(e);
        }
        r
    }

    /// Bring the channel back in step after raw use; see [`Shell::attach_raw`].
    pub async fn resync<W: AsyncWrite + Unpin>(
        &mut self,
        output: &mut W,
    ) -> Result<(), ShellError> {
        let mut sink = tokio::io::sink();
        for step in 0..3 {
            let marker = protocol::random_marker();
            let mut line = String::from("\n");
            line.push_str(&protocol::command_line(&marker, ":"));
            self.send(line.as_bytes()).await?;
            // Only the first attempt's leftovers are the user's; later ones are our own retries.
            let found = if step == 0 {
                self.wait_found(&marker, RESYNC_STEP, output).await?
            } else {
                self.wait_found(&marker, RESYNC_STEP, &mut sink).await?
            };
            match found {
                Some(Found::End) => return Ok(()),
                Some(Found::Greeting) => return self.reconnect().await,
                None => {}
            }
            let Some(control) = self.control().cloned() else {
                break;
            };
            let pid = self.guest_pid();
            if step == 0 {
                // Something still reads the console (e.g. `cat` typed interactively).
                tracing::warn!(shell = %self.name(), "guest shell did not answer after raw use; killing its children");
                control.cancel_children(pid).await.map_err(|e| {
                    self.desync(format!("could not unblock the shell after raw use: {e}"))
                })?;
            } else {
                // The shell itself is stuck (e.g. an unterminated quote): systemd re-spawns it.
                tracing::warn!(shell = %self.name(), "guest shell still silent; killing it so that systemd re-spawns it");
                control
                    .execute(&format!("kill -KILL {pid}"), Some(RESYNC_STEP))
                    .await
                    .map_err(|e| {
                        self.desync(format!("could not restart the shell after raw use: {e}"))
                    })?;
                return self.reconnect().await;
            }
        }
        Err(self.desync("the shell did not come back in step after raw use"))
    }

    /// Drain until the end line of `marker` (consumed with its line) or a greeting (left
    /// buffered), forwarding the bytes before it to `output`. `None` when `wait` passed.
    async fn wait_found<W: AsyncWrite + Unpin>(
        &mut self,
        marker: &str,
        wait: Duration,
        output: &mut W,
    ) -> Result<Option<Found>, ShellError> {
        let end = format!("\n{marker} E ");
        let start = format!("{marker} S ");
        let deadline = Instant::now() + wait;
        loop {
            let buf = self.buffered();
            let e = find(buf, end.as_bytes(), 0).and_then(|i| {
                buf[i + 1..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|n| (i, i + 1 + n + 1))
            });
            let g = find(buf, GREETING.as_bytes(), 0);
            match (e, g) {
                (Some((i, stop)), g) if g.is_none_or(|g| g > i) => {
                    let mut got = self.take_buffered(stop);
                    got.truncate(i);
                    // Drop the start line of our no-op command from what the user sees.
                    if let Some(s) = find(&got, start.as_bytes(), 0) {
                        got.truncate(s);
                    }
                    write_out(output, &got).await?;
                    return Ok(Some(Found::End));
                }
                (_, Some(g)) => {
                    let got = self.take_buffered(g);
                    write_out(output, &got).await?;
                    return Ok(Some(Found::Greeting));
                }
                _ => {}
            }
            if !self.fill_until(deadline).await? {
                return Ok(None);
            }
        }
    }

    fn local_io(&self, doing: &'static str, source: std::io::Error) -> ShellError {
        ShellError::Io {
            name: self.name().to_owned(),
            doing,
            source,
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(output: &mut W, bytes: &[u8]) -> Result<(), ShellError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let r = async {
        output.write_all(bytes).await?;
        output.flush().await
    }
    .await;
    r.map_err(|source| ShellError::Io {
        name: "local terminal".to_owned(),
        doing: "writing to the local output",
        source,
    })
}
