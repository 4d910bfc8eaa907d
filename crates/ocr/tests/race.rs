//! The variant race kills the losers (its own test binary: no other test spawns tesseract here).

use machinist_ocr::bench::{default_corpus_dir, load_corpus};
use machinist_ocr::{compile, Ocr, OcrConfig};

fn tesseract_children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            stat.contains("(tesseract)") && after.split_whitespace().nth(1) == Some(me.as_str())
        })
        .count()
}

#[test]
fn variants_run_concurrently_and_the_losers_are_killed() {
    // Tesseract only, so the race is real.
    let mut cfg = OcrConfig::default();
    cfg.variants
        .retain(|v| v.reader == machinist_ocr::Reader::Tesseract);
    cfg.parallelism = cfg.variants.len();
    let ocr = Ocr::new(cfg).unwrap();
    let e = load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == "dialog")
        .unwrap();
    let all = ocr.get_screen_text_variants(&e.image).unwrap();
    assert_eq!(all.len(), ocr.config().variants.len());
    let boxes = ocr
        .find_text(&e.image, &compile("geographic").unwrap())
        .unwrap();
    assert!(!boxes.is_empty());
    assert_eq!(
        tesseract_children(),
        0,
        "no tesseract process is left running"
    );
}
