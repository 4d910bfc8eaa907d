//! The `testScript` of a nixpkgs test file, as the NixOS driver receives it: the Nix indented
//! string (`''...''`) read from the `.nix` source with Nix's rules (escapes, the common
//! indentation stripped, a blank first line dropped) and its `${...}` interpolations replaced by
//! the values the corpus records for them. The corpus proves with it that each `script.py` is
//! the upstream script, unedited.

use std::collections::BTreeMap;

/// Why a `testScript` could not be derived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NixScriptError {
    /// No `testScript = ...''` in the file.
    #[error("no `testScript` followed by an indented string ('') in the file")]
    NoTestScript,
    /// The indented string never ends.
    #[error("the testScript's indented string ('') is not closed")]
    Unterminated,
    /// An interpolation whose value the corpus does not record.
    #[error("the interpolation `{0}` has no value in corpus.toml's [interpolations]")]
    UnknownInterpolation(String),
}

/// One piece of a line of the indented string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal source text (indentation can be stripped from it).
    Text(String),
    /// Text made by an escape (`'''`, `''$`, `''\n`): content, never indentation.
    Escaped(String),
    /// `${...}`, as written.
    Interpolation(String),
}

/// The testScript of `nix_source`, with each interpolation (as written, `${...}`) replaced by
/// its value from `values`.
pub fn test_script(
    nix_source: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, NixScriptError> {
    let start = script_start(nix_source).ok_or(NixScriptError::NoTestScript)?;
    let (lines, _) = indented_string_lines(&nix_source[start..])?;
    render(&lines, values)
}

/// The byte offset just after the `''` that opens the testScript's string: `testScript = ''`,
/// optionally after a function header (`{ nodes, ... }:`, `_:`) and `let ... in` bindings.
fn script_start(src: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = src[from..].find("testScript") {
        let at = from + i + "testScript".len();
        from = at;
        let Some(mut pos) = skip_ws(src, at).strip_prefix_at(src, "=") else {
            continue;
        };
        pos = skip_ws(src, pos);
        // A function header: `{ ... }:` or `name:`.
        if src[pos..].starts_with('{') {
            let Some(end) = balanced_end(src, pos) else {
                continue;
            };
            let after = skip_ws(src, end);
            if src[after..].starts_with(':') {
                pos = skip_ws(src, after + 1);
            }
        } else if let Some(colon) = ident_then_colon(&src[pos..]) {
            pos = skip_ws(src, pos + colon + 1);
        }
        // `let ... in`.
        if keyword_at(src, pos, "let") {
            let Some(in_at) = matching_in(src, pos + 3) else {
                continue;
            };
            pos = skip_ws(src, in_at + 2);
        }
        if src[pos..].starts_with("''") {
            return Some(pos + 2);
        }
    }
    None
}

/// `pos` advanced over whitespace and `#` comments.
fn skip_ws(src: &str, mut pos: usize) -> usize {
    let b = src.as_bytes();
    while pos < b.len() {
        if b[pos].is_ascii_whitespace() {
            pos += 1;
        } else if b[pos] == b'#' {
            pos = src[pos..].find('\n').map_or(b.len(), |n| pos + n);
        } else {
            break;
        }
    }
    pos
}

/// Offset helpers on a byte position.
trait AtExt {
    fn strip_prefix_at(self, src: &str, prefix: &str) -> Option<usize>;
}

impl AtExt for usize {
    fn strip_prefix_at(self, src: &str, prefix: &str) -> Option<usize> {
        src[self..]
            .starts_with(prefix)
            .then_some(self + prefix.len())
    }
}

/// The length up to a `:` after an identifier (`_:`, `args:`), if that is what `s` starts with.
fn ident_then_colon(s: &str) -> Option<usize> {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        .count();
    (n > 0 && s[n..].starts_with(':')).then_some(n)
}

/// Whether the keyword `kw` stands at `pos` (not part of a longer identifier).
fn keyword_at(src: &str, pos: usize, kw: &str) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'\'';
    src[pos..].starts_with(kw)
        && src
            .as_bytes()
            .get(pos + kw.len())
            .is_none_or(|b| !ident(*b))
        && (pos == 0 || !ident(src.as_bytes()[pos - 1]))
}

/// The end (exclusive) of the bracketed expression opening at `pos` (`{`, `(` or `[`), skipping
/// strings and comments.
fn balanced_end(src: &str, pos: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut depth = 0usize;
    let mut i = pos;
    while i < b.len() {
        match b[i] {
            b'{' | b'(' | b'[' => depth += 1,
            b'}' | b')' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i = skip_string_or_comment(src, i)?;
    }
    None
}

/// The position after the byte at `i`, or after the whole string or comment starting there.
fn skip_string_or_comment(src: &str, i: usize) -> Option<usize> {
    let b = src.as_bytes();
    if b[i..].starts_with(b"''") {
        let (_, len) = indented_string_lines(&src[i + 2..]).ok()?;
        return Some(i + 2 + len);
    }
    match b[i] {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            Some(j + 1)
        }
        b'#' => Some(src[i..].find('\n').map_or(b.len(), |n| i + n)),
        _ => Some(i + 1),
    }
}

/// The position of the `in` that closes a `let` whose bindings start at `pos`.
fn matching_in(src: &str, pos: usize) -> Option<usize> {
    let b = src.as_bytes();
    let (mut depth, mut lets) = (0usize, 1usize);
    let mut i = pos;
    while i < b.len() {
        match b[i] {
            b'{' | b'(' | b'[' => depth += 1,
            b'}' | b')' | b']' => depth = depth.saturating_sub(1),
            _ if depth == 0 && keyword_at(src, i, "let") => lets += 1,
            _ if depth == 0 && keyword_at(src, i, "in") => {
                lets -= 1;
                if lets == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i = skip_string_or_comment(src, i)?;
    }
    None
}

/// The string's lines as pieces, up to its closing `''`, and the bytes read (closing included).
fn indented_string_lines(s: &str) -> Result<(Vec<Vec<Piece>>, usize), NixScriptError> {
    let b = s.as_bytes();
    let mut lines: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut text = String::new();
    let flush = |lines: &mut Vec<Vec<Piece>>, text: &mut String| {
        if !text.is_empty() {
            lines
                .last_mut()
                .expect("at least one line")
                .push(Piece::Text(std::mem::take(text)));
        }
    };
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"''") {
            match b.get(i + 2) {
                Some(b'\'') => {
                    flush(&mut lines, &mut text);
                    push(&mut lines, Piece::Escaped("''".into()));
                    i += 3;
                }
                Some(b'$') => {
                    flush(&mut lines, &mut text);
                    push(&mut lines, Piece::Escaped("$".into()));
                    i += 3;
                }
                Some(b'\\') => {
                    flush(&mut lines, &mut text);
                    let c = s[i + 3..]
                        .chars()
                        .next()
                        .ok_or(NixScriptError::Unterminated)?;
                    let out = match c {
                        'n' => "\n".to_string(),
                        't' => "\t".to_string(),
                        'r' => "\r".to_string(),
                        other => other.to_string(),
                    };
                    push(&mut lines, Piece::Escaped(out));
                    i += 3 + c.len_utf8();
                }
                _ => {
                    flush(&mut lines, &mut text);
                    return Ok((lines, i + 2));
                }
            }
        } else if b[i..].starts_with(b"$$") {
            // `$$` is literal, and `$${` no interpolation.
            text.push_str("$$");
            i += 2;
        } else if b[i..].starts_with(b"${") {
            flush(&mut lines, &mut text);
            let end = interpolation_end(s, i).ok_or(NixScriptError::Unterminated)?;
            push(&mut lines, Piece::Interpolation(s[i..end].to_string()));
            i = end;
        } else if b[i] == b'\n' {
            flush(&mut lines, &mut text);
            lines.push(Vec::new());
            i += 1;
        } else {
            let c = s[i..].chars().next().expect("in bounds");
            text.push(c);
            i += c.len_utf8();
        }
    }
    Err(NixScriptError::Unterminated)
}

fn push(lines: &mut [Vec<Piece>], piece: Piece) {
    lines.last_mut().expect("at least one line").push(piece);
}

/// The end (exclusive) of the interpolation `${...}` starting at `start`, counting nested
/// braces and skipping the contents of Nix strings (`"..."`, `''...''`) inside it.
fn interpolation_end(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = start + 1;
    let mut in_string = false;
    while i < b.len() {
        if !in_string && b[i..].starts_with(b"''") {
            i = skip_string_or_comment(s, i)?;
            continue;
        }
        match (in_string, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_string = false,
            (false, b'"') => in_string = true,
            (false, b'{') => depth += 1,
            (false, b'}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Leading spaces of a line's literal text (tabs are not indentation in Nix).
fn indentation(line: &[Piece]) -> usize {
    match line.first() {
        Some(Piece::Text(t)) => t.bytes().take_while(|c| *c == b' ').count(),
        _ => 0,
    }
}

/// A line of only spaces (or nothing): it does not count for the common indentation (a tab
/// does: Nix counts only spaces as indentation).
fn is_blank(line: &[Piece]) -> bool {
    line.iter()
        .all(|p| matches!(p, Piece::Text(t) if t.bytes().all(|c| c == b' ')))
}

fn render(
    lines: &[Vec<Piece>],
    values: &BTreeMap<String, String>,
) -> Result<String, NixScriptError> {
    let common = lines
        .iter()
        .filter(|l| !is_blank(l))
        .map(|l| indentation(l))
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    let last = lines.len() - 1;
    for (n, line) in lines.iter().enumerate() {
        // A first line holding only spaces is dropped with its newline.
        if n == 0 && is_blank(line) {
            continue;
        }
        if n > 0 && !(n == 1 && is_blank(&lines[0])) {
            out.push('\n');
        }
        // So is a last line of only spaces (the closing `''`'s indentation).
        if n == last && n > 0 && is_blank(line) {
            continue;
        }
        let mut strip = common;
        for piece in line {
            match piece {
                Piece::Text(t) => {
                    let lead = t.bytes().take_while(|c| *c == b' ').count().min(strip);
                    strip = 0;
                    out.push_str(&t[lead..]);
                }
                Piece::Escaped(e) => {
                    strip = 0;
                    out.push_str(e);
                }
                Piece::Interpolation(src) => {
                    strip = 0;
                    let value = values
                        .get(src)
                        .ok_or_else(|| NixScriptError::UnknownInterpolation(src.clone()))?;
                    out.push_str(value);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(src: &str) -> Result<String, NixScriptError> {
        test_script(src, &BTreeMap::new())
    }

    #[test]
    fn indentation_is_stripped_and_the_blank_first_line_dropped() {
        let src = "{\n  testScript = ''\n    start_all()\n    if True:\n        machine.succeed(\"true\")\n  '';\n}\n";
        assert_eq!(
            script(src).unwrap(),
            "start_all()\nif True:\n    machine.succeed(\"true\")\n"
        );
    }

    #[test]
    fn blank_lines_inside_do_not_count_for_the_indentation() {
        let src = "testScript = ''\n    a()\n\n  \n    b()\n  '';";
        assert_eq!(script(src).unwrap(), "a()\n\n\nb()\n");
    }

    #[test]
    fn escapes() {
        let src = "testScript = ''\n  x = '''a'''\n  y = \"''${HOME}\"\n  z = ''\\t\n'';";
        assert_eq!(script(src).unwrap(), "x = ''a''\ny = \"${HOME}\"\nz = \t\n");
    }

    #[test]
    fn function_headers_are_skipped() {
        let src = "testScript = { nodes, ... }: ''\n  machine.wait_for_unit(\"x\")\n'';";
        assert_eq!(script(src).unwrap(), "machine.wait_for_unit(\"x\")\n");
        let src = "testScript = _: ''\n  a()\n'';";
        assert_eq!(script(src).unwrap(), "a()\n");
    }

    #[test]
    fn interpolations_take_the_recorded_values() {
        let src = "testScript = ''\n  client.succeed(\"ping ${nodes.server.networking.primaryIPAddress}\")\n  ${lib.concatMapStrings (x: \"f(${x})\") [\"a\"]}\n'';";
        let values = BTreeMap::from([
            (
                "${nodes.server.networking.primaryIPAddress}".to_string(),
                "192.168.1.2".to_string(),
            ),
            (
                "${lib.concatMapStrings (x: \"f(${x})\") [\"a\"]}".to_string(),
                "f(a)".to_string(),
            ),
        ]);
        assert_eq!(
            test_script(src, &values).unwrap(),
            "client.succeed(\"ping 192.168.1.2\")\nf(a)\n"
        );
    }

    #[test]
    fn an_interpolation_without_a_value_is_an_error() {
        let src = "testScript = ''\n  a(${x})\n'';";
        assert_eq!(
            script(src),
            Err(NixScriptError::UnknownInterpolation("${x}".into()))
        );
    }

    #[test]
    fn missing_or_unclosed_scripts() {
        assert_eq!(script("{ nodes = {}; }"), Err(NixScriptError::NoTestScript));
        assert_eq!(
            script("testScript = ''\n  a()\n"),
            Err(NixScriptError::Unterminated)
        );
    }

    #[test]
    fn let_bindings_before_the_string() {
        let src = "testScript = { nodes, ... }:\n  let\n    x = \"${nodes.a}\";\n  in\n  ''\n    a()\n  '';";
        assert_eq!(script(src).unwrap(), "a()\n");
    }

    #[test]
    fn let_bindings_holding_indented_strings() {
        let src = "testScript =\n  let\n    f = writePython ''\n      print(1)\n    '';\n    g = { a = ''x''; };\n  in\n  ''\n    machine.succeed(\"${f}\")\n  '';";
        let values = BTreeMap::from([("${f}".to_string(), "/nix/store/x-f".to_string())]);
        assert_eq!(
            test_script(src, &values).unwrap(),
            "machine.succeed(\"/nix/store/x-f\")\n"
        );
    }

    #[test]
    fn nested_indented_strings_inside_an_interpolation() {
        let src = "testScript = ''\n  ${f ''\n    inner ${x} ''}\n  b()\n'';";
        let values =
            BTreeMap::from([("${f ''\n    inner ${x} ''}".to_string(), "v()".to_string())]);
        assert_eq!(test_script(src, &values).unwrap(), "v()\nb()\n");
    }

    #[test]
    fn tabs_are_not_indentation_and_dollar_dollar_is_literal() {
        let src = "testScript = ''\n    a()\n  \tb\n    c = \"$${x}\"\n  '';";
        assert_eq!(script(src).unwrap(), "  a()\n\tb\n  c = \"$${x}\"\n");
    }

    #[test]
    fn a_mention_of_test_script_before_the_attribute_is_skipped() {
        let src = "# the testScript below\n{ testScript = ''\n  a()\n''; }";
        assert_eq!(script(src).unwrap(), "a()\n");
    }
}
