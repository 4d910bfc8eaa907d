//! The protocol against a real `bash --norc` running the real guest script (`backdoor -`) on a
//! socket pair: no VM needed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use machinist_backdoor::local::LocalShell;
use machinist_backdoor::{ConnectOptions, Control, Output, Shell, ShellError};

struct Guest {
    shell: Shell,
    local: LocalShell,
    _control_local: Option<LocalShell>,
    _stderr: tempfile::NamedTempFile,
}

fn opts(name: &str) -> ConnectOptions {
    ConnectOptions::new(name).timeout(Duration::from_secs(20))
}

fn stderr_file() -> (tempfile::NamedTempFile, Stdio) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let s = Stdio::from(f.reopen().unwrap());
    (f, s)
}

async fn guest() -> Guest {
    let (f, err) = stderr_file();
    let (local, stream) = LocalShell::spawn(err).unwrap();
    let shell = Shell::connect(stream, opts("main")).await.unwrap();
    Guest {
        shell,
        local,
        _control_local: None,
        _stderr: f,
    }
}

async fn guest_with_control() -> Guest {
    let mut g = guest().await;
    let (_, err) = stderr_file();
    let (local, stream) = LocalShell::spawn(err).unwrap();
    let control = Control::connect(stream, opts("main").control())
        .await
        .unwrap();
    g.shell.set_control(control);
    g._control_local = Some(local);
    g
}

async fn run(shell: &mut Shell, cmd: &str) -> Output {
    shell
        .execute(cmd, Some(Duration::from_secs(30)), &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[tokio::test]
async fn all_256_byte_values_survive() {
    let mut g = guest().await;
    let fmt: String = (0..=255u8).map(|b| format!("\\x{b:02x}")).collect();
    let out = run(&mut g.shell, &format!("printf '{fmt}'")).await;
    assert_eq!(out.stdout, (0..=255u8).collect::<Vec<_>>());
    assert_eq!(out.code, 0);
}

#[tokio::test]
async fn ten_megabytes_of_random_output() {
    let mut g = guest().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    run(
        &mut g.shell,
        &format!("head -c 10485760 /dev/urandom > {path}"),
    )
    .await;
    let mut lines = 0usize;
    let out = g
        .shell
        .execute(
            &format!("cat {path}"),
            Some(Duration::from_secs(60)),
            &mut |_| lines += 1,
        )
        .await
        .unwrap();
    let expected = std::fs::read(file.path()).unwrap();
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    assert!(out.stdout == expected, "10 MB output differs");
    // Every line is streamed once (the last one may lack its newline).
    let newlines = expected.iter().filter(|&&b| b == b'\n').count();
    assert!(
        lines == newlines || lines == newlines + 1,
        "{lines} vs {newlines}"
    );
}

#[tokio::test]
async fn empty_output_and_exit_codes() {
    let mut g = guest().await;
    assert_eq!(
        run(&mut g.shell, "true").await,
        Output {
            code: 0,
            stdout: vec![]
        }
    );
    for code in [0, 1, 124, 255] {
        assert_eq!(run(&mut g.shell, &format!("exit {code}")).await.code, code);
    }
    assert_eq!(run(&mut g.shell, "false").await.code, 1);
    // set -o pipefail: a failing stage fails the pipeline.
    assert_eq!(run(&mut g.shell, "false | true").await.code, 1);
    // set -u
    assert_ne!(
        run(&mut g.shell, "echo $undefined_variable_xyz").await.code,
        0
    );
}

#[tokio::test]
async fn quotes_newlines_heredocs_unicode() {
    let mut g = guest().await;
    let out = run(
        &mut g.shell,
        "printf '%s\\n' \"it's\" 'a \"b\"' '$HOME' \"back\\\\slash\"",
    )
    .await;
    assert_eq!(out.stdout_lossy(), "it's\na \"b\"\n$HOME\nback\\slash\n");
    let out = run(&mut g.shell, "x=1\ny=2\necho $((x + y))").await;
    assert_eq!(out.stdout_lossy(), "3\n");
    let out = run(
        &mut g.shell,
        "v=world\ncat <<EOF\nhello $v\n'quoted' \"dq\"\nEOF\ncat <<'EOF'\nraw $v\nEOF",
    )
    .await;
    assert_eq!(out.stdout_lossy(), "hello world\n'quoted' \"dq\"\nraw $v\n");
    let out = run(&mut g.shell, "echo 'héllo ✓ 日本語 🚀'").await;
    assert_eq!(out.stdout_lossy(), "héllo ✓ 日本語 🚀\n");
    // A syntax error is the command's failure, not the channel's.
    let out = run(&mut g.shell, "echo 'unterminated").await;
    assert_eq!(out.code, 2);
    let out = run(&mut g.shell, "if then fi )").await;
    assert_eq!(out.code, 2);
    assert_eq!(
        run(&mut g.shell, "echo still here").await.stdout_lossy(),
        "still here\n"
    );
}

#[tokio::test]
async fn marker_looking_output_does_not_confuse() {
    let mut g = guest().await;
    let fake = "0123456789abcdef0123456789abcdef";
    let cmd = format!(
        "printf '%s\\n' '{fake} S 1' '{fake} E 0' ''; printf '\\n{fake} E 7 1 2\\n'; printf 'R 1\\n__m_post x\\n'"
    );
    let out = run(&mut g.shell, &cmd).await;
    assert_eq!(
        out.stdout_lossy(),
        format!("{fake} S 1\n{fake} E 0\n\n\n{fake} E 7 1 2\nR 1\n__m_post x\n")
    );
    assert_eq!(out.code, 0);
}

#[tokio::test]
async fn stdin_is_empty() {
    let mut g = guest().await;
    let t = Instant::now();
    let out = run(&mut g.shell, "cat; echo done").await;
    assert_eq!(out.stdout_lossy(), "done\n");
    assert_eq!(run(&mut g.shell, "read x").await.code, 1);
    assert!(t.elapsed() < Duration::from_secs(2));
    // Output is a pipe (as under NixOS), not a terminal.
    assert_eq!(
        run(
            &mut g.shell,
            "[ -p /dev/stdout ] && ! [ -t 1 ] && echo pipe"
        )
        .await
        .stdout_lossy(),
        "pipe\n"
    );
}

#[tokio::test]
async fn nothing_leaks_into_the_next_command() {
    let mut g = guest().await;
    assert_eq!(
        run(
            &mut g.shell,
            "cd /; x=5; export Y=6; set +e; f() { :; }; exit 3"
        )
        .await
        .code,
        3
    );
    let out = run(
        &mut g.shell,
        "pwd; echo ${x:-unset} ${Y:-unset}; type f >/dev/null 2>&1 || echo nof; false; echo after",
    )
    .await;
    assert_eq!(out.stdout_lossy(), "/tmp\nunset unset\nnof\n");
    assert_eq!(out.code, 1);
    assert_eq!(
        run(&mut g.shell, "set +e; false; echo x")
            .await
            .stdout_lossy(),
        "x\n"
    );
    assert_eq!(run(&mut g.shell, "false; echo x").await.code, 1);
}

#[tokio::test]
async fn background_holder_is_reported_at_once() {
    let mut g = guest().await;
    let t = Instant::now();
    let err = g
        .shell
        .execute(
            "echo started; sleep 30 &",
            Some(Duration::from_secs(10)),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    match &err {
        ShellError::BackgroundHolder {
            pids,
            code,
            stdout,
            command,
            ..
        } => {
            assert_eq!(pids.len(), 1);
            assert_eq!(*code, 0);
            assert_eq!(stdout, b"started\n");
            assert!(command.contains("sleep 30"));
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains(">/dev/null 2>&1 &"), "{err}");
    // The shell stays usable; the old holder is not blamed on later commands.
    assert_eq!(run(&mut g.shell, "echo ok").await.stdout_lossy(), "ok\n");
    // Redirected background processes are fine.
    assert_eq!(
        run(&mut g.shell, "sleep 30 >/dev/null 2>&1 & echo bg")
            .await
            .stdout_lossy(),
        "bg\n"
    );
    assert_eq!(
        run(&mut g.shell, "sleep 30 >&2 & echo bg2")
            .await
            .stdout_lossy(),
        "bg2\n"
    );
}

#[tokio::test]
async fn killed_shell_mid_command_is_disconnected_at_once() {
    let mut g = guest().await;
    let pgid = g.local.pid() as i32;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        Instant::now()
    });
    let err = g
        .shell
        .execute("sleep 100", None, &mut |_| {})
        .await
        .unwrap_err();
    let killed_at = killer.await.unwrap();
    assert!(killed_at.elapsed() < Duration::from_millis(500));
    assert!(
        matches!(err, ShellError::Disconnected { command: Some(ref c), .. } if c == "sleep 100"),
        "{err}"
    );
    assert!(!g.shell.is_usable());
    assert!(g.shell.execute("true", None, &mut |_| {}).await.is_err());
}

#[tokio::test]
async fn greeting_split_across_reads() {
    let script = r#"printf 'firmware noise\r\nSpawning backd'; sleep 0.3; printf 'oor root shell...\n'; cd /tmp; exec bash --norc"#;
    let (_f, err) = stderr_file();
    let (_local, stream) = LocalShell::spawn_script(script, &[], err).unwrap();
    let mut shell = Shell::connect(stream, opts("split")).await.unwrap();
    assert_eq!(run(&mut shell, "echo hi").await.stdout_lossy(), "hi\n");
}

#[tokio::test]
async fn connect_times_out_with_a_hint() {
    let (_f, err) = stderr_file();
    let (_local, stream) = LocalShell::spawn_script("sleep 30", &[], err).unwrap();
    let o = opts("silent").timeout(Duration::from_millis(500));
    let e = Shell::connect(stream, o).await.unwrap_err();
    assert!(matches!(e, ShellError::ConnectTimeout { .. }));
    assert!(
        e.to_string()
            .contains("systemctl status machinist-backdoor@vport0p1.service"),
        "{e}"
    );
}

#[tokio::test]
async fn cancel_through_control_returns_quickly() {
    let mut g = guest_with_control().await;
    let canceller = g.shell.canceller();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        canceller.cancel();
    });
    let t = Instant::now();
    let err = g
        .shell
        .execute("echo going; sleep 100", None, &mut |_| {})
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(err, ShellError::Cancelled { ref stdout, .. } if stdout == b"going\n"),
        "{err}"
    );
    assert!(took < Duration::from_millis(1300), "took {took:?}");
    assert_eq!(
        run(&mut g.shell, "echo after").await.stdout_lossy(),
        "after\n"
    );
}

#[tokio::test]
async fn timeout_kills_the_process_tree() {
    let mut g = guest_with_control().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    let t = Instant::now();
    // A grandchild (sleep inside a pipeline inside a subshell) must die too.
    let cmd = format!("(sleep 100; echo leaked > {path}) | cat; echo never");
    let err = g
        .shell
        .execute(&cmd, Some(Duration::from_millis(500)), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, ShellError::Timeout { .. }), "{err}");
    assert_eq!(err.nixos_exit_code(), Some(124));
    assert_eq!(
        run(&mut g.shell, "echo fine").await.stdout_lossy(),
        "fine\n"
    );
    let leftover = run(
        &mut g.shell,
        &format!("pgrep -f 'sleep 100' -g {} || true", g.local.pid()),
    )
    .await;
    assert_eq!(
        leftover.stdout_lossy(),
        "",
        "processes of the timed-out command survived"
    );
}

#[tokio::test]
async fn timeout_without_control_is_a_clear_error() {
    let mut g = guest().await;
    let err = g
        .shell
        .execute("sleep 100", Some(Duration::from_millis(200)), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ShellError::NoControl { .. }), "{err}");
    assert!(err.to_string().contains("without a control shell"), "{err}");
    assert!(!g.shell.is_usable());
}

#[tokio::test]
async fn control_runs_checks_while_main_is_busy() {
    let g = guest_with_control().await;
    let Guest { mut shell, .. } = g;
    let control = shell.control().unwrap().clone();
    let pid = shell.guest_pid();
    let busy = tokio::spawn(async move {
        let r = shell.execute("sleep 1; echo done", None, &mut |_| {}).await;
        (shell, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let out = control
        .execute("test -d /proc", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(control.is_alive(pid).await.unwrap());
    let (_shell, r) = busy.await.unwrap();
    assert_eq!(r.unwrap().stdout_lossy(), "done\n");
}

#[tokio::test]
async fn lines_stream_while_the_command_runs() {
    let mut g = guest().await;
    let t = Instant::now();
    let mut seen: Vec<(String, Duration)> = Vec::new();
    let out = g
        .shell
        .execute(
            "echo first; sleep 0.6; printf 'second\\nno newline'",
            None,
            &mut |l| seen.push((String::from_utf8_lossy(l).into_owned(), t.elapsed())),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_lossy(), "first\nsecond\nno newline");
    let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["first", "second", "no newline"]);
    assert!(
        seen[0].1 < Duration::from_millis(500),
        "first line came late: {:?}",
        seen[0].1
    );
}

#[tokio::test]
async fn invalid_command_is_rejected() {
    let mut g = guest().await;
    let e = g
        .shell
        .execute("echo a\0b", None, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ShellError::InvalidCommand { .. }));
    assert!(g.shell.is_usable());
}

/// A guest whose shell comes back with a new greeting when it exits (like `Restart=always`).
const RESPAWNING: &str =
    r#"cd /tmp; while :; do echo "Spawning backdoor root shell..."; bash --norc; done"#;

#[tokio::test]
async fn respawned_shell_is_noticed_and_reconnect_works() {
    let (_f, err) = stderr_file();
    let (_local, stream) = LocalShell::spawn_script(RESPAWNING, &[], err).unwrap();
    let mut shell = Shell::connect(stream, opts("respawn")).await.unwrap();
    let first = shell.guest_pid();
    let t = Instant::now();
    // No command timeout (there is no control shell to kill with): the test bounds the wait.
    // The new greeting may arrive before or after the old relay copies the start line.
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        shell.execute("kill -9 $$; sleep 0.2", None, &mut |_| {}),
    )
    .await
    .expect("the re-spawned shell was not noticed within 10 s")
    .unwrap_err();
    assert!(matches!(e, ShellError::Respawned { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    shell.reconnect().await.unwrap();
    assert_ne!(shell.guest_pid(), first);
    assert_eq!(
        run(&mut shell, "echo again").await.stdout_lossy(),
        "again\n"
    );
}

#[tokio::test]
async fn attach_raw_then_resync() {
    let mut g = guest_with_control().await;
    let (mut user, user_side) = tokio::io::duplex(1 << 16);
    let (ui, uo) = tokio::io::split(user_side);
    let attach = tokio::spawn(async move {
        let r = g
            .shell
            .attach_raw(ui, uo, machinist_backdoor::ESCAPE_CTRL_RIGHT_BRACKET)
            .await;
        (g, r)
    });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    user.write_all(b"echo interactive-$((6*7))\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("interactive-42") {
        let n = tokio::time::timeout(Duration::from_secs(5), user.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    // Leave a program reading the console behind, then escape: resync must unblock it.
    user.write_all(b"cat\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    user.write_all(&[0x1d]).await.unwrap();
    let (mut g, r) = tokio::time::timeout(Duration::from_secs(15), attach)
        .await
        .unwrap()
        .unwrap();
    r.unwrap();
    assert_eq!(
        run(&mut g.shell, "echo back").await.stdout_lossy(),
        "back\n"
    );
}

#[tokio::test]
async fn a_killed_output_relay_is_replaced() {
    let mut g = guest().await;
    // Something in the guest kills the relay (think `pkill cat`) during a command.
    let out = run(&mut g.shell, "kill -9 $__m_rp; sleep 0.1; echo lost").await;
    assert_ne!(out.code, 0);
    assert_eq!(
        run(&mut g.shell, "echo relay is back").await.stdout_lossy(),
        "relay is back\n"
    );
    // Output-less: the end line still comes once the relay is gone. (If the relay dies in the
    // instant between a command's end and its end line, that line is lost: the host then times
    // out and declares the shell out of step; a documented limit.)
    run(&mut g.shell, "kill -9 $__m_rp; sleep 0.2").await;
    assert_eq!(
        run(&mut g.shell, "echo again").await.stdout_lossy(),
        "again\n"
    );
}

#[tokio::test]
async fn output_ending_with_the_greeting_text_is_not_a_respawn() {
    let mut g = guest().await;
    let out = run(
        &mut g.shell,
        "echo 'Spawning backdoor root shell...'; sleep 0.1",
    )
    .await;
    assert_eq!(out.stdout_lossy(), "Spawning backdoor root shell...\n");
}

#[tokio::test]
async fn output_over_the_limit_keeps_a_marked_tail_and_stays_in_step() {
    let mut g = guest().await;
    let limit = 64 * 1024;
    g.shell.set_output_limit(limit);
    assert_eq!(g.shell.output_limit(), limit);
    // 200 MB of "y\n": `head` ends the pipe, `yes` dies of SIGPIPE, and pipefail makes it 141.
    let mut lines = 0u64;
    let out = g
        .shell
        .execute(
            "yes | head -c 200M",
            Some(Duration::from_secs(120)),
            &mut |l| {
                assert_eq!(l, b"y");
                lines += 1;
            },
        )
        .await
        .unwrap();
    assert_eq!(out.code, 141);
    // Every line was streamed although the output kept is only the tail.
    assert_eq!(lines, 100 * 1024 * 1024);
    let text = out.stdout_lossy();
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(
        first.starts_with("[machinist: ") && first.contains("bytes of output dropped"),
        "{first}"
    );
    let dropped: u64 = first["[machinist: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rest.len() <= limit, "kept {} bytes", rest.len());
    assert!(rest.len() > limit - 4096, "kept only {} bytes", rest.len());
    assert_eq!(dropped + rest.len() as u64, 200 * 1024 * 1024);
    // The kept tail starts on a line boundary.
    assert!(rest
        .bytes()
        .eq(b"y\n".iter().copied().cycle().take(rest.len())));
    // The shell is in step: the next command gets exactly its own output.
    assert_eq!(
        run(&mut g.shell, "echo next").await.stdout_lossy(),
        "next\n"
    );
}

#[tokio::test]
async fn a_huge_line_is_cut_for_on_line_and_bounded_in_the_output() {
    let mut g = guest().await;
    let limit = 256 * 1024;
    g.shell.set_output_limit(limit);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let out = g
        .shell
        .execute(
            "echo start; head -c 20000000 /dev/zero | tr '\\0' x; echo; echo end; exit 3",
            Some(Duration::from_secs(120)),
            &mut |l| seen.push(l.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 3);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], b"start");
    assert_eq!(seen[2], b"end");
    let note = format!(
        " [machinist: line of 20000000 bytes cut to its first {}]",
        machinist_backdoor::MAX_LINE
    );
    assert_eq!(seen[1].len(), machinist_backdoor::MAX_LINE + note.len());
    assert!(seen[1][..machinist_backdoor::MAX_LINE]
        .iter()
        .all(|&b| b == b'x'));
    assert!(seen[1].ends_with(note.as_bytes()));
    let text = out.stdout_lossy();
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(first.contains("bytes of output dropped"), "{first}");
    assert!(rest.len() <= limit);
    assert!(rest.ends_with("xxx\nend\n"), "{}", &rest[rest.len() - 20..]);
    assert_eq!(
        run(&mut g.shell, "echo next").await.stdout_lossy(),
        "next\n"
    );
}

#[tokio::test]
async fn output_under_the_limit_has_no_marker() {
    let mut g = guest().await;
    g.shell.set_output_limit(1);
    // Raised to the minimum.
    assert_eq!(g.shell.output_limit(), machinist_backdoor::MIN_OUTPUT_LIMIT);
    let out = run(&mut g.shell, "head -c 4096 /dev/zero").await;
    assert_eq!(out.stdout, vec![0u8; 4096]);
    let out = run(&mut g.shell, "head -c 4097 /dev/zero").await;
    assert!(out
        .stdout_lossy()
        .starts_with("[machinist: 1 bytes of output dropped"));
}
