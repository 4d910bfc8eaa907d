//! The error type: every problem names the test file, the line and column, and the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a test file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The test file.
    pub file: PathBuf,
    /// 1-based line (`None` when the problem concerns the whole file).
    pub line: Option<usize>,
    /// 1-based column, in characters.
    pub column: Option<usize>,
    /// The dotted key the problem is about (`nodes.server.cores`), when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
    /// The offending line with a caret under the span (empty without a place).
    pub excerpt: String,
}

impl Located {
    /// A problem at byte range `span` of `text` (the contents of `file`).
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let Some(span) = span else {
            return Located {
                file: file.to_path_buf(),
                line: None,
                column: None,
                key,
                message,
                excerpt: String::new(),
            };
        };
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let shown = &text[line_start..line_end];
        let width = text[start..span.end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        let gutter = line.to_string().len();
        let excerpt = format!(
            "{:gutter$} |\n{line} | {shown}\n{:gutter$} | {}{}",
            "",
            "",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        let key = key.or_else(|| key_at(text, line_start));
        Located {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key,
            message,
            excerpt,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if !self.excerpt.is_empty() {
            write!(f, "\n{}", self.excerpt)?;
        }
        Ok(())
    }
}

/// Why a test file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    /// The test file itself could not be read.
    #[error("{}: cannot read the test file: {source}; check the path (a `.toml` file, or a directory with a `test.toml`)", .path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Syntax(Box<Located>),
    /// Well-formed, but the declaration is wrong (every problem is listed).
    #[error("{}", render_all(.0))]
    Invalid(Vec<Located>),
}

impl TestFileError {
    /// Every located problem (one for a syntax error).
    pub fn problems(&self) -> Vec<&Located> {
        match self {
            TestFileError::Read { .. } => Vec::new(),
            TestFileError::Syntax(l) => vec![l],
            TestFileError::Invalid(all) => all.iter().collect(),
        }
    }
}

fn render_all(all: &[Located]) -> String {
    let mut out = String::new();
    for (i, l) in all.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&l.to_string());
    }
    out
}

/// The dotted key defined on the line starting at `line_start`: the last table header before it
/// (`[nodes.server]`, `[[nodes.server.files]]`) joined with the line's own `key =`.
fn key_at(text: &str, line_start: usize) -> Option<String> {
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let own = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
        .map(|k| k.replace(['"', '\''], ""));
    let header = if line.starts_with('[') {
        Some(line)
    } else {
        text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
    }
    .map(|h| {
        h.split('#')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['[', ']'])
            .trim()
            .replace(['"', '\''], "")
    });
    match (header, own) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(h), None) => Some(h),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_joins_the_table_header() {
        let text = "name = \"x\"\n[nodes.server]\ncores = 2\n";
        let at = text.find("cores").unwrap();
        assert_eq!(key_at(text, at).as_deref(), Some("nodes.server.cores"));
        assert_eq!(key_at(text, 0).as_deref(), Some("name"));
    }

    #[test]
    fn located_points_at_the_span() {
        let text = "a = 1\nbb = \"x\"\n";
        let start = text.find("\"x\"").unwrap();
        let l = Located::at(
            Path::new("t.toml"),
            text,
            Some(start..start + 3),
            None,
            "bad",
        );
        assert_eq!((l.line, l.column), (Some(2), Some(6)));
        assert_eq!(l.key.as_deref(), Some("bb"));
        assert!(
            l.to_string().starts_with("t.toml:2:6: key `bb`: bad"),
            "{l}"
        );
    }
}
