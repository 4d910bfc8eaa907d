//! The serial console of a running machine: copied to the log and to
//! `<output dir>/<name>-console.log`, read (`get_console_log`, `wait_for_console_text`) and
//! written (`send_console`, `console_interact`).

use std::io::Write as _;

use super::Machine;
use crate::backend::Instance;
use crate::ctx::Deadline;
use crate::error::{Error, Result};
use crate::timeouts::{IntoTimeout, Pace, DEFAULT_TIMEOUT};

impl Machine {
    /// Copies the console of a new instance to the log and the console log file.
    pub(super) fn spawn_console_task(
        &self,
        instance: &dyn Instance,
    ) -> tokio::task::JoinHandle<()> {
        let mut rx = instance.console().subscribe();
        let logger = self.ctx.logger.clone();
        let name = self.name.clone();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console_file)
            .ok();
        let pid = instance.pid();
        self.ctx.handle.spawn(async move {
            let mut file = file.map(std::io::LineWriter::new);
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "--- machinist: QEMU started (pid {pid}) ---");
            }
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        logger.serial(&name, &line);
                        if let Some(f) = file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        logger.warning(
                            Some(&name),
                            &format!("serial log skipped {n} lines (too fast)"),
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    /// Everything the serial console printed since the machine last started (NixOS
    /// `get_console_log`).
    pub fn get_console_log(&self) -> String {
        match self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(r) => r.instance.console().lines().join("\n"),
            None => std::fs::read_to_string(&self.console_file).unwrap_or_default(),
        }
    }

    /// Where the console log is written (`<output dir>/<name>-console.log`).
    pub fn console_log_path(&self) -> &std::path::Path {
        &self.console_file
    }

    /// Waits until `regex` matches the serial console output not consumed by an earlier call
    /// (multi-line, NixOS `wait_for_console_text`); returns the matched text. Default timeout
    /// 900 s (NixOS: none).
    pub fn wait_for_console_text(&self, regex: &str, timeout: impl IntoTimeout) -> Result<String> {
        let re = regex::Regex::new(regex).map_err(|e| {
            Error::bad_argument(Some(self.name()), format!("bad regex `{regex}`: {e}"))
        })?;
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        self.nested(&format!("waiting for {regex} to appear on console"), || {
            let run = self.require_running("wait for console text")?;
            let deadline = Deadline::new(t);
            let serial = run.instance.console().clone();
            let mut rx = serial.subscribe();
            // Set once QEMU has exited: one last look at the final output, then fail at once.
            let mut exited = false;
            loop {
                let lines = serial.lines();
                let total = serial.line_count();
                let first = total.saturating_sub(lines.len() as u64);
                let mut cursor = self
                    .console_cursor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let from = (*cursor).max(first);
                let skip = (from - first) as usize;
                let mut text = String::new();
                let mut ends = Vec::new();
                for l in &lines[skip.min(lines.len())..] {
                    text.push_str(l);
                    text.push('\n');
                    ends.push(text.len());
                }
                let partial = serial.partial_line();
                text.push_str(&partial);
                if let Some(m) = re.find(&text) {
                    let consumed = ends.iter().take_while(|&&e| e <= m.end()).count() as u64;
                    *cursor = from + consumed;
                    return Ok(m.as_str().to_string());
                }
                drop(cursor);
                if exited {
                    break;
                }
                if deadline.expired() {
                    return Err(Error::Timeout {
                        machine: Some(self.name.clone()),
                        what: format!("console text matching {regex}"),
                        timeout: t,
                        elapsed: deadline.elapsed(),
                        last_output: String::new(),
                    });
                }
                let wait = deadline.remaining().min(Pace::ConsolePoll.get());
                self.ctx.block_on(true, async {
                    let _ = tokio::time::timeout(wait, rx.recv()).await;
                    Ok(())
                })?;
                exited = run.instance.exit_status().is_some() && serial.is_closed();
            }
            Err(Error::NotRunning {
                machine: self.name.clone(),
                message: format!(
                    "QEMU exited before console text matching {regex} appeared (console log: {})",
                    self.console_file.display()
                ),
            })
        })
    }

    /// Writes `chars` to the serial console (QEMU's stdin, NixOS `send_console`).
    pub fn send_console(&self, chars: &str) -> Result<()> {
        let run = self.require_running("write to the serial console")?;
        run.instance
            .write_console(chars.as_bytes())
            .map_err(|e| Error::backend(Some(&self.name), "writing to the serial console", e))
    }

    /// Forwards host stdin to the serial console (QEMU's stdin) until Ctrl-D
    /// (NixOS `console_interact`); the console output appears in the log as usual.
    pub fn console_interact(&self) -> Result<()> {
        let run = self.require_running("attach the console")?;
        self.log_line(
            "Terminal is ready (there is no prompt): type on the serial console, Ctrl-D to leave",
        );
        let stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = std::io::Read::read(&mut stdin.lock(), &mut buf)
                .map_err(|e| Error::io("reading stdin", e))?;
            if n == 0 {
                return Ok(());
            }
            let chunk = &buf[..n];
            if let Some(pos) = chunk.iter().position(|&b| b == 0x04) {
                let _ = run.instance.write_console(&chunk[..pos]);
                return Ok(());
            }
            run.instance.write_console(chunk).map_err(|e| {
                Error::backend(Some(&self.name), "writing to the serial console", e)
            })?;
        }
    }
}
