//! The crate's error type: every variant names the thing that failed and what to do next.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while taking, preparing or reading a screenshot.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// The tesseract executable could not be started.
    #[error(
        "tesseract not found (tried `{program}`): {source}; install the Debian package \
         tesseract-ocr (and tesseract-ocr-eng), or set OcrConfig::tesseract to its path"
    )]
    TesseractMissing {
        /// The program we tried to run.
        program: PathBuf,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// tesseract has no model for a configured language.
    #[error(
        "tesseract has no `{lang}` language model (installed: {installed}); install the Debian \
         package tesseract-ocr-{lang} or change TesseractConfig::lang"
    )]
    MissingLanguage {
        /// The missing language code.
        lang: String,
        /// What `tesseract --list-langs` shows.
        installed: String,
    },
    /// The configuration cannot work.
    #[error("invalid OCR configuration: {0}")]
    Config(String),
    /// tesseract ran but failed (non-zero exit status).
    #[error("tesseract failed on variant `{variant}` ({status}): {stderr}; run `{command}` by hand to see why")]
    TesseractFailed {
        /// The preprocessing variant whose image was being read.
        variant: String,
        /// The exit status as text.
        status: String,
        /// The tail of tesseract's stderr.
        stderr: String,
        /// The command line, for reproducing by hand.
        command: String,
    },
    /// I/O with the tesseract child process failed.
    #[error("talking to tesseract for variant `{variant}` failed: {source}")]
    TesseractIo {
        /// The preprocessing variant.
        variant: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The in-process backend (cargo feature `libtesseract`) could not initialise libtesseract
    /// for the configured language(s).
    #[error(
        "libtesseract (in-process backend) could not load language `{lang}` ({detail}); install \
         the Debian package(s) {packages} (models live in /usr/share/tesseract-ocr/5/tessdata, \
         or set TESSDATA_PREFIX), or change TesseractConfig::lang"
    )]
    LibTesseractInit {
        /// The configured language(s), e.g. `eng`.
        lang: String,
        /// The Debian packages that provide them.
        packages: String,
        /// The `tesseract` crate's error.
        detail: String,
    },
    /// The in-process backend (cargo feature `libtesseract`) failed while reading an image.
    #[error(
        "libtesseract (in-process backend) failed on variant `{variant}` while {step}: {detail}; \
         compare with Backend::Cli, which runs the `tesseract` program and shows its stderr"
    )]
    LibTesseractFailed {
        /// The preprocessing variant whose image was being read.
        variant: String,
        /// What it was doing ("recognising", ...).
        step: String,
        /// The `tesseract` crate's error.
        detail: String,
    },
    /// tesseract's TSV output could not be parsed.
    #[error(
        "tesseract printed unexpected TSV on line {line}: {detail} (is this tesseract 4 or newer?)"
    )]
    BadTsv {
        /// 1-based line number in the TSV output.
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// An image could not be decoded.
    #[error(
        "cannot decode image {what}: {source}; expected a PPM (P6) from QMP screendump or a PNG"
    )]
    Decode {
        /// What was being decoded (a path, or "screendump bytes").
        what: String,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// An image could not be encoded or written.
    #[error(
        "cannot write image {path}: {source}; check that the directory exists and is writable"
    )]
    Encode {
        /// Where it was going.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing ("cannot read", "cannot create directory", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pattern given to `wait_for_text`/`find_text` is not a valid regular expression.
    #[error("invalid regular expression {pattern:?}: {source}; nothing was waited for")]
    InvalidRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex compiler's error.
        #[source]
        source: Box<regex::Error>,
    },
    /// A console font could not be loaded.
    #[error("cannot load console font: {detail}")]
    BadFont {
        /// What is wrong with it.
        detail: String,
    },
    /// The screen source (e.g. QMP screendump) failed.
    #[error("taking a screenshot failed: {0}")]
    Screenshot(String),
    /// `wait_for_text` ran out of time.
    #[error(
        "text matching /{pattern}/ did not appear on the screen within {timeout:?} \
         ({attempts} OCR attempts); the screen last read: {}; the last screenshot and the text \
         of every variant are in {saved}", quoted_screen(.last_text)
    )]
    Timeout {
        /// The pattern waited for.
        pattern: String,
        /// The deadline that passed.
        timeout: Duration,
        /// How many screenshots were read.
        attempts: u32,
        /// Where the last screenshot and texts were saved (or why they could not be).
        saved: String,
        /// The text last read (the variant that read the most words), as one line.
        last_text: String,
    },
}

impl OcrError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        OcrError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The last screen text for an error message: quoted, at most 300 characters.
fn quoted_screen(text: &str) -> String {
    const MAX: usize = 300;
    if text.trim().is_empty() {
        return "nothing (no text recognised)".into();
    }
    let mut t: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        t.push_str("...");
    }
    format!("{t:?}")
}
