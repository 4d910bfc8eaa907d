//! `cargo xtask bench ocr`: our pipeline against the NixOS one, run in the same process on the
//! committed corpus of real guest screenshots. Prints
//! `bench ocr: <metric> ours=<v> baseline=<v> ratio=<r> baseline_kind=competitor` (ratio > 1 means
//! ours is better; the baseline is another implementation, not ours with a part turned off).
//!
//! The baseline follows nixos-test-driver `machine/ocr.py` (see the crate README): the
//! screenshot is written as a PPM file; `get_screen_text` = one
//! `tesseract <ppm> - -c debug_file=/dev/null --psm 11` (their `--oem 2` fails with Debian's
//! LSTM-only English model, so it is left out); `get_screen_text_variants` = that plus two
//! `/usr/bin/convert` preprocessings (their exact arguments, positive and negated) each read
//! by tesseract, one after another (their pool has `max(1, cores/4)` workers, i.e. one on
//! machines with fewer than 8 cores); `wait_for_text` = screenshot + all three variants per
//! attempt until one matches.
//!
//! Latencies are means per screenshot. The `tesseract_only_*` metrics leave our exact console
//! reader out and compare our tesseract variants alone with theirs (baseline values are the
//! same runs as above).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::corpus::{load_corpus, CorpusEntry};
use crate::metrics::word_recall;
use crate::{compile, Ocr, OcrConfig, OcrError};

/// ImageMagick's `convert`, by full path (machines may have an unrelated `convert` on PATH).
pub const CONVERT: &str = "/usr/bin/convert";

/// The NixOS pipeline, reimplemented faithfully for comparison.
#[derive(Debug, Clone)]
pub struct NixosBaseline {
    /// Scratch directory for the PPM and PNG files their pipeline writes.
    pub dir: PathBuf,
}

impl NixosBaseline {
    fn tesseract(&self, image: &Path) -> Result<String, OcrError> {
        let out = Command::new("tesseract")
            .arg(image)
            .args(["-", "-c", "debug_file=/dev/null", "--psm", "11"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OcrError::TesseractMissing {
                program: "tesseract".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(OcrError::TesseractFailed {
                variant: "nixos".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
                command: format!("tesseract {} - --psm 11", image.display()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into())
    }

    fn convert(&self, ppm: &Path, negate: bool) -> Result<PathBuf, OcrError> {
        let dest = self.dir.join(if negate {
            "screen.negative.png"
        } else {
            "screen.positive.png"
        });
        let mut args: Vec<&str> = vec![
            "-filter",
            "Catrom",
            "-density",
            "72",
            "-resample",
            "300",
            "-contrast",
            "-normalize",
            "-despeckle",
            "-type",
            "grayscale",
            "-sharpen",
            "1",
            "-posterize",
            "3",
        ];
        if negate {
            args.push("-negate");
        }
        args.extend(["-gamma", "100", "-blur", "1x65535"]);
        let out = Command::new(CONVERT)
            .args(&args)
            .arg(ppm)
            .arg(&dest)
            .output()
            .map_err(|e| {
                OcrError::io(
                    "cannot run ImageMagick (Debian package imagemagick)",
                    CONVERT,
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(OcrError::Screenshot(format!(
                "{CONVERT} failed: {}; install the Debian package imagemagick",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(dest)
    }

    /// Their `screenshot`: the screen as a PPM file (as QEMU's screendump writes it).
    pub fn screendump(&self, img: &RgbImage) -> Result<PathBuf, OcrError> {
        let ppm = self.dir.join("screen.ppm");
        let mut bytes = format!("P6\n{} {}\n255\n", img.width(), img.height()).into_bytes();
        bytes.extend_from_slice(img.as_raw());
        std::fs::write(&ppm, bytes).map_err(|e| OcrError::io("cannot write", &ppm, e))?;
        Ok(ppm)
    }

    /// Their `get_screen_text`.
    pub fn get_screen_text(&self, img: &RgbImage) -> Result<String, OcrError> {
        let ppm = self.screendump(img)?;
        self.tesseract(&ppm)
    }

    /// Their `get_screen_text_variants`: raw, positive, negative, one after another.
    pub fn get_screen_text_variants(&self, img: &RgbImage) -> Result<Vec<String>, OcrError> {
        let ppm = self.screendump(img)?;
        let pos = self.convert(&ppm, false)?;
        let neg = self.convert(&ppm, true)?;
        Ok(vec![
            self.tesseract(&ppm)?,
            self.tesseract(&pos)?,
            self.tesseract(&neg)?,
        ])
    }

    /// Their `wait_for_text`: variants on a fresh screenshot each second until one matches.
    pub fn wait_for_text(
        &self,
        grab: &mut dyn FnMut() -> RgbImage,
        re: &regex::Regex,
        timeout: Duration,
    ) -> Result<bool, OcrError> {
        let deadline = Instant::now() + timeout;
        loop {
            let texts = self.get_screen_text_variants(&grab())?;
            if texts.iter().any(|t| re.is_match(t)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// One metric: ours against the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Metric name, e.g. `single_latency_s`.
    pub name: String,
    /// Our value.
    pub ours: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// Ratio, oriented so that > 1 means ours is better.
    pub ratio: f64,
}

impl Metric {
    fn lower_is_better(name: &str, ours: f64, baseline: f64) -> Metric {
        Metric {
            name: name.into(),
            ours,
            baseline,
            ratio: baseline / ours.max(1e-9),
        }
    }
    fn higher_is_better(name: &str, ours: f64, baseline: f64) -> Metric {
        Metric {
            name: name.into(),
            ours,
            baseline,
            ratio: ours / baseline.max(1e-9),
        }
    }

    /// `bench ocr: <metric> ours=<v> baseline=<v> ratio=<r> baseline_kind=competitor` (the
    /// baseline is the NixOS pipeline, another implementation).
    pub fn line(&self) -> String {
        format!(
            "bench ocr: {} ours={:.3} baseline={:.3} ratio={:.2} baseline_kind=competitor",
            self.name, self.ours, self.baseline, self.ratio
        )
    }
}

fn recall_of(entries: &[CorpusEntry], texts: &[String]) -> f64 {
    let (mut f, mut t) = (0, 0);
    for (e, text) in entries.iter().zip(texts) {
        let (a, b) = word_recall(&e.truth, text);
        f += a;
        t += b;
    }
    f as f64 / t.max(1) as f64
}

/// Runs the whole comparison on a corpus directory and prints one line per metric
/// (per-image details go to stderr). Needs tesseract and, for the baseline, ImageMagick.
pub fn run(corpus_dir: &Path) -> Result<Vec<Metric>, OcrError> {
    let entries = load_corpus(corpus_dir)?;
    let ocr = Ocr::new(OcrConfig::default())?;
    let scratch = std::env::temp_dir().join(format!("machinist-ocr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| OcrError::io("cannot create directory", &scratch, e))?;
    let nixos = NixosBaseline {
        dir: scratch.clone(),
    };
    let n = entries.len() as f64;
    let mut metrics = Vec::new();

    // Single call.
    let (mut ours_t, mut base_t, mut ours_x, mut base_x) = (0.0, 0.0, Vec::new(), Vec::new());
    for e in &entries {
        let t = Instant::now();
        ours_x.push(ocr.get_screen_text(&e.image)?);
        let o = t.elapsed().as_secs_f64();
        let t = Instant::now();
        base_x.push(nixos.get_screen_text(&e.image)?);
        let b = t.elapsed().as_secs_f64();
        eprintln!(
            "bench ocr: {:<8} single   ours {o:.3}s baseline {b:.3}s",
            e.name
        );
        ours_t += o;
        base_t += b;
    }
    metrics.push(Metric::lower_is_better(
        "single_latency_s",
        ours_t / n,
        base_t / n,
    ));
    metrics.push(Metric::higher_is_better(
        "single_recall",
        recall_of(&entries, &ours_x),
        recall_of(&entries, &base_x),
    ));

    // Three variants.
    let (mut ours_t, mut base_t, mut ours_x, mut base_x) = (0.0, 0.0, Vec::new(), Vec::new());
    for e in &entries {
        let t = Instant::now();
        ours_x.push(ocr.get_screen_text_variants(&e.image)?.join("\n"));
        let o = t.elapsed().as_secs_f64();
        let t = Instant::now();
        base_x.push(nixos.get_screen_text_variants(&e.image)?.join("\n"));
        let b = t.elapsed().as_secs_f64();
        eprintln!(
            "bench ocr: {:<8} variants ours {o:.3}s baseline {b:.3}s",
            e.name
        );
        ours_t += o;
        base_t += b;
    }
    metrics.push(Metric::lower_is_better(
        "variants_latency_s",
        ours_t / n,
        base_t / n,
    ));
    metrics.push(Metric::higher_is_better(
        "variants_recall",
        recall_of(&entries, &ours_x),
        recall_of(&entries, &base_x),
    ));

    // wait_for_text for a phrase that is on the screen.
    let timeout = Duration::from_secs(20);
    let (mut ours_t, mut base_t, mut ours_ok, mut base_ok, mut count) =
        (0.0, 0.0, 0u32, 0u32, 0u32);
    for e in &entries {
        let Some(phrase) = &e.phrase else { continue };
        let re = compile(phrase)?;
        count += 1;
        let mut source = || -> Result<RgbImage, OcrError> { Ok(e.image.clone()) };
        let t = Instant::now();
        let ours = ocr.wait_for_text(&mut source, &re, timeout, &scratch.join("failures"));
        let o = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let base = nixos.wait_for_text(&mut || e.image.clone(), &re, timeout)?;
        let b = t.elapsed().as_secs_f64();
        eprintln!(
            "bench ocr: {:<8} wait     ours {o:.3}s ({}) baseline {b:.3}s ({})",
            e.name,
            if ours.is_ok() { "found" } else { "NOT found" },
            if base { "found" } else { "NOT found" }
        );
        ours_ok += u32::from(ours.is_ok());
        base_ok += u32::from(base);
        ours_t += o;
        base_t += b;
    }
    let c = f64::from(count.max(1));
    metrics.push(Metric::lower_is_better(
        "wait_for_text_latency_s",
        ours_t / c,
        base_t / c,
    ));
    metrics.push(Metric::higher_is_better(
        "wait_for_text_found",
        f64::from(ours_ok),
        f64::from(base_ok),
    ));

    // Like for like: only our tesseract variants (no console reader) against theirs.
    let mut cfg = OcrConfig::default();
    cfg.variants
        .retain(|v| v.reader == crate::Reader::Tesseract);
    let tess = Ocr::new(cfg)?;
    let (mut single_t, mut multi_t, mut single_x, mut multi_x) = (0.0, 0.0, Vec::new(), Vec::new());
    for e in &entries {
        let t = Instant::now();
        single_x.push(tess.get_screen_text(&e.image)?);
        single_t += t.elapsed().as_secs_f64();
        let t = Instant::now();
        multi_x.push(tess.get_screen_text_variants(&e.image)?.join("\n"));
        multi_t += t.elapsed().as_secs_f64();
    }
    let (mut wait_t, mut wait_ok) = (0.0, 0u32);
    for e in &entries {
        let Some(phrase) = &e.phrase else { continue };
        let re = compile(phrase)?;
        let mut source = || -> Result<RgbImage, OcrError> { Ok(e.image.clone()) };
        let t = Instant::now();
        let found = tess.wait_for_text(&mut source, &re, timeout, &scratch.join("failures"));
        wait_t += t.elapsed().as_secs_f64();
        wait_ok += u32::from(found.is_ok());
    }
    let baselines = metrics.clone();
    let base = |name: &str| {
        baselines
            .iter()
            .find(|m| m.name == name)
            .map_or(0.0, |m| m.baseline)
    };
    metrics.push(Metric::lower_is_better(
        "tesseract_only_single_latency_s",
        single_t / n,
        base("single_latency_s"),
    ));
    metrics.push(Metric::higher_is_better(
        "tesseract_only_single_recall",
        recall_of(&entries, &single_x),
        base("single_recall"),
    ));
    metrics.push(Metric::lower_is_better(
        "tesseract_only_variants_latency_s",
        multi_t / n,
        base("variants_latency_s"),
    ));
    metrics.push(Metric::higher_is_better(
        "tesseract_only_variants_recall",
        recall_of(&entries, &multi_x),
        base("variants_recall"),
    ));
    metrics.push(Metric::lower_is_better(
        "tesseract_only_wait_for_text_latency_s",
        wait_t / c,
        base("wait_for_text_latency_s"),
    ));
    metrics.push(Metric::higher_is_better(
        "tesseract_only_wait_for_text_found",
        f64::from(wait_ok),
        base("wait_for_text_found"),
    ));

    let _ = std::fs::remove_dir_all(&scratch);
    for m in &metrics {
        println!("{}", m.line());
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_baseline_a_competitor() {
        let m = Metric::lower_is_better("single_latency_s", 0.5, 2.0);
        assert_eq!(
            m.line(),
            "bench ocr: single_latency_s ours=0.500 baseline=2.000 ratio=4.00 baseline_kind=competitor"
        );
    }
}
