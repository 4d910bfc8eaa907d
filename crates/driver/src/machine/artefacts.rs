//! What a failed test keeps of a machine: its journal and a final screenshot.

use std::path::PathBuf;

use super::Machine;
use crate::timeouts::Wait;

impl Machine {
    /// Saves artefacts after a failure: the running machine's journal (`journalctl -b`) as
    /// `<name>-journal.log` next to its console log, if its shell still answers.
    pub(crate) fn failure_journal(&self) -> Option<PathBuf> {
        if !self.is_up() || self.ctx.aborted().is_some() {
            return None;
        }
        let path = self.ctx.out_dir.join(format!("{}-journal.log", self.name));
        let timeout = self.ctx.timeouts.of(Wait::FailureJournal);
        match self.run_command_quiet("journalctl -b --no-pager -o short-monotonic", Some(timeout)) {
            Ok((0, out)) => match std::fs::write(&path, out) {
                Ok(()) => Some(path),
                Err(e) => {
                    self.log_line(&format!("cannot write {}: {e}", path.display()));
                    None
                }
            },
            Ok((code, _)) => {
                self.log_line(&format!(
                    "journalctl -b exited with code {code}; no journal saved"
                ));
                None
            }
            Err(e) => {
                self.log_line(&format!("cannot read the journal: {e}"));
                None
            }
        }
    }

    /// Saves artefacts after a failure: screenshot of the running machine.
    pub(crate) fn failure_screenshot(&self) -> Option<PathBuf> {
        self.current()?;
        let path = self.ctx.out_dir.join(format!("{}-final.png", self.name));
        self.screenshot_raw(&path).ok()
    }
}
