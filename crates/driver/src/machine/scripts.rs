//! Guest-side bash snippets. Waits loop *inside* the guest (one round trip per wait instead of
//! one per attempt; under TCG each round trip with a fork costs ~25 ms), with a guest deadline
//! below the host deadline.
//!
//! Every snippet runs inside the backdoor's per-command subshell (`set -euo pipefail`), so each
//! starts with `set +e` and runs user commands in a nested subshell that re-enables
//! `set -euo pipefail` (NixOS semantics for each attempt).

/// Single-quotes `s` for bash (`'` becomes `'\''`): the backdoor protocol's own quoting.
pub(crate) fn quote(s: &str) -> String {
    machinist_qemu::single_quote(s)
}

/// Preamble of every loop: deadline in microseconds from bash's `EPOCHREALTIME` (no fork), and a
/// sleep that backs off 0.1, 0.2, 0.4, 0.8, then 1 s.
fn loop_head(timeout_us: u128) -> String {
    format!(
        "set +e +o pipefail\n\
         __mn_now() {{ __mn_t=${{EPOCHREALTIME/[.,]/}}; __mn_t=$((10#$__mn_t)); }}\n\
         __mn_now; __mn_end=$(( __mn_t + {timeout_us} ))\n\
         __mn_pause=100000\n\
         __mn_nap() {{ __mn_now; local left=$(( __mn_end - __mn_t )); (( left > 0 )) || return 1; \
         local p=$__mn_pause; (( p < left )) || p=$left; \
         sleep \"$((p / 1000000)).$(printf %06d $((p % 1000000)))\"; \
         (( __mn_pause = __mn_pause * 2 > 1000000 ? 1000000 : __mn_pause * 2 )); return 0; }}\n"
    )
}

/// The line a failed wait loop prints after the last attempt's output:
/// `<LAST_ATTEMPT> <exit code>[ <pid of a background process holding the output>...]`.
pub(crate) const LAST_ATTEMPT: &str = "__machinist_last_attempt__";

/// Exit code of a wait loop whose attempt left a background process holding its stdout.
pub(crate) const EXIT_BACKGROUND: i32 = 5;

/// Runs `cmd` (as `bash -c` would: its own shell with `set -euo pipefail`) until its exit
/// status is zero (`want_success`) or non-zero, or the guest deadline passes.
///
/// Each attempt writes its stdout to a file (not a pipe: a background process that keeps the
/// output open must not stall the loop) and runs under coreutils `timeout` for the time left
/// plus `grace_us` ([`crate::timeouts::Wait::AttemptGrace`]: an attempt started just before the
/// deadline may still succeed, as under NixOS), so a hanging attempt ends soon after the deadline (its whole process
/// group is killed). After each
/// attempt, a process that still holds the output file open (re-checked over 0.3 s, so that a
/// process just killed with the attempt has time to die) is reported at once (exit
/// [`EXIT_BACKGROUND`]), as `succeed` does.
///
/// Exit codes: 0 the wanted outcome (prints that attempt's stdout exactly); 124 the deadline
/// passed; [`EXIT_BACKGROUND`]. Both failures print the last attempt's stdout, then a
/// [`LAST_ATTEMPT`] line (see [`parse_wait`]).
pub(crate) fn wait_until(
    cmd: &str,
    want_success: bool,
    timeout_us: u128,
    grace_us: u128,
) -> String {
    let test = if want_success {
        "(( __mn_rc == 0 ))"
    } else {
        "(( __mn_rc != 0 ))"
    };
    format!(
        "{head}__mn_cmd={cmd}\n\
         __mn_f=${{TMPDIR:-/tmp}}/.machinist-wait.$BASHPID\n\
         __mn_to=; command -v timeout >/dev/null && __mn_to=1\n\
         __mn_show() {{ cat \"$__mn_f\"; rm -f \"$__mn_f\"; }}\n\
         while :; do\n\
         \x20 __mn_now; __mn_left=$(( __mn_end - __mn_t + {grace_us} )); (( __mn_left > 10000 )) || __mn_left=10000\n\
         \x20 if [[ -n $__mn_to ]]; then\n\
         \x20   printf -v __mn_s '%d.%06d' $((__mn_left / 1000000)) $((__mn_left % 1000000))\n\
         \x20   timeout -k 2 \"$__mn_s\" bash --norc -c 'set -euo pipefail; eval \"$1\"' machinist \"$__mn_cmd\" >\"$__mn_f\"; __mn_rc=$?\n\
         \x20 else\n\
         \x20   ( set -euo pipefail; eval \"$__mn_cmd\" ) >\"$__mn_f\"; __mn_rc=$?\n\
         \x20 fi\n\
         \x20 __mn_h=; for __mn_p in /proc/[1-9]*; do [[ $__mn_p/fd/1 -ef $__mn_f ]] && __mn_h+=\" ${{__mn_p:6}}\"; done\n\
         \x20 for __mn_i in 1 2 3; do\n\
         \x20   [[ -n $__mn_h ]] || break\n\
         \x20   sleep 0.1; __mn_k=$__mn_h; __mn_h=\n\
         \x20   for __mn_p in $__mn_k; do [[ /proc/$__mn_p/fd/1 -ef $__mn_f ]] && __mn_h+=\" $__mn_p\"; done\n\
         \x20 done\n\
         \x20 if [[ -n $__mn_h ]]; then __mn_show; printf '\\n{LAST_ATTEMPT} %s%s\\n' \"$__mn_rc\" \"$__mn_h\"; exit {EXIT_BACKGROUND}; fi\n\
         \x20 if {test}; then __mn_show; exit 0; fi\n\
         \x20 __mn_nap || {{ __mn_show; printf '\\n{LAST_ATTEMPT} %s\\n' \"$__mn_rc\"; exit 124; }}\n\
         done\n",
        head = loop_head(timeout_us),
        cmd = quote(cmd),
    )
}

/// How a [`wait_until`] loop ended, parsed from its exit code and output.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// The wanted outcome; the successful attempt's stdout.
    Done(String),
    /// The deadline passed.
    TimedOut {
        /// The last attempt's stdout.
        output: String,
        /// The last attempt's exit code (124 or 137: killed at the deadline).
        last_code: Option<i32>,
    },
    /// An attempt left background processes holding its stdout.
    Background {
        /// That attempt's stdout.
        output: String,
        /// Its exit code.
        code: i32,
        /// The processes still holding the output.
        pids: Vec<u32>,
    },
}

/// Splits a guest wait loop's stdout into the attempt's output and the fields of its
/// [`LAST_ATTEMPT`] line (empty when the loop succeeded or printed none).
pub(crate) fn split_trailer(code: i32, out: &str) -> (&str, &str) {
    let tag = format!("\n{LAST_ATTEMPT} ");
    match out.rfind(&tag) {
        Some(i) if code != 0 => (&out[..i], out[i + tag.len()..].trim_end()),
        _ => (out, ""),
    }
}

/// Parses the exit code and stdout of a [`wait_until`] loop.
pub(crate) fn parse_wait(code: i32, out: &str) -> WaitEnd {
    if code == 0 {
        return WaitEnd::Done(out.to_string());
    }
    let (output, fields) = split_trailer(code, out);
    let mut words = fields.split_whitespace().map(str::parse::<i64>);
    let last_code = words
        .next()
        .and_then(|r| r.ok())
        .and_then(|c| i32::try_from(c).ok());
    let output = output.to_string();
    if code == EXIT_BACKGROUND {
        let pids = words
            .filter_map(|p| p.ok().and_then(|p| u32::try_from(p).ok()))
            .collect();
        return WaitEnd::Background {
            output,
            code: last_code.unwrap_or(0),
            pids,
        };
    }
    WaitEnd::TimedOut { output, last_code }
}

/// `wait_for_unit` inside the guest. Exit codes: 0 active; 2 systemctl rejected the query (an
/// invalid unit name: prints its message; only when `fail_on_error`, since a user manager may not
/// be up yet); 3 failed (prints the state); 4 inactive with no pending jobs (unless
/// `tolerate_inactive`); 124 deadline (prints the last state). `systemctl` builds the
/// `systemctl` or `su -l user ... systemctl --user` form. The unit name follows `--`.
pub(crate) fn wait_for_unit(
    unit: &str,
    systemctl: &dyn Fn(&str) -> String,
    tolerate_inactive: bool,
    fail_on_error: bool,
    timeout_us: u128,
) -> String {
    let state_cmd = systemctl(&format!(
        "--no-pager show --property=ActiveState --value -- {}",
        quote(unit)
    ));
    let jobs_cmd = systemctl("list-jobs --full");
    let inactive = if tolerate_inactive {
        String::new()
    } else {
        format!(
            "\x20 if [[ $__mn_st == inactive ]]; then\n\
             \x20   __mn_jobs=$({jobs_cmd} 2>&1)\n\
             \x20   if [[ $__mn_jobs == *'No jobs'* ]]; then\n\
             \x20     __mn_st=$({state_cmd} 2>/dev/null)\n\
             \x20     if [[ $__mn_st == inactive ]]; then printf %s \"$__mn_st\"; exit 4; fi\n\
             \x20   fi\n\
             \x20 fi\n"
        )
    };
    let on_error = if fail_on_error {
        "\x20 if (( __mn_rc != 0 )); then printf %s \"$__mn_st\"; exit 2; fi\n"
    } else {
        ""
    };
    format!(
        "{head}while :; do\n\
         \x20 __mn_st=$({state_cmd} 2>&1); __mn_rc=$?\n\
         {on_error}\
         \x20 case $__mn_st in active) exit 0;; failed) printf %s \"$__mn_st\"; exit 3;; esac\n\
         {inactive}\
         \x20 __mn_nap || {{ printf %s \"$__mn_st\"; exit 124; }}\n\
         done\n",
        head = loop_head(timeout_us),
    )
}

/// What the guest says about a unit that failed: `systemctl status` and its last 30 journal
/// lines (never fails: the diagnosis must not hide the error it explains).
pub(crate) fn unit_diagnostics(unit: &str, user: Option<&str>) -> String {
    let q = quote(unit);
    let status = systemctl(&format!("--no-pager --full status -n 0 -- {q}"), user);
    // Root reads a user unit's lines from the system journal too (`--user-unit`).
    let which = if user.is_some() { "--user-unit" } else { "-u" };
    let journal = format!("journalctl -b --no-pager -n 30 {which} {q}");
    format!(
        "echo '--- systemctl status'; {status} 2>&1 || true; \
         echo '--- last 30 journal lines'; {journal} 2>&1 || true"
    )
}

/// `systemctl <q>` for root, or NixOS' `su -l <user> ... systemctl --user <q>` form.
pub(crate) fn systemctl(q: &str, user: Option<&str>) -> String {
    match user {
        None => format!("systemctl {q}"),
        Some(user) => {
            let inner = format!("XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}");
            format!("su -l {} --shell /bin/sh -c {}", quote(user), quote(&inner))
        }
    }
}

/// Probe for an open TCP port using bash's `/dev/tcp` (no `nc` needed in the guest), at most
/// 1 s per attempt.
pub(crate) fn tcp_probe(addr: &str, port: u16) -> String {
    format!(
        "timeout 1 bash -c {} 2>/dev/null",
        quote(&format!("exec 3<>/dev/tcp/{addr}/{port}"))
    )
}

/// Probe for a listening unix socket: `nc -zU` (or `-uzU`) if present, else `socat`, else a
/// connect attempt through python3, else just "a socket file exists".
pub(crate) fn unix_probe(path: &str, datagram: bool) -> String {
    let p = quote(path);
    let (nc, socat) = if datagram {
        ("-uzU", "UNIX-SENDTO")
    } else {
        ("-zU", "UNIX-CONNECT")
    };
    format!(
        "if command -v nc >/dev/null; then nc {nc} {p}; \
         elif command -v socat >/dev/null; then socat -u OPEN:/dev/null {socat}:{p}; \
         else test -S {p}; fi"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts::Wait;

    const GRACE: Duration = Wait::AttemptGrace.base();
    const GRACE_US: u128 = GRACE.as_micros();
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Runs `script` the way the backdoor does: inside `( set -euo pipefail; eval ... )`.
    fn run(script: &str) -> (i32, String, Duration) {
        let t = Instant::now();
        let wrapped = format!("( set -euo pipefail; eval {} )", quote(script));
        // stderr goes to the serial console in the guest: nothing waits for it to close.
        let out = Command::new("bash")
            .args(["--norc", "-c", &wrapped])
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            t.elapsed(),
        )
    }

    #[test]
    fn quote_roundtrip() {
        let s = "it's a \"test\" $HOME `x` \\ \n end";
        let out = Command::new("bash")
            .args(["-c", &format!("printf %s {}", quote(s))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), s);
    }

    #[test]
    fn wait_until_success_keeps_output_and_trailing_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n");
        // Succeeds on the third attempt; set -e applies inside each attempt.
        let cmd = format!(
            "n=$(cat {f} 2>/dev/null || echo 0); echo $((n+1)) > {f}; false_unless() {{ [ $1 -ge 3 ]; }}; \
             false_unless $((n+1)); printf 'done %s\\n\\n' $((n+1))",
            f = f.display()
        );
        let (code, out, _) = run(&wait_until(&cmd, true, 5_000_000, GRACE_US));
        assert_eq!(code, 0);
        assert_eq!(out, "done 3\n\n");
    }

    #[test]
    fn wait_until_times_out_with_124_and_last_output() {
        let (code, out, took) = run(&wait_until("echo nope; exit 3", true, 300_000, GRACE_US));
        assert_eq!(code, 124);
        assert_eq!(
            parse_wait(code, &out),
            WaitEnd::TimedOut {
                output: "nope\n".into(),
                last_code: Some(3)
            }
        );
        assert!(took < Duration::new(2, 0), "{took:?}");
    }

    #[test]
    fn a_hanging_attempt_ends_at_the_deadline() {
        // The attempt itself never returns: the loop still ends within its timeout plus the
        // kill grace, and says the last attempt was killed (timeout's 124).
        let (code, out, took) = run(&wait_until(
            "echo started; sleep 30",
            true,
            1_000_000,
            GRACE_US,
        ));
        assert_eq!(code, 124, "{out}");
        assert!(took >= GRACE, "the last attempt gets its grace: {took:?}");
        assert_eq!(
            parse_wait(code, &out),
            WaitEnd::TimedOut {
                output: "started\n".into(),
                last_code: Some(124)
            }
        );
        assert!(took < Duration::new(3, 0) + GRACE, "{took:?}");
    }

    #[test]
    fn a_background_process_holding_the_output_is_reported_at_once() {
        let (code, out, took) = run(&wait_until(
            "echo hi; sleep 30 &",
            true,
            20_000_000,
            GRACE_US,
        ));
        let WaitEnd::Background {
            output,
            code: rc,
            pids,
        } = parse_wait(code, &out)
        else {
            panic!("expected a background holder, got code {code}: {out:?}");
        };
        assert_eq!((output.as_str(), rc), ("hi\n", 0));
        assert_eq!(pids.len(), 1, "{pids:?}");
        assert!(took < Duration::new(3, 0), "{took:?}");
        // The holder is a real process (the `sleep 30`); clean it up.
        let _ = Command::new("kill").arg(pids[0].to_string()).status();
        // A background process with its output redirected is fine.
        let (code, out, _) = run(&wait_until(
            "sleep 30 >/dev/null 2>&1 & echo $!",
            true,
            5_000_000,
            GRACE_US,
        ));
        let WaitEnd::Done(pid) = parse_wait(code, &out) else {
            panic!("expected success, got code {code}: {out:?}");
        };
        let _ = Command::new("kill").arg(pid.trim()).status();
    }

    #[test]
    fn parse_wait_keeps_output_that_looks_like_a_trailer() {
        let out = format!("a\n{LAST_ATTEMPT} 9\nb\n\n{LAST_ATTEMPT} 1\n");
        assert_eq!(
            parse_wait(124, &out),
            WaitEnd::TimedOut {
                output: format!("a\n{LAST_ATTEMPT} 9\nb\n"),
                last_code: Some(1)
            }
        );
        assert_eq!(
            parse_wait(EXIT_BACKGROUND, &format!("x\n\n{LAST_ATTEMPT} 0 12 34\n")),
            WaitEnd::Background {
                output: "x\n".into(),
                code: 0,
                pids: vec![12, 34]
            }
        );
    }

    #[test]
    fn wait_until_fails_semantics_and_set_e() {
        // `false; true` must fail under set -e: wait_until_fails returns at once.
        let (code, _, took) = run(&wait_until("false; true", false, 5_000_000, GRACE_US));
        assert_eq!(code, 0);
        assert!(took < Duration::new(1, 0));
        // pipefail applies too.
        let (code, _, _) = run(&wait_until("false | true", false, 5_000_000, GRACE_US));
        assert_eq!(code, 0);
    }

    #[test]
    fn systemctl_user_form() {
        assert_eq!(systemctl("start foo", None), "systemctl start foo");
        insta::assert_snapshot!(systemctl("start 'a'", Some("alice")));
    }

    #[test]
    fn tcp_probe_against_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (code, _, _) = run(&tcp_probe("127.0.0.1", port));
        assert_eq!(code, 0);
        drop(l);
        let (code, _, _) = run(&tcp_probe("127.0.0.1", port));
        assert_ne!(code, 0);
    }

    #[test]
    fn unit_wait_script_parses() {
        let s = wait_for_unit(
            "a b.service",
            &|q| systemctl(q, None),
            false,
            true,
            1_000_000,
        );
        let out = Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        insta::assert_snapshot!(s);
    }
}
