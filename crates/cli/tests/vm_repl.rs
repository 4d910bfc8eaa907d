//! The REPL in a real pseudo-terminal, through the guide's interactive session on the
//! one-machine `hello` test, typed exactly as the guide shows: `serial_stdout_off()`,
//! `start_all()`, `machine.succeed('echo "Hello, world!"')`, `import json`, `json.loads(...)`;
//! then a failing command (the REPL lives on), Ctrl-C during `machine.succeed("sleep 100")`
//! (back at the prompt within a second, the machine still usable), `shell_interact()` and back
//! (Ctrl-D), and Ctrl-D at the prompt (every QEMU gone). The transcript, timings redacted, is an
//! insta snapshot.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pty::Pty;

const PROMPT: &str = ">>> ";
const SHORT: Duration = Duration::from_secs(30);
/// The first command waits for the boot (TCG, shared cores).
const BOOT: Duration = Duration::from_secs(180);

/// The transcript as a reader sees it: no carriage returns, no terminal escapes, no timings.
fn normalize(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).replace('\r', "");
    let escapes = regex::Regex::new(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[=>])").unwrap();
    let text = escapes.replace_all(&text, "");
    let rules = [
        (r"\d+\.\d+ seconds", "[T] seconds"),
        (r"pid \d+", "pid [PID]"),
        // The choice and its reason depend on the host (no /dev/kvm, a probe that hung or
        // aborted, a cached verdict, a working KVM): the whole line is redacted.
        (r"(?m)^accelerator: .*$", "accelerator: [ACCEL] ([WHY])"),
        (r"line \d+", "line [N]"),
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]"),
    ];
    let mut out = text.into_owned();
    for (re, with) in rules {
        out = regex::Regex::new(re)
            .unwrap()
            .replace_all(&out, with)
            .into_owned();
    }
    // Trailing blanks the line editor may leave.
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

fn qemu_pids(transcript: &str) -> Vec<u32> {
    regex::Regex::new(r"QEMU running \(pid (\d+)\)")
        .unwrap()
        .captures_iter(transcript)
        .filter_map(|c| c[1].parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; a live process has a non-Z state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[test]
fn vm_repl_guide_session() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machinist"));
    cmd.args(["interactive", "hello"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env("MACHINIST_OUTPUT_DIR", dir.path().join("out"))
        // The guide's session cold-boots; a warm start (restored VM state) logs other lines.
        .env("MACHINIST_WARM_START", "0")
        .env_remove("MACHINIST_ACCEL");
    let mut p = Pty::spawn(cmd);

    p.expect("Ctrl-D stops every machine and exits.", SHORT);
    p.expect(PROMPT, SHORT);
    p.send_line("serial_stdout_off()");
    p.expect(PROMPT, SHORT);
    p.send_line("start_all()");
    p.expect("(finished: start all VMs", SHORT);
    p.expect(PROMPT, SHORT);

    p.send_line(r#"machine.succeed('echo "Hello, world!"')"#);
    p.expect(r"'Hello, world!\n'", BOOT);
    p.expect(PROMPT, SHORT);

    // A failing command raises, prints the driver's error, and the REPL goes on.
    p.send_line(r#"machine.succeed("false")"#);
    p.expect(
        "RequestedAssertionFailed: machine: command `false` failed",
        SHORT,
    );
    p.expect(PROMPT, SHORT);

    p.send_line("import json");
    p.expect(PROMPT, SHORT);
    p.send_line(r#"response = machine.succeed("echo '{\"id\": 1, \"done\": false}'")"#);
    p.expect(PROMPT, SHORT);
    p.send_line("json.loads(response)");
    p.expect("{'id': 1, 'done': False}", SHORT);
    p.expect(PROMPT, SHORT);

    // Ctrl-C interrupts the running command (cancelled in the guest), not the session.
    p.send_line(r#"machine.succeed("sleep 100")"#);
    p.expect("machine: must succeed: sleep 100", SHORT);
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    p.send("\x03");
    p.expect("KeyboardInterrupt", Duration::from_secs(10));
    p.expect(PROMPT, Duration::from_secs(10));
    let back = t0.elapsed();
    eprintln!(
        "Ctrl-C: back at the prompt in {:.0} ms",
        back.as_secs_f64() * 1000.0
    );
    assert!(
        back < Duration::from_secs(1),
        "Ctrl-C took {back:?} to give the prompt back"
    );
    p.send_line(r#"machine.succeed("echo still here")"#);
    p.expect(r"'still here\n'", SHORT);
    p.expect(PROMPT, SHORT);

    // A raw root shell through the backdoor, then back to the REPL with Ctrl-] (and Enter).
    p.send_line("machine.shell_interact()");
    p.expect("Terminal is ready", SHORT);
    p.send_line("echo inside-$((6*7))");
    p.expect("inside-42", SHORT);
    p.send_line("\x1d");
    p.expect(PROMPT, SHORT);
    p.send_line(r#"machine.succeed("echo back")"#);
    p.expect(r"'back\n'", SHORT);
    p.expect(PROMPT, SHORT);

    // Ctrl-D stops every machine and exits.
    p.send("\x04");
    assert!(
        p.expect_eof(Duration::from_secs(60)),
        "the REPL did not exit"
    );
    let status = p.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after Ctrl-D");

    let transcript = String::from_utf8_lossy(&p.transcript).into_owned();
    let pids = qemu_pids(&transcript);
    assert!(!pids.is_empty(), "no QEMU pid in:\n{transcript}");
    for pid in pids {
        assert!(!alive(pid), "QEMU {pid} still running after Ctrl-D");
    }
    let history = dir.path().join(".machinist-history");
    let mode = std::fs::metadata(&history)
        .expect("history file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "history file mode");
    let hist = std::fs::read_to_string(&history).unwrap();
    assert!(hist.contains("start_all()"), "{hist}");

    // The unredacted transcript, for the README (`--nocapture`).
    eprintln!(
        "---- transcript ----\n{}\n---- end ----",
        String::from_utf8_lossy(&p.transcript).replace('\r', "")
    );
    insta::assert_snapshot!(normalize(&p.transcript));
}

/// `machinist interactive postgrest` (what `cargo xtask interactive postgrest` runs) opens the
/// REPL on the PostgREST machines, with the tutorial's options under `nodes`; Ctrl-D leaves
/// without booting anything.
#[test]
fn vm_repl_on_the_postgrest_machines() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machinist"));
    cmd.args(["interactive", "postgrest"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env("MACHINIST_OUTPUT_DIR", dir.path().join("out"));
    let mut p = Pty::spawn(cmd);
    // Building postgrest-lite may take a while on a cold target directory.
    p.expect("machines: client, server.", Duration::from_secs(600));
    p.expect(PROMPT, SHORT);
    p.send_line("nodes.server.config.tutorial.port, nodes.server.config.tutorial.user");
    p.expect("(3000, 'authenticator')", SHORT);
    p.expect(PROMPT, SHORT);
    p.send_line("[m.name for m in machines]");
    p.expect("['client', 'server']", SHORT);
    p.expect(PROMPT, SHORT);
    p.send("\x04");
    assert!(
        p.expect_eof(Duration::from_secs(60)),
        "the REPL did not exit"
    );
    assert_eq!(p.child.wait().unwrap().code(), Some(0));
    let transcript = String::from_utf8_lossy(&p.transcript);
    assert!(
        transcript.contains("PostgREST server: postgrest-lite"),
        "{transcript}"
    );
}
