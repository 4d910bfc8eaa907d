//! The in-process backend (cargo feature `libtesseract`) reads the committed corpus like the
//! CLI backend: same preprocessed image, language and page segmentation mode, same words.
#![cfg(feature = "libtesseract")]

use std::time::Duration;

use image::RgbImage;
use machinist_ocr::corpus::{default_corpus_dir, load_corpus, CorpusEntry};
use machinist_ocr::metrics::word_recall;
use machinist_ocr::{compile, Backend, Ocr, OcrConfig, OcrError, Reader};

/// The tesseract variants only (the console reader would answer before tesseract runs).
fn tesseract_only(backend: Backend) -> Ocr {
    let mut cfg = OcrConfig::default();
    cfg.variants.retain(|v| v.reader == Reader::Tesseract);
    cfg.tesseract.backend = backend;
    Ocr::new(cfg).unwrap_or_else(|e| panic!("{backend:?}: {e}"))
}

fn corpus(name: &str) -> CorpusEntry {
    load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("corpus image {name} is missing"))
}

#[test]
fn in_process_reads_the_same_words_as_the_cli() {
    let cli = tesseract_only(Backend::Cli);
    let lib = tesseract_only(Backend::InProcess);
    assert!(
        lib.tesseract_version().starts_with("libtesseract 5."),
        "{}",
        lib.tesseract_version()
    );
    // `huge`: a font the console reader does not know, so tesseract is what reads it in
    // production; `dialog`: a curses dialog.
    for (name, key) in [("huge", "quick brown fox"), ("dialog", "geographic area")] {
        let e = corpus(name);
        // One variant in block mode (psm 6) and one in sparse-text mode (psm 11).
        for variant in [&cli.config().variants[0], &cli.config().variants[2]] {
            let a = cli.read_variant(&e.image, variant).unwrap();
            let b = lib.read_variant(&e.image, variant).unwrap();
            let at = format!("{name}/{}", variant.name);
            assert!(
                b.text().contains(key),
                "{at}: in-process text {:?}",
                b.text()
            );
            assert!(a.text().contains(key), "{at}: CLI text {:?}", a.text());
            assert_eq!(a.text(), b.text(), "{at}: the backends disagree");
            assert_eq!(a.words.words, b.words.words, "{at}: boxes differ");
        }
        // Recall against the true text, like the corpus test for the CLI.
        let text = lib.get_screen_text(&e.image).unwrap();
        let (found, total) = word_recall(&e.truth, &text);
        assert!(
            found as f64 / total as f64 >= 0.85,
            "{name}: in-process recall {found}/{total}: {text:?}"
        );
    }
}

#[test]
fn in_process_find_text_and_wait_for_text() {
    let lib = tesseract_only(Backend::InProcess);
    let e = corpus("dialog");
    let re = compile("geographic").unwrap();
    let (boxes, stats) = lib.find_text_with_stats(&e.image, &re).unwrap();
    assert!(!boxes.is_empty());
    assert_eq!(stats.killed, 0, "an in-process call is never killed");
    assert_eq!(
        stats.read + stats.not_started,
        lib.config().variants.len(),
        "{stats:?}"
    );
    let cli_boxes = tesseract_only(Backend::Cli)
        .find_text(&e.image, &re)
        .unwrap();
    assert!(
        cli_boxes.iter().any(|c| boxes
            .iter()
            .any(|b| (b.left, b.top, b.width, b.height) == (c.left, c.top, c.width, c.height))),
        "no common box: in-process {boxes:?}, CLI {cli_boxes:?}"
    );

    let e = corpus("huge");
    let dir = tempfile::tempdir().unwrap();
    let mut source = || -> Result<RgbImage, OcrError> { Ok(e.image.clone()) };
    let m = lib
        .wait_for_text_str(
            &mut source,
            "quick brown fox",
            Duration::from_secs(60),
            dir.path(),
        )
        .unwrap();
    assert_eq!(m.attempts, 1);
    assert!(!m.boxes.is_empty());
}

#[test]
fn in_process_missing_language_names_the_debian_package() {
    let mut cfg = OcrConfig::default();
    cfg.tesseract.backend = Backend::InProcess;
    cfg.tesseract.lang = "eng+xyz".into();
    let err = Ocr::new(cfg).unwrap_err();
    assert!(matches!(err, OcrError::LibTesseractInit { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("tesseract-ocr-xyz"), "{msg}");
}
