//! Guest-side bash snippets. Waits loop *inside* the guest (one round trip per wait instead of
//! one per attempt; under TCG each round trip with a fork costs ~25 ms), with a guest deadline
//! below the host deadline.
//!
//! Every snippet runs inside the backdoor's per-command subshell (`set -euo pipefail`), so each
//! starts with `set +e` and runs user commands in a nested subshell that re-enables
//! `set -euo pipefail` (NixOS semantics for each attempt).

/// Single-quotes `s` for bash (`'` becomes `'\''`): the backdoor protocol's own quoting.
pub(crate) fn quote(s: &str) -> String {
    machinist_backdoor::protocol::single_quote(s)
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

/// Runs `cmd` (as `bash -c` would: its own subshell with `set -euo pipefail`) until its exit
/// status is zero (`want_success`) or non-zero, or the guest deadline passes.
///
/// Prints the last attempt's stdout; exits 0 when the wanted outcome happened, else 124 after
/// printing the last output. The last attempt's exit code goes to fd 2 (serial) for debugging.
pub(crate) fn wait_until(cmd: &str, want_success: bool, timeout_us: u128) -> String {
    let test = if want_success {
        "(( __mn_rc == 0 ))"
    } else {
        "(( __mn_rc != 0 ))"
    };
    format!(
        "{head}__mn_cmd={cmd}\n\
         while :; do\n\
         \x20 __mn_out=$( ( set -euo pipefail; eval \"$__mn_cmd\" ); __mn_rc=$?; printf x; exit $__mn_rc ); __mn_rc=$?\n\
         \x20 if {test}; then printf %s \"${{__mn_out%x}}\"; exit 0; fi\n\
         \x20 __mn_nap || {{ printf %s \"${{__mn_out%x}}\"; exit 124; }}\n\
         done\n",
        head = loop_head(timeout_us),
        cmd = quote(cmd),
    )
}

/// `wait_for_unit` inside the guest. Exit codes: 0 active; 3 failed (prints the state);
/// 4 inactive with no pending jobs (unless `tolerate_inactive`); 124 deadline (prints the last
/// state). `systemctl_prefix` is `systemctl` or the `su -l user ... systemctl --user` form.
pub(crate) fn wait_for_unit(
    unit: &str,
    systemctl: &dyn Fn(&str) -> String,
    tolerate_inactive: bool,
    timeout_us: u128,
) -> String {
    let state_cmd = systemctl(&format!(
        "--no-pager show {} --property=ActiveState --value",
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
    format!(
        "{head}while :; do\n\
         \x20 __mn_st=$({state_cmd} 2>/dev/null)\n\
         \x20 case $__mn_st in active) exit 0;; failed) printf %s \"$__mn_st\"; exit 3;; esac\n\
         {inactive}\
         \x20 __mn_nap || {{ printf %s \"$__mn_st\"; exit 124; }}\n\
         done\n",
        head = loop_head(timeout_us),
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
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Runs `script` the way the backdoor does: inside `( set -euo pipefail; eval ... )`.
    fn run(script: &str) -> (i32, String, Duration) {
        let t = Instant::now();
        let wrapped = format!("( set -euo pipefail; eval {} )", quote(script));
        let out = Command::new("bash")
            .args(["--norc", "-c", &wrapped])
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
        let (code, out, _) = run(&wait_until(&cmd, true, 5_000_000));
        assert_eq!(code, 0);
        assert_eq!(out, "done 3\n\n");
    }

    #[test]
    fn wait_until_times_out_with_124_and_last_output() {
        let (code, out, took) = run(&wait_until("echo nope; exit 3", true, 300_000));
        assert_eq!(code, 124);
        assert_eq!(out, "nope\n");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn wait_until_fails_semantics_and_set_e() {
        // `false; true` must fail under set -e: wait_until_fails returns at once.
        let (code, _, took) = run(&wait_until("false; true", false, 5_000_000));
        assert_eq!(code, 0);
        assert!(took < Duration::from_secs(1));
        // pipefail applies too.
        let (code, _, _) = run(&wait_until("false | true", false, 5_000_000));
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
        let s = wait_for_unit("a b.service", &|q| systemctl(q, None), false, 1_000_000);
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
