//! Key names for QMP `send-key`: HMP-style combos (`ctrl-alt-delete`, `shift-0x02`) and the
//! characters of a US keyboard layout (for `send_chars`, as the NixOS driver does).

/// One key of a combo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A QKeyCode name (`a`, `ret`, `ctrl`, `bracket_left`, ...).
    Qcode(String),
    /// A raw scancode number (HMP `0x1e` syntax).
    Number(u32),
}

impl Key {
    /// The QMP `KeyValue` JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Key::Qcode(q) => serde_json::json!({ "type": "qcode", "data": q }),
            Key::Number(n) => serde_json::json!({ "type": "number", "data": n }),
        }
    }
}

/// Parses an HMP-style combo such as `ctrl-alt-delete`, `shift-a`, `ret` or `shift-0x02` (keys
/// pressed together, separated by `-`). Names are QKeyCode names; `0x..` are scancodes.
pub fn parse_combo(combo: &str) -> Result<Vec<Key>, String> {
    if combo.is_empty() {
        return Err("empty key combo".into());
    }
    combo
        .split('-')
        .map(|part| {
            if part.is_empty() {
                return Err(format!(
                    "bad key combo `{combo}`: empty key name (the minus key is `minus`)"
                ));
            }
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                return u32::from_str_radix(hex, 16)
                    .map(Key::Number)
                    .map_err(|_| format!("bad scancode `{part}` in key combo `{combo}`"));
            }
            if part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Ok(Key::Qcode(part.to_ascii_lowercase()))
            } else {
                Err(format!("bad key name `{part}` in key combo `{combo}`"))
            }
        })
        .collect()
}

/// The combo that types `c` on a US layout (`A` -> `shift-a`, `\n` -> `ret`, `!` -> `shift-1`),
/// or `None` for characters without a key.
pub fn char_to_combo(c: char) -> Option<String> {
    let plain = |k: &str| Some(k.to_string());
    let shift = |k: &str| Some(format!("shift-{k}"));
    match c {
        'a'..='z' | '0'..='9' => plain(&c.to_string()),
        'A'..='Z' => shift(&c.to_ascii_lowercase().to_string()),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\t' => plain("tab"),
        '-' => plain("minus"),
        '_' => shift("minus"),
        '=' => plain("equal"),
        '+' => shift("equal"),
        '[' => plain("bracket_left"),
        '{' => shift("bracket_left"),
        ']' => plain("bracket_right"),
        '}' => shift("bracket_right"),
        ';' => plain("semicolon"),
        ':' => shift("semicolon"),
        '\'' => plain("apostrophe"),
        '"' => shift("apostrophe"),
        '`' => plain("grave_accent"),
        '~' => shift("grave_accent"),
        '\\' => plain("backslash"),
        '|' => shift("backslash"),
        ',' => plain("comma"),
        '<' => shift("comma"),
        '.' => plain("dot"),
        '>' => shift("dot"),
        '/' => plain("slash"),
        '?' => shift("slash"),
        '!' => shift("1"),
        '@' => shift("2"),
        '#' => shift("3"),
        '$' => shift("4"),
        '%' => shift("5"),
        '^' => shift("6"),
        '&' => shift("7"),
        '*' => shift("8"),
        '(' => shift("9"),
        ')' => shift("0"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combos_parse() {
        assert_eq!(
            parse_combo("ctrl-alt-delete").unwrap(),
            vec![
                Key::Qcode("ctrl".into()),
                Key::Qcode("alt".into()),
                Key::Qcode("delete".into())
            ]
        );
        assert_eq!(
            parse_combo("shift-0x02").unwrap(),
            vec![Key::Qcode("shift".into()), Key::Number(2)]
        );
        assert!(parse_combo("ctrl--").is_err());
        assert!(parse_combo("").is_err());
        assert!(parse_combo("a b").is_err());
        assert_eq!(
            Key::Number(0x1e).to_json(),
            serde_json::json!({"type": "number", "data": 30})
        );
    }

    #[test]
    fn us_layout_chars() {
        assert_eq!(char_to_combo('A').as_deref(), Some("shift-a"));
        assert_eq!(char_to_combo('\n').as_deref(), Some("ret"));
        assert_eq!(char_to_combo('$').as_deref(), Some("shift-4"));
        assert_eq!(char_to_combo('>').as_deref(), Some("shift-dot"));
        assert_eq!(char_to_combo('é'), None);
        for c in (' '..='~').chain(['\n', '\t']) {
            let combo = char_to_combo(c).unwrap_or_else(|| panic!("no key for {c:?}"));
            assert!(parse_combo(&combo).is_ok(), "{combo}");
        }
    }
}
