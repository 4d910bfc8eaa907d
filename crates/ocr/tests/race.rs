//! The variant race kills the losers (its own test binary: no other test spawns tesseract here).

use machinist_ocr::corpus::{default_corpus_dir, load_corpus};
use machinist_ocr::{compile, Ocr, OcrConfig, RaceStats, Reader};

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
    // Tesseract variants only, all started at once, so the race is real.
    let mut cfg = OcrConfig::default();
    cfg.variants.retain(|v| v.reader == Reader::Tesseract);
    cfg.parallelism = cfg.variants.len();
    let n = cfg.variants.len();
    assert!(n >= 2, "a race needs two tesseract variants");
    let ocr = Ocr::new(cfg).unwrap();
    let e = load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == "dialog")
        .unwrap();
    let re = compile("geographic").unwrap();
    // Without a pattern every variant is read to the end, and each has the word: whichever
    // finishes first wins.
    let all = ocr.read_all(&e.image).unwrap();
    assert_eq!(all.len(), n);
    for v in &all {
        assert!(re.is_match(v.text()), "{}: {:?}", v.variant, v.text());
    }
    // The variants take 0.4-0.7 s each here and differ by tens to hundreds of milliseconds,
    // so when the first one matches the others are still running and must be killed (not
    // waited for). Only if all of them finished within the same few milliseconds would none
    // be killed; allow three races for that, so a loaded machine cannot make this flaky, while
    // a race that never kills fails every time.
    let mut seen: Vec<RaceStats> = Vec::new();
    for _ in 0..3 {
        let (boxes, stats) = ocr.find_text_with_stats(&e.image, &re).unwrap();
        assert!(!boxes.is_empty());
        assert_eq!(
            stats.read + stats.killed + stats.not_started,
            n,
            "{stats:?}"
        );
        assert!(stats.read >= 1, "the winner was read: {stats:?}");
        assert_eq!(
            tesseract_children(),
            0,
            "no tesseract process is left behind"
        );
        seen.push(stats);
        if stats.killed >= 1 {
            break;
        }
    }
    assert!(
        seen.iter().any(|s| s.killed >= 1),
        "no losing variant was killed in {} races: {seen:?}",
        seen.len()
    );
}
