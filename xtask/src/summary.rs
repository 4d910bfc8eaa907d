//! The end-of-run summary of `cargo xtask test-postgrest`, read from the run's `log.jsonl` (the
//! driver's JSON log: `nest` / `finished` / `log` / `error` / `serial` records with `time` in
//! seconds since the test started).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// A block of the log (`nest` ... `finished`).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The block's message (`subtest: ...`).
    pub message: String,
    /// When it started (seconds since the test started).
    pub start: f64,
    /// `Some(ok)` once finished, `None` if the log ends inside it.
    pub ok: Option<bool>,
    /// Its duration, once finished.
    pub duration: Option<f64>,
}

/// What the summary needs from a run's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    /// When `start all VMs` began.
    pub start_all: Option<f64>,
    /// Per machine: seconds from its first `starting vm` to its first `connected to guest root
    /// shell` (the first boot; a machine's shell connects when the script first uses it).
    pub boots: BTreeMap<String, f64>,
    /// Per machine: how its first boot went, `warm` (restored from a snapshot) or `cold`.
    pub boot_kinds: BTreeMap<String, &'static str>,
    /// `ensuring image ...` blocks (image lookups/builds the run itself did).
    pub images: Vec<Block>,
    /// `run the VM test script`.
    pub script: Option<Block>,
    /// `subtest: ...` blocks, in order.
    pub subtests: Vec<Block>,
    /// `error` records.
    pub errors: Vec<String>,
    /// The artefact paths listed after `output directory:`.
    pub artefacts: Vec<PathBuf>,
}

/// Reads and parses `path`; an unreadable log gives an empty [`RunLog`] (the summary then says
/// the log is missing).
pub fn parse_log_file(path: &Path) -> Option<RunLog> {
    std::fs::read_to_string(path).ok().map(|t| parse_log(&t))
}

/// Parses the text of a `log.jsonl`.
pub fn parse_log(text: &str) -> RunLog {
    let mut log = RunLog::default();
    // id -> (kind, index) of blocks we track.
    let mut open: BTreeMap<u64, (Kind, usize)> = BTreeMap::new();
    let mut starting: BTreeMap<String, f64> = BTreeMap::new();
    let mut in_artefacts = false;
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let time = rec["time"].as_f64().unwrap_or(0.0);
        let message = rec["message"].as_str().unwrap_or("");
        let machine = rec["machine"].as_str();
        match rec["type"].as_str().unwrap_or("") {
            "nest" => {
                let block = Block {
                    message: message.to_string(),
                    start: time,
                    ok: None,
                    duration: None,
                };
                let id = rec["id"].as_u64().unwrap_or(u64::MAX);
                if message == "start all VMs" && log.start_all.is_none() {
                    log.start_all = Some(time);
                } else if message == "run the VM test script" && log.script.is_none() {
                    log.script = Some(block);
                    open.insert(id, (Kind::Script, 0));
                } else if message.starts_with("subtest: ") {
                    log.subtests.push(block);
                    open.insert(id, (Kind::Subtest, log.subtests.len() - 1));
                } else if message.starts_with("ensuring image ") {
                    log.images.push(block);
                    open.insert(id, (Kind::Image, log.images.len() - 1));
                }
            }
            "finished" => {
                let id = rec["id"].as_u64().unwrap_or(u64::MAX);
                if let Some((kind, i)) = open.remove(&id) {
                    let b = match kind {
                        Kind::Script => log.script.as_mut(),
                        Kind::Subtest => log.subtests.get_mut(i),
                        Kind::Image => log.images.get_mut(i),
                    };
                    if let Some(b) = b {
                        b.ok = rec["ok"].as_bool();
                        b.duration = rec["duration"].as_f64();
                    }
                }
            }
            "log" => {
                if let Some(m) = machine {
                    let kind = if message.starts_with("warm start: restored") {
                        Some("warm")
                    } else if message.starts_with("cold boot:") {
                        Some("cold")
                    } else {
                        None
                    };
                    if let Some(k) = kind {
                        log.boot_kinds.entry(m.to_string()).or_insert(k);
                    }
                    if message == "starting vm" {
                        starting.entry(m.to_string()).or_insert(time);
                    } else if message == "connected to guest root shell" {
                        if let Some(t0) = starting.get(m) {
                            log.boots.entry(m.to_string()).or_insert(time - t0);
                        }
                    }
                } else if message.starts_with("output directory:") {
                    in_artefacts = true;
                } else if in_artefacts {
                    match message.strip_prefix("  ") {
                        Some(p) => log.artefacts.push(PathBuf::from(p.trim())),
                        None => in_artefacts = false,
                    }
                }
            }
            "error" => log.errors.push(message.to_string()),
            _ => {}
        }
    }
    log
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Script,
    Subtest,
    Image,
}

/// Everything the summary prints.
#[derive(Debug)]
pub struct Summary {
    /// Whether the test passed.
    pub passed: bool,
    /// Which PostgREST server ran.
    pub postgrest: String,
    /// xtask's phases and their wall times.
    pub phases: Vec<(&'static str, Duration)>,
    /// The run's log, if it could be read.
    pub log: Option<RunLog>,
    /// The output directory.
    pub output: PathBuf,
    /// The whole command's wall time.
    pub total: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Summary {
    /// The summary block, ready to print.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n── test-postgrest summary ──");
        let _ = writeln!(
            s,
            "result      {}",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        let _ = writeln!(s, "PostgREST   {}", self.postgrest);
        let phase = |name: &str| {
            self.phases
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| *d)
        };
        if let Some(d) = phase("deps") {
            let _ = writeln!(s, "deps        {} (Debian packages)", secs(d));
        }
        if let Some(d) = phase("build") {
            let _ = writeln!(
                s,
                "build       {} (cargo build: machinist, postgrest-lite)",
                secs(d)
            );
        }
        if let Some(d) = phase("images") {
            let _ = writeln!(
                s,
                "images      {} (build or reuse: base, +postgresql, +curl)",
                secs(d)
            );
        }
        match &self.log {
            None => {
                let _ = writeln!(
                    s,
                    "log         {} could not be read (the run stopped before the test started)",
                    self.output.join("log.jsonl").display()
                );
            }
            Some(log) => self.render_log(&mut s, log),
        }
        if let Some(d) = phase("test") {
            let _ = writeln!(
                s,
                "test        {} (machinist run postgrest: set-up, VMs, script, clean-up)",
                secs(d)
            );
        }
        let _ = writeln!(s, "total       {} wall", secs(self.total));
        if self.passed {
            let _ = writeln!(s, "output      {}", self.output.display());
        } else {
            let _ = writeln!(s, "artefacts");
            let listed = self.log.as_ref().map(|l| l.artefacts.clone());
            match listed.filter(|a| !a.is_empty()) {
                Some(a) => {
                    for p in a {
                        let _ = writeln!(s, "  {}", p.display());
                    }
                }
                None => {
                    let _ = writeln!(s, "  {}", self.output.display());
                }
            }
        }
        s
    }

    fn render_log(&self, s: &mut String, log: &RunLog) {
        let start_all = log.start_all.unwrap_or(0.0);
        if !log.boots.is_empty() {
            let each: Vec<String> = log
                .boots
                .iter()
                .map(|(m, t)| match log.boot_kinds.get(m) {
                    Some(k) => format!("{m} {t:.1} s {k}"),
                    None => format!("{m} {t:.1} s"),
                })
                .collect();
            let _ = writeln!(
                s,
                "boot        {} (QEMU start to backdoor shell connected, booting at once)",
                each.join(", ")
            );
        }
        if let Some(script) = &log.script {
            let state = match script.ok {
                Some(true) => "",
                Some(false) => ", failed",
                None => ", did not finish",
            };
            let dur = script
                .duration
                .map(|d| format!("{d:.1} s"))
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(s, "script      {dur} (start_all() and the subtests{state})");
            for t in &log.subtests {
                let (mark, dur) = match (t.ok, t.duration) {
                    (Some(true), Some(d)) => ("ok  ", format!("{d:5.1} s")),
                    (Some(false), Some(d)) => ("FAIL", format!("{d:5.1} s")),
                    _ => ("??  ", "    ? ".to_string()),
                };
                let name = t.message.trim_start_matches("subtest: ");
                let done = t
                    .duration
                    .map(|d| format!(" (done {:.1} s after start_all)", t.start + d - start_all))
                    .unwrap_or_default();
                let _ = writeln!(s, "  {mark} {dur}  {name}{done}");
            }
        }
        if !self.passed {
            for e in log.errors.iter().take(3) {
                let _ = writeln!(s, "error       {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a real run (trimmed).
    const LOG: &str = r#"{"id":1,"machine":null,"message":"ensuring image bookworm+curl","parent":null,"time":0.003,"type":"nest"}
{"duration":0.003,"id":1,"ok":true,"time":0.006,"type":"finished"}
{"id":3,"machine":null,"message":"run the VM test script","parent":null,"time":0.017,"type":"nest"}
{"id":4,"machine":null,"message":"start all VMs","parent":3,"time":0.017,"type":"nest"}
{"machine":"client","message":"starting vm","parent":null,"time":0.017,"type":"log"}
{"machine":"server","message":"starting vm","parent":null,"time":0.019,"type":"log"}
{"machine":"client","message":"warm start: restored from snapshot 0123abcd (0.31 s to running)","parent":null,"time":0.4,"type":"log"}
{"machine":"server","message":"cold boot: warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false))","parent":null,"time":0.02,"type":"log"}
{"duration":0.133,"id":4,"ok":true,"time":0.151,"type":"finished"}
{"id":5,"machine":null,"message":"subtest: the guide's script","parent":3,"time":0.151,"type":"nest"}
{"line":"machinist-initrd: start at 3.18 s","machine":"server","time":5.235,"type":"serial"}
{"machine":"client","message":"connected to guest root shell","parent":7,"time":11.075,"type":"log"}
{"machine":"server","message":"connected to guest root shell","parent":8,"time":12.271,"type":"log"}
{"duration":30.874,"id":5,"ok":true,"time":31.024,"type":"finished"}
{"machine":"server","message":"starting vm","parent":12,"time":34.474,"type":"log"}
{"machine":"server","message":"connected to guest root shell","parent":16,"time":42.844,"type":"log"}
{"id":9,"machine":null,"message":"subtest: crash","parent":3,"time":31.024,"type":"nest"}
{"machine":null,"message":"Test \"crash\" failed with error: \"boom\"","parent":9,"time":40.0,"type":"error"}
{"duration":9.0,"id":9,"ok":false,"time":40.024,"type":"finished"}
{"duration":40.0,"id":3,"ok":false,"time":40.03,"type":"finished"}
{"machine":null,"message":"output directory: /tmp/o","parent":null,"time":59.309,"type":"log"}
{"machine":null,"message":"  /tmp/o/client-console.log","parent":null,"time":59.31,"type":"log"}
{"machine":null,"message":"  /tmp/o/log.jsonl","parent":null,"time":59.31,"type":"log"}
"#;

    #[test]
    fn parses_a_run_log() {
        let log = parse_log(LOG);
        assert_eq!(log.start_all, Some(0.017));
        assert_eq!(log.boots.len(), 2);
        assert!((log.boots["client"] - 11.058).abs() < 1e-6);
        assert!(
            (log.boots["server"] - 12.252).abs() < 1e-6,
            "first boot only"
        );
        assert_eq!(log.boot_kinds["client"], "warm");
        assert_eq!(log.boot_kinds["server"], "cold");
        assert_eq!(log.subtests.len(), 2);
        assert_eq!(log.subtests[1].ok, Some(false));
        assert_eq!(log.script.as_ref().unwrap().ok, Some(false));
        assert_eq!(log.images.len(), 1);
        assert_eq!(log.errors.len(), 1);
        assert_eq!(
            log.artefacts,
            [
                PathBuf::from("/tmp/o/client-console.log"),
                PathBuf::from("/tmp/o/log.jsonl")
            ]
        );
    }

    #[test]
    fn failure_summary_lists_errors_and_artefacts() {
        let summary = Summary {
            passed: false,
            postgrest: "postgrest-lite".into(),
            phases: vec![
                ("deps", Duration::from_millis(100)),
                ("build", Duration::from_millis(1200)),
                ("images", Duration::from_millis(50)),
                ("test", Duration::from_millis(42_000)),
            ],
            log: Some(parse_log(LOG)),
            output: PathBuf::from("/tmp/o"),
            total: Duration::from_millis(43_400),
        };
        insta::assert_snapshot!(summary.render());
    }

    #[test]
    fn missing_log_is_said() {
        let summary = Summary {
            passed: false,
            postgrest: "postgrest-lite".into(),
            phases: vec![],
            log: None,
            output: PathBuf::from("/tmp/o"),
            total: Duration::from_secs(1),
        };
        let out = summary.render();
        assert!(out.contains("/tmp/o/log.jsonl could not be read"), "{out}");
        assert!(out.contains("FAILED"), "{out}");
    }
}
