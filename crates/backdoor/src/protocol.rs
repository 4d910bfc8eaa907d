//! The wire protocol of the host side: the preamble of bash helper functions, the bytes of one
//! command, and parsing of the reply lines. Pure functions; the I/O lives in `shell`.
//!
//! After the greeting the host sends [`preamble`] once. It defines the helpers and starts the
//! *relay*: one long-lived `cat` (a bash coprocess: no `/dev/fd` needed, unlike `>(...)`, so it
//! also works in an initramfs) that copies a pipe (bash's fd 3) to the console, so that commands
//! see a pipe on stdout as under NixOS (`ls` prints one name per line, `systemctl` does not
//! ellipsize) while no process is forked per command for it.
//!
//! Each command is then one line ([`command_line`]); its reply is
//! `<marker> S <pid>\n<raw output bytes>\n<marker> E <rc>[ <holder pid>...]\n`, where `pid` is the
//! subshell running the command and the holder pids are processes created during the command that
//! still hold the output pipe (a background process that was not redirected).

use std::fmt::Write as _;

/// Bytes of the random marker (shown as twice as many hex digits).
pub const MARKER_BYTES: usize = 16;

/// The preamble: helper functions, the relay, and a ready line `<marker> R <shell pid>`.
pub fn preamble(marker: &str) -> String {
    let mut s = String::from(PREAMBLE);
    let _ = writeln!(s, "__m_ready {marker}");
    s
}

/// The helper functions, sent once per connection (bash builtins only; no process is forked
/// except the relay, once per shell: a shell that already has one, e.g. one restored from a
/// snapshot, keeps it).
const PREAMBLE: &str = r#"__m_relay() {
    exec 9>&1
    coproc __m_r { exec cat >&9 9>&-; }
    exec 3>&"${__m_r[1]}" 9>&-
    __m_rp=$__m_r_PID
}
__m_ready() {
    [[ -n ${__m_rp:-} && -e /proc/$__m_rp/fd/0 ]] || __m_relay
    printf '%s R %s\n' "$1" "$$" >&3
}
__m_pre() {
    [[ -e /proc/$__m_rp/fd/0 ]] || __m_relay
    read -r _ _ _ _ __m_last </proc/loadavg
}
__m_post() {
    local __m_rc=$? __m_f __m_h=
    for __m_f in /proc/[1-9]*; do
        (( ${__m_f:6} > __m_last )) || continue
        [[ $__m_f/fd/1 -ef /proc/$$/fd/3 || $__m_f/fd/2 -ef /proc/$$/fd/3 ]] && __m_h+=" ${__m_f:6}"
    done
    [[ -e /proc/$__m_rp/fd/0 ]] || __m_relay
    printf '\n%s E %s%s\n' "$1" "$__m_rc" "$__m_h" >&3
}
__m_check() {
    local __m_k=$1 __m_p __m_h=
    shift
    for __m_p; do
        [[ /proc/$__m_p/fd/1 -ef /proc/$$/fd/3 || /proc/$__m_p/fd/2 -ef /proc/$$/fd/3 ]] && __m_h+=" $__m_p"
    done
    printf '%s C%s\n' "$__m_k" "$__m_h" >&3
}
__m_kill() {
    local -A __m_seen=()
    local -a __m_all=() __m_new=()
    local __m_f __m_l __m_q __m_round
    for __m_q in "$@"; do
        __m_seen[$__m_q]=1; __m_all+=("$__m_q"); kill -STOP "$__m_q" 2>/dev/null || true
    done
    for __m_round in 1 2 3 4 5 6 7 8 9 10; do
        __m_new=()
        for __m_f in /proc/[1-9]*; do
            read -r __m_l 2>/dev/null <"$__m_f/stat" || continue
            __m_l=${__m_l##*) }; __m_l=${__m_l#* }; __m_l=${__m_l%% *}
            if [[ ${__m_seen[$__m_l]-} && ! ${__m_seen[${__m_f:6}]-} ]]; then
                __m_seen[${__m_f:6}]=1; __m_new+=("${__m_f:6}")
            fi
        done
        (( ${#__m_new[@]} )) || break
        kill -STOP "${__m_new[@]}" 2>/dev/null || true
        __m_all+=("${__m_new[@]}")
    done
    kill -KILL "${__m_all[@]}" 2>/dev/null || true
    printf '%s\n' "${__m_all[*]}"
}
__m_killkids() {
    local __m_f __m_l __m_k=()
    for __m_f in /proc/[1-9]*; do
        read -r __m_l 2>/dev/null <"$__m_f/stat" || continue
        __m_l=${__m_l##*) }; __m_l=${__m_l#* }; __m_l=${__m_l%% *}
        # Spare the shell's output relay (its stdin is the shell's fd 3).
        [[ $__m_l == "$1" && ! $__m_f/fd/0 -ef /proc/$1/fd/3 ]] && __m_k+=("${__m_f:6}")
    done
    if (( ${#__m_k[@]} )); then __m_kill "${__m_k[@]}"; fi
}
"#;

/// Whether `command` may be sent without `eval`: plain words only (no quoting, expansion,
/// operators or reserved words), so it cannot have a syntax error that would desynchronise the
/// shell. Inline, bash execs the last simple command of a subshell directly: one fork fewer.
pub fn is_plain(command: &str) -> bool {
    const RESERVED: &[&str] = &[
        "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until",
        "do", "done", "in", "function", "time", "coproc",
    ];
    !command.is_empty()
        && command.len() <= 1024
        && command
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _./=:,@%+-".contains(&b))
        && command.split(' ').any(|w| !w.is_empty())
        && !command.split(' ').any(|w| RESERVED.contains(&w))
}

/// Single-quotes `s` for bash (`'` becomes `'\''`; any byte except NUL survives): Machinist's one
/// shell quoting, re-exported here because the protocol's `eval` lines use it.
pub use machinist_qemu::single_quote;

/// The exact line sent for one command.
///
/// The command runs in its own subshell (so `exit`, `cd`, `set +e` and variables never leak into
/// the next command), with `set -euo pipefail` like NixOS, stdin `/dev/null` and stdout the relay
/// pipe. The subshell is not part of an `&&`/`||` list, which would disable `set -e` inside it.
pub fn command_line(marker: &str, command: &str) -> String {
    let body = if is_plain(command) {
        command.to_owned()
    } else {
        format!("eval {}", single_quote(command))
    };
    format!(
        "__m_pre; ( printf '%s S %s\\n' {marker} \"$BASHPID\"; set -euo pipefail; {body} ) >&3 3>&- </dev/null; __m_post {marker}\n"
    )
}

/// The line that asks the shell which of `pids` still hold its output (reply `<marker> C[ pid]...`).
pub fn check_holders_line(marker: &str, pids: &[u32]) -> String {
    let mut s = format!("__m_check {marker}");
    for p in pids {
        let _ = write!(s, " {p}");
    }
    s.push('\n');
    s
}

/// The line that asks the control shell to kill `pid` and all its descendants.
pub fn kill_command(pid: u32) -> String {
    format!("__m_kill {pid}")
}

/// The line that asks the control shell to kill every descendant of `pid` (not `pid` itself).
pub fn kill_children_command(pid: u32) -> String {
    format!("__m_killkids {pid}")
}

/// A fresh random marker: [`MARKER_BYTES`] bytes from the kernel's random source, as hex.
pub fn random_marker() -> String {
    let mut bytes = [0u8; MARKER_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // getrandom cannot fail on Linux >= 3.17 except EINTR; fall back to the clock.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                ^ u128::from(std::process::id());
            return format!("{t:032x}");
        }
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// First index `>= from` where `needle` starts in `hay`.
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += off;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A parsed end line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndLine {
    /// Exit status of the subshell.
    pub code: i32,
    /// Processes created during the command that still hold its stdout.
    pub holders: Vec<u32>,
}

/// Parse the part of an end line after `<marker> E ` (without the newline).
pub fn parse_end(rest: &[u8]) -> Option<EndLine> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut words = text.split_ascii_whitespace();
    let code = words.next()?.parse().ok()?;
    let holders = words.map(str::parse).collect::<Result<_, _>>().ok()?;
    Some(EndLine { code, holders })
}

/// Parse the pid after `<marker> S ` or `<marker> R ` (without the newline).
pub fn parse_pid(rest: &[u8]) -> Option<u32> {
    std::str::from_utf8(rest).ok()?.trim().parse().ok()
}

/// Call `on_line` for each complete line in `out[*delivered..]` (lines without their `\n`),
/// advancing `*delivered` past them. `end_pat` (`\n<marker> E `) has not been found in `out`;
/// a newline that may be its start is held back unless it ends a non-empty line (which is a
/// line of output either way).
///
/// `*scanned` (kept by the caller, starting at 0) remembers how far `out` was searched without a
/// newline, so that a long line arriving in many reads is not searched again (linear time).
pub fn deliver_lines(
    out: &[u8],
    delivered: &mut usize,
    scanned: &mut usize,
    end_pat: &[u8],
    on_line: &mut (dyn FnMut(&[u8]) + Send),
) {
    *scanned = (*scanned).max(*delivered);
    while *scanned < out.len() {
        let Some(n) = out[*scanned..].iter().position(|&b| b == b'\n') else {
            *scanned = out.len();
            break;
        };
        let i = *scanned + n;
        let ambiguous = end_pat.starts_with(&out[i..]);
        if ambiguous && i == *delivered {
            *scanned = i;
            break;
        }
        on_line(&out[*delivered..i]);
        *delivered = i + 1;
        *scanned = i + 1;
        if ambiguous {
            break;
        }
    }
}

/// Deliver the rest of a finished output (`out` is exactly the command's stdout).
pub fn deliver_rest(out: &[u8], delivered: &mut usize, on_line: &mut (dyn FnMut(&[u8]) + Send)) {
    while *delivered < out.len() {
        let rest = &out[*delivered..];
        let n = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        on_line(&rest[..n]);
        *delivered += n + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn exact_bytes_of_one_command() {
        insta::assert_snapshot!(
            "command_plain",
            command_line(M, "systemctl is-active multi-user.target")
        );
        insta::assert_snapshot!(
            "command_eval",
            command_line(M, "echo 'it''s' \"$HOME\"\nexit 3")
        );
        insta::assert_snapshot!("preamble", preamble(M));
    }

    #[test]
    fn plain_detection() {
        assert!(is_plain("/bin/true"));
        assert!(is_plain("test -e /etc/hostname"));
        assert!(is_plain("a=1 env"));
        for c in [
            "",
            " ",
            "if",
            "true; false",
            "echo $x",
            "echo 'a'",
            "a\nb",
            "time if",
            "x done",
            "ls *",
            "echo {a,b}",
            "a\tb",
            "fi",
        ] {
            assert!(!is_plain(c), "{c:?}");
        }
    }

    #[test]
    fn quoting_round_trips_through_bash() {
        let s = "it's \"q\" \\ $HOME `x` \n\t end'";
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &format!("printf %s {}", single_quote(s))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }

    #[test]
    fn preamble_passes_bash_syntax_check() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &preamble(M)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn find_works_at_edges() {
        assert_eq!(find(b"abc\nM E", b"\nM E", 0), Some(3));
        assert_eq!(find(b"\nM E", b"\nM E", 0), Some(0));
        assert_eq!(find(b"\nM ", b"\nM E", 0), None);
        assert_eq!(find(b"\n\n\nM E", b"\nM E", 1), Some(2));
        assert_eq!(find(b"xx", b"\nM E", 5), None);
        assert_eq!(find(b"", b"x", 0), None);
    }

    #[test]
    fn end_lines() {
        assert_eq!(
            parse_end(b"0"),
            Some(EndLine {
                code: 0,
                holders: vec![]
            })
        );
        assert_eq!(
            parse_end(b"124 55 66"),
            Some(EndLine {
                code: 124,
                holders: vec![55, 66]
            })
        );
        assert_eq!(parse_end(b"x"), None);
        assert_eq!(parse_pid(b"1234"), Some(1234));
    }

    #[test]
    fn markers_are_random_hex() {
        let a = random_marker();
        let b = random_marker();
        assert_eq!(a.len(), 2 * MARKER_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn lines_are_delivered_without_waiting_for_more() {
        let pat = b"\nMM E ";
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut d = 0;
        let mut sc = 0;
        // "a\n" alone: the newline may be the framing one, but "a" is a line either way.
        deliver_lines(b"a\n", &mut d, &mut sc, pat, &mut |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"a".to_vec()]);
        // "a\n\n": the second newline may be framing and its line is empty: held back.
        deliver_lines(b"a\n\n", &mut d, &mut sc, pat, &mut |l| {
            got.push(l.to_vec())
        });
        assert_eq!(got.len(), 1);
        // "a\n\nx": it was a real empty line.
        deliver_lines(b"a\n\nx", &mut d, &mut sc, pat, &mut |l| {
            got.push(l.to_vec())
        });
        assert_eq!(got, vec![b"a".to_vec(), b"".to_vec()]);
        deliver_rest(b"a\n\nx", &mut d, &mut |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"a".to_vec(), b"".to_vec(), b"x".to_vec()]);
        // Finished output "a": its line was delivered through the framing newline already.
        let mut d = 2;
        deliver_rest(b"a", &mut d, &mut |l| got.push(l.to_vec()));
        assert_eq!(got.len(), 3);
    }
}
