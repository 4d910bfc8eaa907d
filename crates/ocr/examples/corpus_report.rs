//! Per image and per variant: word recall and latency on the corpus (for tuning variants).
//! `cargo run -p machinist-ocr --example corpus_report -- [corpus_dir]`

use std::path::PathBuf;
use std::time::Instant;

use machinist_ocr::metrics::word_recall;
use machinist_ocr::{load_image, Ocr, OcrConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"),
        PathBuf::from,
    );
    let mut cfg = OcrConfig::default();
    if let Ok(psm) = std::env::var("OCR_PSM") {
        cfg.tesseract.psm = psm.parse()?;
    }
    if std::env::var_os("TESSERACT_ONLY").is_some() {
        cfg.variants
            .retain(|v| v.reader == machinist_ocr::Reader::Tesseract);
    }
    let ocr = Ocr::new(cfg)?;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    entries.sort();
    let n = ocr.config().variants.len();
    let mut tot = vec![(0usize, 0usize, 0f64); n];
    let mut any = (0usize, 0usize);
    for png in entries {
        let truth = std::fs::read_to_string(png.with_extension("txt"))?;
        let img = load_image(&png)?;
        let mut union = String::new();
        for (i, v) in ocr.config().variants.iter().enumerate() {
            let t = Instant::now();
            let vt = ocr.read_variant(&img, v)?;
            let dt = t.elapsed().as_secs_f64();
            let (f, all) = word_recall(&truth, vt.text());
            tot[i].0 += f;
            tot[i].1 += all;
            tot[i].2 += dt;
            union.push_str(vt.text());
            println!(
                "{:<10} {:<10} recall {:>3}/{:<3} {:.3}s",
                png.file_stem().unwrap().to_string_lossy(),
                v.name,
                f,
                all,
                dt
            );
            if std::env::var_os("SHOW").is_some() {
                println!("{}", vt.text());
            }
        }
        let (f, all) = word_recall(&truth, &union);
        any.0 += f;
        any.1 += all;
    }
    for (i, v) in ocr.config().variants.iter().enumerate() {
        println!(
            "TOTAL {:<10} recall {:.3} time {:.2}s",
            v.name,
            tot[i].0 as f64 / tot[i].1 as f64,
            tot[i].2
        );
    }
    println!(
        "TOTAL any-variant recall {:.3}",
        any.0 as f64 / any.1 as f64
    );
    Ok(())
}
