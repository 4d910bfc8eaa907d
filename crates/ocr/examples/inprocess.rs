//! Time per image of the in-process backend (feature `libtesseract`) against the CLI backend on
//! corpus images: one tesseract variant (`read_variant`, the first tesseract variant) and all
//! tesseract variants concurrently (`read_all`), preprocessing included, median of RUNS:
//! `cargo run --release -p machinist-ocr --features libtesseract --example inprocess [RUNS] [IMAGE...]`
//! Prints `<image> <variant> cli=<s> inprocess=<s> same_text=<bool> | all: cli=<s> inprocess=<s>`.

use std::time::Instant;

use machinist_ocr::corpus::{default_corpus_dir, load_corpus};
use machinist_ocr::{Backend, Ocr, OcrConfig, OcrError, Reader};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), OcrError> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let names: Vec<String> = args.collect();
    let make = |backend| {
        let mut cfg = OcrConfig::default();
        cfg.variants.retain(|v| v.reader == Reader::Tesseract);
        cfg.tesseract.backend = backend;
        Ocr::new(cfg)
    };
    let cli = make(Backend::Cli)?;
    let t = Instant::now();
    let lib = make(Backend::InProcess)?;
    println!(
        "{} vs {}: first engine (model load) {:.3} s",
        cli.tesseract_version(),
        lib.tesseract_version(),
        t.elapsed().as_secs_f64()
    );
    for e in load_corpus(&default_corpus_dir())? {
        if !names.is_empty() && !names.contains(&e.name) {
            continue;
        }
        let variant = &cli.config().variants[0];
        let mut times = [Vec::new(), Vec::new()];
        let mut all_times = [Vec::new(), Vec::new()];
        let mut texts = [String::new(), String::new()];
        for _ in 0..runs {
            for (k, ocr) in [&cli, &lib].into_iter().enumerate() {
                let t = Instant::now();
                texts[k] = ocr.read_variant(&e.image, variant)?.words.text;
                times[k].push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                ocr.read_all(&e.image)?;
                all_times[k].push(t.elapsed().as_secs_f64());
            }
        }
        let [c, l] = times;
        let [ac, al] = all_times;
        println!(
            "{} {} cli={:.3} inprocess={:.3} same_text={} | all: cli={:.3} inprocess={:.3}",
            e.name,
            variant.name,
            median(c),
            median(l),
            texts[0] == texts[1],
            median(ac),
            median(al)
        );
    }
    Ok(())
}
