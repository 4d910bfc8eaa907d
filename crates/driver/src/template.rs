//! Strict `@name@` templates, like nixpkgs' `substituteAll` but with two extra checks.
//!
//! # Placeholder grammar
//!
//! A placeholder is an `@`, an identifier, and an `@`:
//!
//! ```text
//! placeholder = "@" ident "@"
//! ident       = [A-Za-z_] [A-Za-z0-9_]*
//! ```
//!
//! The template is scanned left to right; at each `@` the scanner tries to read an identifier
//! followed by a closing `@`. If that succeeds the whole `@ident@` is a placeholder and scanning
//! resumes after the closing `@`; otherwise the `@` is ordinary text and scanning resumes at the
//! next character. So `user@localhost`, `a@b.c`, `@ 1@`, `@@` and `postgres://@user@:pw@host:5432`
//! (one placeholder, `@user@`) behave as expected. There is no escape syntax: to keep a literal
//! `@word@`, pass a variable `word` whose value is `"@word@"`.
//!
//! An *unclosed* placeholder is an error: `@ident` that ends its line (or the text) where the `@`
//! starts a word (at the start of the line or after a blank, `=`, `:`, `,`, `(`, `[`, `{` or a
//! quote), as in `owner = @user`. An `@` inside a word (`user@localhost`) stays plain text.
//!
//! # Strictness
//!
//! Rendering fails (listing every problem at once, each with the template name, line and column)
//! when a placeholder has no value **and** when a provided variable is never used by the template,
//! so a renamed variable or a stale template cannot slip through. Templates are rendered when a
//! test is declared, before anything boots.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The values substituted into a template, by variable name.
///
/// Build it with [`Vars::new`] and [`Vars::set`], with the [`vars!`](crate::vars) macro, or
/// collect it from any iterator of `(name, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    /// An empty set of variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the variable `name` with `value` rendered through `Display`.
    pub fn set(mut self, name: impl Into<String>, value: impl fmt::Display) -> Self {
        self.0.insert(name.into(), value.to_string());
        self
    }

    /// Adds (or replaces) a variable in place.
    pub fn insert(&mut self, name: impl Into<String>, value: impl fmt::Display) {
        self.0.insert(name.into(), value.to_string());
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Variable names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no variable is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: fmt::Display> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut vars = Vars::new();
        for (k, v) in iter {
            vars.insert(k, v);
        }
        vars
    }
}

impl From<BTreeMap<String, String>> for Vars {
    fn from(map: BTreeMap<String, String>) -> Self {
        Vars(map)
    }
}

/// Builds a [`Vars`] from `name => value` pairs (values of any `Display` type).
///
/// ```
/// let vars = machinist::vars! { "user" => "authenticator", "port" => 3000 };
/// assert_eq!(vars.get("port"), Some("3000"));
/// ```
#[macro_export]
macro_rules! vars {
    ($($name:expr => $value:expr),* $(,)?) => {{
        let mut vars = $crate::Vars::new();
        $( vars.insert($name, $value); )*
        vars
    }};
}

/// One thing wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    /// The template uses `@name@` but no variable `name` was provided.
    Missing {
        /// Placeholder name (without the `@`s).
        name: String,
        /// 1-based line of its first use.
        line: usize,
        /// 1-based column (in characters) of its first use.
        column: usize,
    },
    /// `@name` ends its line without the closing `@` (see the module docs).
    Unclosed {
        /// Placeholder name (without the `@`).
        name: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters) of the `@`.
        column: usize,
    },
    /// A variable was provided but the template never uses it.
    Unused {
        /// Variable name.
        name: String,
    },
}

/// Rendering a template failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Missing and/or unused variables (all of them are listed).
    #[error("{}", render_problems(.source_name, .problems))]
    Invalid {
        /// The template's file path, or a name given by the caller (`<inline>` by default).
        source_name: String,
        /// Every problem found: missing ones in order of appearance, then unclosed ones, then
        /// unused ones.
        problems: Vec<TemplateProblem>,
    },
    /// The template file could not be read.
    #[error("cannot read template {}: {source}; check that the file exists and is readable", .path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn render_problems(source_name: &str, problems: &[TemplateProblem]) -> String {
    let mut out = format!("template {source_name} is not consistent with its variables:");
    for p in problems {
        match p {
            TemplateProblem::Missing { name, line, column } => out.push_str(&format!(
                "\n  {source_name}:{line}:{column}: placeholder @{name}@ has no value (provide a variable `{name}`)"
            )),
            TemplateProblem::Unclosed { name, line, column } => out.push_str(&format!(
                "\n  {source_name}:{line}:{column}: placeholder @{name} is not closed (write @{name}@)"
            )),
            TemplateProblem::Unused { name } => out.push_str(&format!(
                "\n  {source_name}: variable `{name}` is provided but the template never uses @{name}@ (remove it or use it)"
            )),
        }
    }
    out
}

/// A placeholder occurrence found by [`placeholders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// Name between the `@`s.
    pub name: String,
    /// Byte range of the whole `@name@` in the template.
    pub range: std::ops::Range<usize>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
}

/// Lists the placeholders of `text` in order of appearance (see the module docs for the grammar).
pub fn placeholders(text: &str) -> Vec<Placeholder> {
    scan(text).0
}

/// Lists the unclosed placeholders of `text` (`@name` ending its line; see the module docs), as
/// [`Placeholder`]s whose range covers `@name`.
pub fn unclosed_placeholders(text: &str) -> Vec<Placeholder> {
    scan(text).1
}

/// The placeholders and the unclosed placeholders of `text`.
fn scan(text: &str) -> (Vec<Placeholder>, Vec<Placeholder>) {
    let bytes = text.as_bytes();
    let mut unclosed = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let mut line_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
            i += 1;
            continue;
        }
        if b == b'@' {
            if let Some(end) = match_placeholder(bytes, i) {
                let column = text[line_start..i].chars().count() + 1;
                out.push(Placeholder {
                    name: text[i + 1..end - 1].to_string(),
                    range: i..end,
                    line,
                    column,
                });
                i = end;
                continue;
            }
            if let Some(end) = match_unclosed(bytes, i) {
                let column = text[line_start..i].chars().count() + 1;
                unclosed.push(Placeholder {
                    name: text[i + 1..end].to_string(),
                    range: i..end,
                    line,
                    column,
                });
                i = end;
                continue;
            }
        }
        i += 1;
    }
    (out, unclosed)
}

/// If `bytes[at]` is an `@` that starts a word and is followed by an identifier that ends the
/// line (blanks allowed before the line end) or the text, returns the end of the identifier.
fn match_unclosed(bytes: &[u8], at: usize) -> Option<usize> {
    let starts_word = at == 0
        || matches!(
            bytes[at - 1],
            b' ' | b'\t' | b'\n' | b'=' | b':' | b',' | b'(' | b'[' | b'{' | b'"' | b'\''
        );
    let first = *bytes.get(at + 1)?;
    if !starts_word || !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let mut end = at + 2;
    while bytes
        .get(end)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        end += 1;
    }
    let rest = &bytes[end..];
    let line_end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
    rest[..line_end]
        .iter()
        .all(|c| matches!(c, b' ' | b'\t' | b'\r'))
        .then_some(end)
}

/// If `bytes[at]` starts a placeholder, returns the index just past its closing `@`.
fn match_placeholder(bytes: &[u8], at: usize) -> Option<usize> {
    let first = *bytes.get(at + 1)?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let mut j = at + 2;
    while let Some(&c) = bytes.get(j) {
        if c.is_ascii_alphanumeric() || c == b'_' {
            j += 1;
        } else if c == b'@' {
            return Some(j + 1);
        } else {
            return None;
        }
    }
    None
}

/// Renders `text`, replacing each `@name@` with its value; strict (see the module docs).
///
/// Errors name the template `<inline>`; use [`substitute_named`] to give it a better name.
///
/// ```
/// use machinist::{substitute_all, vars};
/// let conf = substitute_all(
///     "db-uri = \"postgres://@user@:pw@localhost:5432/postgres\"\nserver-port = @port@\n",
///     &vars! { "user" => "authenticator", "port" => 3000 },
/// ).unwrap();
/// assert!(conf.contains("postgres://authenticator:pw@localhost:5432"));
/// ```
pub fn substitute_all(text: &str, vars: &Vars) -> Result<String, TemplateError> {
    substitute_named("<inline>", text, vars)
}

/// Like [`substitute_all`], naming the template `source_name` in errors.
pub fn substitute_named(
    source_name: &str,
    text: &str,
    vars: &Vars,
) -> Result<String, TemplateError> {
    let (found, unclosed) = scan(text);
    let mut problems = Vec::new();
    let mut seen_missing = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in &found {
        if vars.get(&p.name).is_some() {
            used.insert(p.name.as_str());
        } else if seen_missing.insert(p.name.as_str()) {
            problems.push(TemplateProblem::Missing {
                name: p.name.clone(),
                line: p.line,
                column: p.column,
            });
        }
    }
    for p in &unclosed {
        problems.push(TemplateProblem::Unclosed {
            name: p.name.clone(),
            line: p.line,
            column: p.column,
        });
    }
    // A variable whose only use is an unclosed placeholder is explained by that problem.
    let unclosed_names: BTreeSet<&str> = unclosed.iter().map(|p| p.name.as_str()).collect();
    for name in vars.names() {
        if !used.contains(name) && !unclosed_names.contains(name) {
            problems.push(TemplateProblem::Unused {
                name: name.to_string(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(TemplateError::Invalid {
            source_name: source_name.to_string(),
            problems,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for p in &found {
        out.push_str(&text[last..p.range.start]);
        out.push_str(vars.get(&p.name).unwrap_or_default());
        last = p.range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Reads the template file at `path` and renders it with [`substitute_named`] (errors name the file).
pub fn substitute_file(path: impl AsRef<Path>, vars: &Vars) -> Result<String, TemplateError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    substitute_named(&path.display().to_string(), &text, vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUTORIAL_CONF: &str = "db-uri = \"postgres://@user@:mysecretpassword@localhost:5432/postgres\"\ndb-schemas = \"api\"\ndb-anon-role = \"web_anon\"\nserver-port = @port@\n";

    const SETUP_SQL: &str = "create schema api;\n\ncreate role web_anon nologin;\n\ncreate role @user@ noinherit login password 'mysecretpassword';\ngrant web_anon to @user@;\n";

    #[test]
    fn renders_tutorial_conf() {
        let out = substitute_all(
            TUTORIAL_CONF,
            &vars! { "user" => "authenticator", "port" => 3000 },
        )
        .unwrap();
        insta::assert_snapshot!(out);
    }

    #[test]
    fn renders_setup_sql_with_repeated_placeholder() {
        let out = substitute_all(SETUP_SQL, &vars! { "user" => "authenticator" }).unwrap();
        insta::assert_snapshot!(out);
    }

    #[test]
    fn non_placeholders_are_left_alone() {
        let text = "user@localhost a@b.c @ 1@ @@ @1a@ trailing@ @x y@ mail: root@example.org\n";
        assert!(placeholders(text).is_empty());
        assert_eq!(substitute_all(text, &Vars::new()).unwrap(), text);
    }

    #[test]
    fn adjacent_placeholders() {
        let out = substitute_all("@a@@b@", &vars! { "a" => 1, "b" => 2 }).unwrap();
        assert_eq!(out, "12");
    }

    #[test]
    fn placeholder_positions_count_characters() {
        let ps = placeholders("é @x@\n  @y_1@");
        assert_eq!(ps[0].column, 3);
        assert_eq!(
            (ps[1].line, ps[1].column, ps[1].name.as_str()),
            (2, 3, "y_1")
        );
    }

    #[test]
    fn error_missing_and_unused() {
        let err = substitute_named(
            "tutorial.conf",
            TUTORIAL_CONF,
            &vars! { "username" => "authenticator", "port" => 3000 },
        )
        .unwrap_err();
        insta::assert_snapshot!(err.to_string());
    }

    #[test]
    fn error_only_unused() {
        let err =
            substitute_all("port = @port@\n", &vars! { "port" => 1, "extra" => 2 }).unwrap_err();
        insta::assert_snapshot!(err.to_string());
    }

    #[test]
    fn an_unclosed_placeholder_is_reported_with_its_position() {
        let text = "host = db\nowner = @user\nmail = admin@example.org\n";
        // With the variable: not "unused", but unclosed at line 2, column 9.
        let e =
            substitute_named("owner.conf", text, &crate::vars! { "user" => "alice" }).unwrap_err();
        let TemplateError::Invalid { problems, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            problems,
            &[TemplateProblem::Unclosed {
                name: "user".into(),
                line: 2,
                column: 9
            }]
        );
        assert!(
            e.to_string()
                .contains("owner.conf:2:9: placeholder @user is not closed (write @user@)"),
            "{e}"
        );
        // Without it: still reported (it would otherwise render silently).
        let e = substitute_all(text, &Vars::new()).unwrap_err();
        assert!(e.to_string().contains("<inline>:2:9"), "{e}");
        // At the very end of the text, after a quote.
        let e = substitute_all("x = \"@user", &Vars::new()).unwrap_err();
        assert!(e.to_string().contains("<inline>:1:6"), "{e}");
    }

    #[test]
    fn an_at_sign_inside_a_word_stays_text() {
        for text in [
            "mail = admin@example.org\n",
            "uri = postgres://user@host\n",
            "@ 1\n",
            "a @1\n",
            "@@\n",
            "x = @user is here\n",
        ] {
            assert_eq!(substitute_all(text, &Vars::new()).unwrap(), text);
        }
        assert!(unclosed_placeholders("mail = admin@example.org").is_empty());
    }

    #[test]
    fn file_variant_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("setup.sql");
        std::fs::write(&path, SETUP_SQL).unwrap();
        let err = substitute_file(&path, &Vars::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{}:5:13: placeholder @user@", path.display())),
            "{err}"
        );
        let out = substitute_file(&path, &vars! { "user" => "u" }).unwrap();
        assert!(out.contains("create role u noinherit"));
        let missing = substitute_file(dir.path().join("nope"), &Vars::new()).unwrap_err();
        assert!(missing.to_string().contains("cannot read template"));
    }
}
