use super::*;
use machinist_guest::NodeBackend;

/// A `Write` that appends to a shared buffer.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn redact(s: &str) -> String {
    let re = regex::Regex::new(r"\d+\.\d\d seconds").unwrap();
    let s = re.replace_all(s, "[T] seconds").into_owned();
    let re = regex::Regex::new(r#""(time|duration)":[0-9.]+"#).unwrap();
    let s = re.replace_all(&s, r#""$1":"[T]""#).into_owned();
    let re = regex::Regex::new(r#"time="[0-9.]+""#).unwrap();
    let s = re.replace_all(&s, r#"time="[T]""#).into_owned();
    let re = regex::Regex::new(r#"timestamp="[^"]+""#).unwrap();
    re.replace_all(&s, r#"timestamp="[TS]""#).into_owned()
}

/// The guide's REPL transcript, produced through the logger.
fn guide_session(lg: &Logger) {
    let start = lg.begin(None, "start all VMs");
    lg.log(Some("client"), "starting vm");
    lg.log(Some("client"), "QEMU running (pid 21160)");
    lg.log(Some("server"), "starting vm");
    lg.log(Some("server"), "QEMU running (pid 21169)");
    start.finish();
    let cmd = lg.begin(Some("server"), "must succeed: echo \"Hello, world!\"");
    let boot = lg.begin(Some("server"), "waiting for the VM to finish booting");
    lg.serial("server", "[    1.234567] Run /init as init process");
    lg.log(
        Some("server"),
        "Guest shell says: b'Spawning backdoor root shell...\\n'",
    );
    lg.log(Some("server"), "connected to guest root shell");
    lg.log(Some("server"), "(connecting took 0.00 seconds)");
    boot.finish();
    cmd.finish();
    lg.junit_begin("networking");
    let sub = lg.begin(None, "subtest: networking");
    let failing = lg.begin(Some("client"), "must succeed: false");
    lg.log(Some("client"), "output: ");
    drop(failing);
    drop(sub);
    lg.error(
        None,
        "Test \"networking\" failed with error: \"command `false` failed (exit code 1)\"",
    );
    lg.junit_end(Some("command `false` failed (exit code 1)".into()));
    lg.set_print_serial(false);
    lg.serial("server", "hidden from the terminal, kept in JSON");
}

#[test]
fn terminal_format_matches_nixos() {
    let buf = SharedBuf::default();
    let lg = Logger::to_writer(buf.clone(), false);
    guide_session(&lg);
    insta::assert_snapshot!(redact(&buf.text()));
}

#[test]
fn terminal_colours() {
    let buf = SharedBuf::default();
    let lg = Logger::to_writer(buf.clone(), true);
    let s = lg.begin(Some("server"), "must succeed: true");
    lg.serial("server", "serial");
    lg.error(None, "boom");
    s.finish();
    insta::assert_debug_snapshot!(redact(&buf.text()));
}

#[test]
fn json_lines() {
    let buf = SharedBuf::default();
    let lg = Logger::silent();
    lg.write_json_to_writer(buf.clone());
    guide_session(&lg);
    lg.flush();
    let text = buf.text();
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    insta::assert_snapshot!(redact(&text));
}

#[test]
fn junit_report() {
    let lg = Logger::silent();
    guide_session(&lg);
    lg.junit_begin("database");
    lg.log(Some("server"), "ok");
    lg.junit_begin("nested");
    lg.junit_end(None);
    lg.junit_end(None);
    insta::assert_snapshot!(redact(&lg.junit_xml("postgrest", true)));
}

#[test]
fn strip_control_removes_ansi() {
    assert_eq!(strip_control("a\x1b[1;32mb\x1b[0m\x07c\n"), "abc\n");
}

#[test]
fn very_long_guest_lines_are_clipped_with_a_marker() {
    let short = "é".repeat(10);
    assert_eq!(super::clip_line(&short), short);
    let long = format!(
        "{}é{}",
        "a".repeat(super::MAX_LINE_BYTES - 1),
        "b".repeat(100_000)
    );
    let clipped = super::clip_line(&long);
    assert!(
        clipped.len() < super::MAX_LINE_BYTES + 100,
        "{}",
        clipped.len()
    );
    assert!(clipped.starts_with(&"a".repeat(super::MAX_LINE_BYTES - 1)));
    assert!(
        clipped.ends_with("... [machinist: 100002 more bytes of this line dropped]"),
        "{}",
        &clipped[clipped.len() - 80..]
    );
}

/// [`guide_session`] told through typed events where a fact has one.
fn guide_session_with_events(lg: &Logger) {
    let start = lg.begin_event(Event::StartAll);
    for (m, pid) in [("client", 21160), ("server", 21169)] {
        lg.event(Event::Starting {
            machine: m.into(),
            backend: NodeBackend::Vm,
        });
        lg.event(Event::Started {
            machine: m.into(),
            backend: NodeBackend::Vm,
            kind: BootKind::Cold,
            pid,
            seconds: 0.5,
            reason: Some("warm start is off".into()),
            built_snapshot: false,
        });
    }
    start.finish();
    let cmd = lg.begin(Some("server"), "must succeed: echo \"Hello, world!\"");
    let boot = lg.begin(Some("server"), "waiting for the VM to finish booting");
    lg.serial("server", "[    1.234567] Run /init as init process");
    lg.log(
        Some("server"),
        "Guest shell says: b'Spawning backdoor root shell...\\n'",
    );
    lg.event(Event::Connected {
        machine: "server".into(),
        seconds: 0.0,
    });
    boot.finish();
    cmd.finish();
    let sub = lg.begin_event(Event::SubtestStarted {
        subtest: "networking".into(),
    });
    let failing = lg.begin(Some("client"), "must succeed: false");
    lg.log(Some("client"), "output: ");
    drop(failing);
    let seconds = sub.elapsed().as_secs_f64();
    sub.end(Event::SubtestFinished {
        subtest: "networking".into(),
        ok: false,
        seconds,
        error: Some("command `false` failed (exit code 1)".into()),
    });
    lg.set_print_serial(false);
    lg.serial("server", "hidden from the terminal, kept in JSON");
}

/// The JSON records of `text` without their `event` objects and with times redacted.
fn without_events(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("event");
            serde_json::from_str(&redact(&v.to_string())).unwrap()
        })
        .collect()
}

#[test]
fn events_print_todays_lines_and_only_add_fields_to_the_json() {
    let (old_term, new_term) = (SharedBuf::default(), SharedBuf::default());
    let (old_json, new_json) = (SharedBuf::default(), SharedBuf::default());
    let old = Logger::to_writer(old_term.clone(), false);
    old.write_json_to_writer(old_json.clone());
    guide_session(&old);
    let new = Logger::to_writer(new_term.clone(), false);
    new.write_json_to_writer(new_json.clone());
    guide_session_with_events(&new);
    assert_eq!(redact(&new_term.text()), redact(&old_term.text()));
    assert_eq!(
        redact(&new.junit_xml("t", true)),
        redact(&old.junit_xml("t", true))
    );
    assert_eq!(
        without_events(&new_json.text()),
        without_events(&old_json.text())
    );
    let with_event = new_json
        .text()
        .lines()
        .filter(|l| l.contains(r#""event":{"#))
        .count();
    // start all (nest), 2 x starting, 2 x started, connected, subtest start and end.
    assert_eq!(with_event, 8, "{}", new_json.text());
}

#[test]
fn event_lines_are_todays_wording() {
    let cases = [
        (
            Event::Starting {
                machine: "server".into(),
                backend: NodeBackend::Vm,
            },
            Some("starting vm"),
        ),
        (
            Event::Starting {
                machine: "client".into(),
                backend: NodeBackend::Container,
            },
            Some("starting container"),
        ),
        (
            Event::Started {
                machine: "client".into(),
                backend: NodeBackend::Container,
                kind: BootKind::Cold,
                pid: 43,
                seconds: 0.3,
                reason: None,
                built_snapshot: false,
            },
            Some("container running (pid 43)"),
        ),
        (
            Event::Started {
                machine: "server".into(),
                backend: NodeBackend::Vm,
                kind: BootKind::Warm,
                pid: 42,
                seconds: 0.84,
                reason: Some("0123abcd".into()),
                built_snapshot: false,
            },
            Some("QEMU running (pid 42)"),
        ),
        (
            Event::Connected {
                machine: "server".into(),
                seconds: 4.123,
            },
            Some("connected to guest root shell"),
        ),
        (Event::StartAll, Some("start all VMs")),
        (Event::ScriptStarted, Some("run the VM test script")),
        (
            Event::SubtestStarted {
                subtest: "db".into(),
            },
            Some("subtest: db"),
        ),
        (
            Event::SubtestFinished {
                subtest: "db".into(),
                ok: false,
                seconds: 1.0,
                error: Some("boom".into()),
            },
            Some("Test \"db\" failed with error: \"boom\""),
        ),
        (
            Event::SubtestFinished {
                subtest: "db".into(),
                ok: true,
                seconds: 1.0,
                error: None,
            },
            None,
        ),
        (
            Event::ScriptFinished {
                ok: true,
                seconds: 1.0,
            },
            None,
        ),
        (
            Event::OutputDirectory {
                path: "/tmp/o".into(),
            },
            Some("output directory: /tmp/o"),
        ),
        (
            Event::Artefact {
                path: "/tmp/o/junit.xml".into(),
                kind: ArtefactKind::Junit,
            },
            Some("  /tmp/o/junit.xml"),
        ),
        (
            Event::Command {
                machine: "server".into(),
                command: "true".into(),
                code: 0,
                seconds: 0.1,
            },
            None,
        ),
        (
            Event::Settle {
                machines: vec!["server".into()],
                reason: "waiting for success: true".into(),
                seconds: 2.0,
                ok: true,
            },
            None,
        ),
        (
            Event::ImageReady {
                image: "bookworm".into(),
                built: false,
                seconds: 0.01,
            },
            None,
        ),
    ];
    for (event, line) in cases {
        assert_eq!(event.message().as_deref(), line, "{event:?}");
    }
    let connected = Event::Connected {
        machine: "server".into(),
        seconds: 4.123,
    };
    assert_eq!(
        connected.lines(),
        [
            "connected to guest root shell",
            "(connecting took 4.12 seconds)"
        ]
    );
}

#[test]
fn event_records() {
    let buf = SharedBuf::default();
    let lg = Logger::silent();
    lg.write_json_to_writer(buf.clone());
    let script = lg.begin_event(Event::ScriptStarted);
    let image = lg.begin(None, "ensuring image bookworm+curl");
    lg.event(Event::ImageReady {
        image: "bookworm+curl".into(),
        built: true,
        seconds: 12.3456,
    });
    image.finish();
    lg.event(Event::Starting {
        machine: "server".into(),
        backend: NodeBackend::Vm,
    });
    lg.event(Event::Started {
        machine: "server".into(),
        backend: NodeBackend::Vm,
        kind: BootKind::Warm,
        pid: 4242,
        seconds: 0.8412,
        reason: Some("0123abcd".into()),
        built_snapshot: false,
    });
    lg.event(Event::Settle {
        machines: vec!["client".into(), "server".into()],
        reason: "waiting for success: curl server".into(),
        seconds: 3.5,
        ok: true,
    });
    lg.event(Event::Command {
        machine: "server".into(),
        command: "echo hi".into(),
        code: 0,
        seconds: 0.02,
    });
    let sub = lg.begin_event(Event::SubtestStarted {
        subtest: "ok".into(),
    });
    sub.end(Event::SubtestFinished {
        subtest: "ok".into(),
        ok: true,
        seconds: 1.25,
        error: None,
    });
    script.end(Event::ScriptFinished {
        ok: true,
        seconds: 2.5,
    });
    lg.event(Event::OutputDirectory {
        path: "/tmp/o".into(),
    });
    lg.event(Event::Artefact {
        path: "/tmp/o/server-console.log".into(),
        kind: ArtefactKind::ConsoleLog,
    });
    lg.flush();
    insta::assert_snapshot!(redact(&buf.text()));
}

#[test]
fn a_subtest_event_block_fills_the_junit_case() {
    let lg = Logger::silent();
    let sub = lg.begin_event(Event::SubtestStarted {
        subtest: "db".into(),
    });
    lg.log(Some("server"), "inside");
    sub.end(Event::SubtestFinished {
        subtest: "db".into(),
        ok: false,
        seconds: 0.5,
        error: Some("boom".into()),
    });
    lg.log(None, "after");
    let xml = lg.junit_xml("t", true);
    let case = &xml[xml.find(r#"<testcase name="db""#).unwrap()..];
    assert!(case.contains(r#"<failure message="boom"/>"#), "{xml}");
    assert!(
        case.contains("subtest: db\nserver: inside\nTest &quot;db&quot; failed"),
        "{xml}"
    );
    assert!(!case.contains("after"), "{xml}");
}
