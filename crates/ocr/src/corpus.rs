//! The committed corpus of real guest screenshots (`tests/corpus`): each PNG with the exact
//! console text it shows and, optionally, a phrase that is on it. Read by the accuracy tests and
//! by the benchmark.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::{load_image, OcrError};

/// One corpus entry: a real screenshot, its true text and a phrase present on it.
#[derive(Debug, Clone)]
pub struct CorpusEntry {
    /// File stem, e.g. `login`.
    pub name: String,
    /// The PNG.
    pub png: PathBuf,
    /// The screenshot.
    pub image: RgbImage,
    /// The true text (from the guest's /dev/vcs1).
    pub truth: String,
    /// A regex that is on the screen (from `phrases.tsv`), if any.
    pub phrase: Option<String>,
}

/// The committed corpus: `crates/ocr/tests/corpus`.
pub fn default_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Loads every `<name>.png` with its `<name>.txt` (and phrase), sorted by name.
pub fn load_corpus(dir: &Path) -> Result<Vec<CorpusEntry>, OcrError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| OcrError::io("cannot read corpus file", p, e))
    };
    let phrases_path = dir.join("phrases.tsv");
    let phrases = if phrases_path.exists() {
        read(&phrases_path)?
    } else {
        String::new()
    };
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| OcrError::io("cannot list corpus directory", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    let mut out = Vec::new();
    for png in pngs {
        let name = png
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let phrase = phrases
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .find(|(n, _)| *n == name)
            .map(|(_, re)| re.to_string());
        out.push(CorpusEntry {
            truth: read(&png.with_extension("txt"))?,
            image: load_image(&png)?,
            name,
            png,
            phrase,
        });
    }
    Ok(out)
}
