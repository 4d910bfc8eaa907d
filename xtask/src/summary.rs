//! The end-of-run summary of `cargo xtask test-postgrest`, read from the run's `log.jsonl` (the
//! driver's JSON log). Facts come only from the typed `event` objects of its records (`name` and
//! fields: `starting`, `started`, `connected`, `image_ready`, `start_all`, `script_started` /
//! `script_finished`, `subtest_started` / `subtest_finished`, `artefact`), the records' `time`
//! (seconds since the test started) and the block ids linking a `nest` record to its `finished`
//! record; the wording of human lines is never matched (`error` lines are only shown).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// A block of the log opened by an event (`script_started`, `subtest_started`).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The subtest's name (empty for the script).
    pub name: String,
    /// When it started (seconds since the test started).
    pub start: f64,
    /// `Some(ok)` once finished, `None` if the log ends inside it.
    pub ok: Option<bool>,
    /// Its duration, once finished.
    pub duration: Option<f64>,
}

/// An image the run made sure of (`image_ready`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The image's name.
    pub name: String,
    /// Whether the run built it (rather than taking it from the cache).
    pub built: bool,
    /// Seconds spent on it.
    pub seconds: f64,
}

/// What the summary needs from a run's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    /// When `start_all` began.
    pub start_all: Option<f64>,
    /// Per machine: seconds from its first `starting` to its first `connected` (the first boot;
    /// a machine's shell connects when the script first uses it).
    pub boots: BTreeMap<String, f64>,
    /// Per machine: how its first boot went (from `started`'s `kind`, `built_snapshot` and
    /// `reason`): `restored node snapshot`, `built node snapshot (first run)` or
    /// `cold boot (why)`.
    pub boot_kinds: BTreeMap<String, String>,
    /// The images the run made sure of.
    pub images: Vec<Image>,
    /// The test script's block.
    pub script: Option<Block>,
    /// The subtests' blocks, in order.
    pub subtests: Vec<Block>,
    /// The messages of `error` records (shown as they are).
    pub errors: Vec<String>,
    /// The artefacts (`artefact` events), in order.
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
    // Block id -> the block it opened (the script, or the index of a subtest).
    let mut open: BTreeMap<u64, Tracked> = BTreeMap::new();
    let mut starting: BTreeMap<String, f64> = BTreeMap::new();
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let time = rec["time"].as_f64().unwrap_or(0.0);
        let id = rec["id"].as_u64();
        if rec["type"] == "error" {
            log.errors
                .push(rec["message"].as_str().unwrap_or("").to_string());
        }
        if rec["type"] == "finished" {
            let block = id.and_then(|id| open.remove(&id)).and_then(|t| match t {
                Tracked::Script => log.script.as_mut(),
                Tracked::Subtest(i) => log.subtests.get_mut(i),
            });
            if let Some(b) = block {
                // The finishing event says how it went; a block closed without one (unwound
                // by a panic) still has the record's own outcome.
                let ev = &rec["event"];
                b.ok = ev["ok"].as_bool().or(rec["ok"].as_bool());
                b.duration = ev["seconds"].as_f64().or(rec["duration"].as_f64());
            }
            continue;
        }
        let ev = &rec["event"];
        let machine = ev["machine"].as_str();
        match (ev["name"].as_str().unwrap_or(""), machine) {
            ("start_all", _) => {
                log.start_all.get_or_insert(time);
            }
            ("script_started", _) if log.script.is_none() => {
                log.script = Some(Block {
                    name: String::new(),
                    start: time,
                    ok: None,
                    duration: None,
                });
                if let Some(id) = id {
                    open.insert(id, Tracked::Script);
                }
            }
            ("subtest_started", _) => {
                log.subtests.push(Block {
                    name: ev["subtest"].as_str().unwrap_or("").to_string(),
                    start: time,
                    ok: None,
                    duration: None,
                });
                if let Some(id) = id {
                    open.insert(id, Tracked::Subtest(log.subtests.len() - 1));
                }
            }
            ("image_ready", _) => log.images.push(Image {
                name: ev["image"].as_str().unwrap_or("").to_string(),
                built: ev["built"].as_bool().unwrap_or(false),
                seconds: ev["seconds"].as_f64().unwrap_or(0.0),
            }),
            ("starting", Some(m)) => {
                starting.entry(m.to_string()).or_insert(time);
            }
            ("started", Some(m)) => {
                let how = match (ev["kind"].as_str(), ev["built_snapshot"].as_bool()) {
                    _ if ev["backend"].as_str() == Some("container") => "container".to_string(),
                    (Some("warm"), Some(true)) => "built node snapshot (first run)".to_string(),
                    (Some("warm"), _) => "restored node snapshot".to_string(),
                    (Some(k), _) => match ev["reason"].as_str() {
                        Some(r) => format!("{k} boot ({r})"),
                        None => format!("{k} boot"),
                    },
                    (None, _) => String::new(),
                };
                if !how.is_empty() {
                    log.boot_kinds.entry(m.to_string()).or_insert(how);
                }
            }
            ("connected", Some(m)) => {
                if let Some(t0) = starting.get(m) {
                    log.boots.entry(m.to_string()).or_insert(time - t0);
                }
            }
            ("artefact", _) => {
                if let Some(p) = ev["path"].as_str() {
                    log.artefacts.push(PathBuf::from(p));
                }
            }
            _ => {}
        }
    }
    log
}

/// A block whose `finished` record is still to come.
#[derive(Debug, Clone, Copy)]
enum Tracked {
    Script,
    Subtest(usize),
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
                "boot        {} (start to backdoor shell connected, booting at once)",
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
                let name = &t.name;
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

    /// Records of a run (trimmed), as the driver writes them: facts in `event` objects.
    const LOG: &str = r#"{"id":1,"machine":null,"message":"ensuring image bookworm+curl","parent":null,"time":0.003,"type":"nest"}
{"event":{"built":false,"image":"bookworm+curl","name":"image_ready","seconds":0.002},"machine":null,"parent":1,"time":0.005,"type":"event"}
{"duration":0.003,"id":1,"ok":true,"time":0.006,"type":"finished"}
{"event":{"name":"script_started"},"id":3,"machine":null,"message":"run the VM test script","parent":null,"time":0.017,"type":"nest"}
{"event":{"name":"start_all"},"id":4,"machine":null,"message":"start all VMs","parent":3,"time":0.017,"type":"nest"}
{"event":{"machine":"client","name":"starting"},"machine":"client","message":"starting vm","parent":4,"time":0.017,"type":"log"}
{"event":{"machine":"server","name":"starting"},"machine":"server","message":"starting vm","parent":4,"time":0.019,"type":"log"}
{"machine":"server","message":"cold boot: warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false))","parent":4,"time":0.02,"type":"log"}
{"event":{"kind":"cold","machine":"server","name":"started","pid":2002,"reason":"warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false))","seconds":0.1},"machine":"server","message":"QEMU running (pid 2002)","parent":4,"time":0.12,"type":"log"}
{"machine":"client","message":"warm start: restored from snapshot 0123abcd (0.31 s to running)","parent":4,"time":0.4,"type":"log"}
{"event":{"kind":"warm","machine":"client","name":"started","pid":2001,"reason":"0123abcd","seconds":0.31},"machine":"client","message":"QEMU running (pid 2001)","parent":4,"time":0.4,"type":"log"}
{"duration":0.133,"id":4,"ok":true,"time":0.151,"type":"finished"}
{"event":{"name":"subtest_started","subtest":"the guide's script"},"id":5,"machine":null,"message":"subtest: the guide's script","parent":3,"time":0.151,"type":"nest"}
{"line":"machinist-initrd: start at 3.18 s","machine":"server","time":5.235,"type":"serial"}
{"event":{"machine":"client","name":"connected","seconds":10.9},"machine":"client","message":"connected to guest root shell","parent":7,"time":11.075,"type":"log"}
{"machine":"client","message":"(connecting took 10.90 seconds)","parent":7,"time":11.075,"type":"log"}
{"event":{"code":0,"command":"true","machine":"client","name":"command","seconds":11.0},"machine":"client","parent":7,"time":11.1,"type":"event"}
{"event":{"machine":"server","name":"connected","seconds":12.1},"machine":"server","message":"connected to guest root shell","parent":8,"time":12.271,"type":"log"}
{"duration":30.874,"event":{"name":"subtest_finished","ok":true,"seconds":30.874,"subtest":"the guide's script","error":null},"id":5,"ok":true,"time":31.024,"type":"finished"}
{"event":{"machine":"server","name":"starting"},"machine":"server","message":"starting vm","parent":12,"time":34.474,"type":"log"}
{"event":{"kind":"cold","machine":"server","name":"started","pid":2003,"reason":"the machine's own disk overlay (restart)","seconds":0.1},"machine":"server","message":"QEMU running (pid 2003)","parent":12,"time":34.6,"type":"log"}
{"event":{"machine":"server","name":"connected","seconds":8.2},"machine":"server","message":"connected to guest root shell","parent":16,"time":42.844,"type":"log"}
{"event":{"name":"subtest_started","subtest":"crash"},"id":9,"machine":null,"message":"subtest: crash","parent":3,"time":31.024,"type":"nest"}
{"duration":9.0,"event":{"error":"boom","name":"subtest_finished","ok":false,"seconds":9.0,"subtest":"crash"},"id":9,"ok":false,"time":40.024,"type":"finished"}
{"machine":null,"message":"Test \"crash\" failed with error: \"boom\"","parent":3,"time":40.024,"type":"error"}
{"duration":40.0,"event":{"name":"script_finished","ok":false,"seconds":40.0},"id":3,"ok":false,"time":40.03,"type":"finished"}
{"event":{"name":"output_directory","path":"/tmp/o"},"machine":null,"message":"output directory: /tmp/o","parent":null,"time":59.309,"type":"log"}
{"event":{"kind":"console_log","name":"artefact","path":"/tmp/o/client-console.log"},"machine":null,"message":"  /tmp/o/client-console.log","parent":null,"time":59.31,"type":"log"}
{"event":{"kind":"json_log","name":"artefact","path":"/tmp/o/log.jsonl"},"machine":null,"message":"  /tmp/o/log.jsonl","parent":null,"time":59.31,"type":"log"}
"#;

    /// [`LOG`] with every `message` replaced: the summary must not depend on the wording.
    fn reworded(log: &str) -> String {
        log.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if v["type"] != "error" && v.get("message").is_some() {
                    v["message"] = Value::from("reworded");
                }
                format!("{v}\n")
            })
            .collect()
    }

    #[test]
    fn reads_facts_from_events_not_wording() {
        assert_eq!(parse_log(&reworded(LOG)), parse_log(LOG));
        // And a record without an event carries no fact, whatever it says.
        let plain = r#"{"machine":"server","message":"starting vm","parent":null,"time":1.0,"type":"log"}
{"machine":"server","message":"connected to guest root shell","parent":null,"time":2.0,"type":"log"}
{"id":1,"machine":null,"message":"subtest: x","parent":null,"time":0.1,"type":"nest"}
"#;
        assert_eq!(parse_log(plain), RunLog::default());
    }

    #[test]
    fn a_container_node_boots_as_a_container() {
        let log = parse_log(
            r#"{"event":{"backend":"container","machine":"client","name":"starting"},"machine":"client","message":"starting container","parent":null,"time":0.1,"type":"log"}
{"event":{"backend":"container","built_snapshot":false,"kind":"cold","machine":"client","name":"started","pid":7,"reason":null,"seconds":0.2},"machine":"client","message":"container running (pid 7)","parent":null,"time":0.3,"type":"log"}
"#,
        );
        assert_eq!(log.boot_kinds["client"], "container");
    }

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
        assert_eq!(log.boot_kinds["client"], "restored node snapshot");
        assert_eq!(
            log.boot_kinds["server"],
            "cold boot (warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false)))"
        );
        assert_eq!(log.subtests.len(), 2);
        assert_eq!(log.subtests[1].ok, Some(false));
        assert_eq!(log.script.as_ref().unwrap().ok, Some(false));
        assert_eq!(
            log.images,
            [Image {
                name: "bookworm+curl".into(),
                built: false,
                seconds: 0.002
            }]
        );
        assert_eq!(log.subtests[0].name, "the guide's script");
        assert_eq!(log.subtests[0].duration, Some(30.874));
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
