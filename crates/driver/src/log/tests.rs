use super::*;

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
