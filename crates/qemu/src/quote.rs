//! Quoting a word for a POSIX shell (bash, dash, busybox `sh`): the one quoting every Machinist
//! crate uses for paths and arguments put into a shell script or a "run it yourself" line.
//! [`shell_quote`] leaves safe words bare (readable command lines); [`single_quote`] always
//! quotes (generated scripts, where a word must never turn into a keyword or an assignment).

/// Bytes a word may consist of to be left unquoted: none of them is special to a shell.
const SAFE: &[u8] = b"-_./,=:+@%";

/// `s` as one shell word: unchanged if it is non-empty and holds only ASCII letters, digits and
/// `-_./,=:+@%`, else in single quotes with each `'` written as `'\''`. Every byte except NUL
/// survives (a shell cannot pass NUL in an argument at all).
///
/// Meant for argument positions. A bare word is still subject to the shell's grammar where it
/// stands: as the *first* word of a command, `a=b` is an assignment and `if` a keyword.
///
/// ```
/// use machinist_qemu::shell_quote;
/// assert_eq!(shell_quote("/tmp/run-1/disk.qcow2"), "/tmp/run-1/disk.qcow2");
/// assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
/// assert_eq!(shell_quote(""), "''");
/// ```
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || SAFE.contains(&b))
    {
        s.to_string()
    } else {
        single_quote(s)
    }
}

/// `s` always in single quotes, each `'` written as `'\''`: one shell word that is never a
/// keyword or an assignment, wherever it stands. Every byte except NUL survives.
///
/// ```
/// use machinist_qemu::single_quote;
/// assert_eq!(single_quote("alice"), "'alice'");
/// assert_eq!(single_quote("it's"), r"'it'\''s'");
/// ```
pub fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What `sh -c 'printf %s <quoted>'` prints for `s`: the word as the shell parsed it.
    fn through_shell(shell: &str, s: &str) -> String {
        let out = Command::new(shell)
            .args(["-c", &format!("printf %s {}", shell_quote(s))])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell} failed for {s:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn safe_words_stay_bare_and_the_rest_is_quoted() {
        assert_eq!(shell_quote("console=ttyS0"), "console=ttyS0");
        assert_eq!(shell_quote("user@host:+1,2%"), "user@host:+1,2%");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("é"), "'é'");
        assert_eq!(shell_quote("'"), r"''\'''");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn single_quote_always_quotes() {
        assert_eq!(single_quote("alice"), "'alice'");
        assert_eq!(single_quote(""), "''");
        assert_eq!(single_quote("a'b"), r"'a'\''b'");
        // A quoted keyword or assignment is a plain word again.
        let out = Command::new("bash")
            .args([
                "-c",
                &format!(
                    "{} 2>&1; {} 2>&1; true",
                    single_quote("x=1"),
                    single_quote("if")
                ),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("x=1: command not found"), "{text}");
        assert!(text.contains("if: command not found"), "{text}");
    }

    #[test]
    fn every_word_round_trips_through_bash_and_sh() {
        let words = [
            "plain",
            "",
            "it's a \"test\" $HOME `x` \\ \n end",
            "''",
            "a'b'c",
            "*?[a]{b,c}~ #!&|;<>()",
            "tab\there",
            "unicode ✓ é",
            "-n",
            "%s",
        ];
        for shell in ["bash", "sh"] {
            for w in words {
                assert_eq!(through_shell(shell, w), w, "{shell}: {w:?}");
                let out = Command::new(shell)
                    .args(["-c", &format!("printf %s {}", single_quote(w))])
                    .output()
                    .unwrap();
                assert_eq!(String::from_utf8(out.stdout).unwrap(), w, "{shell}: {w:?}");
            }
        }
    }
}
