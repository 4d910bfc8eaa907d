//! The end of a run: artefacts of a failure (screenshots, journals, pcaps, console logs), every
//! machine and switch stopped, JUnit and the JSON log written, the run directory removed.

use std::path::PathBuf;
use std::time::Duration;

use super::TestRun;
use crate::error::{Error, Result};
use crate::log::{ArtefactKind, Event};
use crate::timeouts::Wait;

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The test name.
    pub name: String,
    /// The output directory.
    pub output_dir: PathBuf,
    /// The JSON-lines log.
    pub json_log: PathBuf,
    /// The JUnit XML report.
    pub junit: PathBuf,
    /// Every artefact written (console logs, pcaps, screenshots, logs).
    pub artefacts: Vec<PathBuf>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl TestRun {
    /// Ends the run: on failure saves artefacts (final screenshots, each running machine's
    /// journal, pcaps, console logs), stops
    /// every machine and switch, writes JUnit and the JSON log, removes the run directory unless
    /// keep_state, and lists the artefacts as the last lines of the log.
    pub fn finish(mut self, outcome: Result<()>) -> Result<Report> {
        let lg = self.ctx.logger.clone();
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let failed = outcome.is_err();
        let mut artefacts: Vec<(PathBuf, ArtefactKind)> = Vec::new();
        if let Err(e) = &outcome {
            lg.error(None, &format!("!!! Test \"{}\" failed: {e}", self.name));
            for m in self.every_machine() {
                if let Some(p) = m.failure_screenshot() {
                    artefacts.push((p, ArtefactKind::Screenshot));
                }
                if let Some(p) = m.failure_journal() {
                    artefacts.push((p, ArtefactKind::Journal));
                }
            }
            for v in self.vlans.values() {
                lg.log(None, &format!("vlan{}: {}", v.nr, v.summary().trim_end()));
            }
        }
        lg.nested(None, "cleanup", || {
            for m in self.every_machine() {
                m.kill_now();
            }
            for v in self.vlans.values() {
                v.switch.shutdown();
            }
            Ok::<(), Error>(())
        })?;
        for m in self.every_machine() {
            if m.console_log_path().exists() {
                artefacts.push((m.console_log_path().to_path_buf(), ArtefactKind::ConsoleLog));
            }
        }
        for v in self.vlans.values() {
            if let Some(p) = v.pcap_path() {
                if failed && p.exists() {
                    artefacts.push((p.to_path_buf(), ArtefactKind::Pcap));
                }
            }
        }
        if !failed {
            // pcaps are kept only when they can help debugging.
            for v in self.vlans.values() {
                if let Some(p) = v.pcap_path() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let out = self.ctx.out_dir.clone();
        let junit = out.join("junit.xml");
        let json_log = out.join("log.jsonl");
        let xml = lg.junit_xml(&self.name, false);
        if let Err(e) = std::fs::write(&junit, xml) {
            lg.warning(None, &format!("cannot write {}: {e}", junit.display()));
        }
        artefacts.push((junit.clone(), ArtefactKind::Junit));
        artefacts.push((json_log.clone(), ArtefactKind::JsonLog));
        self.cleanup_run_dir();
        lg.event(Event::OutputDirectory { path: out.clone() });
        for (path, kind) in &artefacts {
            lg.event(Event::Artefact {
                path: path.clone(),
                kind: *kind,
            });
        }
        lg.flush();
        self.finished = true;
        outcome.map(|()| Report {
            name: self.name.clone(),
            output_dir: out,
            json_log,
            junit,
            artefacts: artefacts.into_iter().map(|(p, _)| p).collect(),
            duration: self.started.elapsed(),
        })
    }

    fn cleanup_run_dir(&self) {
        let dir = &self.ctx.run_dir;
        crate::stale::release(dir);
        if self.ctx.keep_state {
            self.ctx.logger.log(
                None,
                &format!("keeping the run directory {}", dir.display()),
            );
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
        crate::orphans::unregister_dir(dir);
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        for m in self.every_machine() {
            m.kill_now();
        }
        for v in self.vlans.values() {
            v.switch.shutdown();
        }
        if !self.finished {
            self.cleanup_run_dir();
        }
        self.machines.clear();
        self.extra.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(self.ctx.timeouts.of(Wait::RuntimeShutdown));
        }
    }
}
