//! `wait_for_text`: fresh screenshots with backoff until a variant's text matches, skipping OCR
//! when the screen has not changed, and saving evidence when the deadline passes.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::RgbImage;
use regex::Regex;

use crate::ocr::VariantText;
use crate::tsv::WordBox;
use crate::{write_png, Ocr, OcrError};

/// Something that produces screenshots (the driver implements it with QMP `screendump`).
pub trait ScreenSource {
    /// Takes a fresh screenshot.
    fn grab(&mut self) -> Result<RgbImage, OcrError>;
}

impl<F: FnMut() -> Result<RgbImage, OcrError>> ScreenSource for F {
    fn grab(&mut self) -> Result<RgbImage, OcrError> {
        self()
    }
}

/// A successful `wait_for_text`.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The variant whose text matched first.
    pub variant: String,
    /// The matched text (the regex's whole match).
    pub matched: String,
    /// Where on the screen: one box per match in that variant's text.
    pub boxes: Vec<WordBox>,
    /// The full text of the matching variant.
    pub text: String,
    /// How many screenshots were OCR'd (unchanged screens are not).
    pub attempts: u32,
    /// How many screenshots were taken.
    pub screenshots: u32,
    /// Time from the call to the match.
    pub elapsed: Duration,
}

/// Compiles a pattern, turning a bad one into [`OcrError::InvalidRegex`].
pub fn compile(pattern: &str) -> Result<Regex, OcrError> {
    Regex::new(pattern).map_err(|e| OcrError::InvalidRegex {
        pattern: pattern.to_string(),
        source: Box::new(e),
    })
}

/// Whether two screenshots show the same thing. A blinking text-mode cursor (a change at most
/// 3 pixels tall and 18 wide) does not count as a change.
pub fn same_screen(a: &RgbImage, b: &RgbImage) -> bool {
    if a.dimensions() != b.dimensions() {
        return false;
    }
    if a.as_raw() == b.as_raw() {
        return true;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in a.enumerate_pixels() {
        if *p != *b.get_pixel(x, y) {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    y1 - y0 < 3 && x1 - x0 < 18
}

impl Ocr {
    /// Like [`Ocr::wait_for_text`], taking the pattern as a string: an invalid pattern is an
    /// error before any screenshot is taken.
    pub fn wait_for_text_str(
        &self,
        source: &mut dyn ScreenSource,
        pattern: &str,
        timeout: Duration,
        failure_dir: &Path,
    ) -> Result<Match, OcrError> {
        let re = compile(pattern)?;
        self.wait_for_text(source, &re, timeout, failure_dir)
    }

    /// Waits until `re` matches the text of some variant on a fresh screenshot.
    ///
    /// Each attempt runs the variants concurrently and stops at the first match (killing the
    /// other tesseract processes). Between attempts it sleeps with exponential backoff
    /// (`OcrConfig::retry_initial` doubling up to `retry_max`) and skips OCR when the screen is
    /// unchanged. At least one attempt is made even with a zero timeout. On timeout the last
    /// screenshot (`ocr-<ms>-screen.png`) and every variant's text (`ocr-<ms>-<variant>.txt`)
    /// are written to `failure_dir`, and the error says where.
    pub fn wait_for_text(
        &self,
        source: &mut dyn ScreenSource,
        re: &Regex,
        timeout: Duration,
        failure_dir: &Path,
    ) -> Result<Match, OcrError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let (initial, max) = (self.config().retry_initial, self.config().retry_max);
        let mut delay = initial;
        let (mut attempts, mut screenshots) = (0u32, 0u32);
        let mut last: Option<(RgbImage, Vec<Option<VariantText>>)> = None;
        loop {
            let img = source.grab()?;
            screenshots += 1;
            let unchanged = last
                .as_ref()
                .is_some_and(|(prev, _)| same_screen(prev, &img));
            if !unchanged {
                attempts += 1;
                let race = self.race(&img, Some(re))?;
                if let Some(i) = race.winner {
                    let vt = race.results[i].as_ref().expect("winner has a result");
                    let matched = re
                        .find(vt.text())
                        .map_or(String::new(), |m| m.as_str().to_string());
                    tracing::debug!(variant = %vt.variant, attempts, "wait_for_text matched");
                    return Ok(Match {
                        variant: vt.variant.clone(),
                        matched,
                        boxes: vt.words.find(re),
                        text: vt.words.text.clone(),
                        attempts,
                        screenshots,
                        elapsed: start.elapsed(),
                    });
                }
                last = Some((img, race.results));
                delay = initial;
            }
            let now = Instant::now();
            if now >= deadline {
                let (img, texts) = last.expect("at least one attempt was made");
                let saved = save_failure(failure_dir, &img, &texts, &self.config().variants);
                let last_texts: Vec<String> = texts
                    .iter()
                    .flatten()
                    .map(|t| format!("{:?}", t.text()))
                    .collect();
                tracing::info!(
                    "Last OCR attempt failed. Text was: [{}]",
                    last_texts.join(", ")
                );
                let last_text = texts
                    .iter()
                    .flatten()
                    .map(|t| t.text().split_whitespace().collect::<Vec<_>>().join(" "))
                    .max_by_key(|t| t.split(' ').count())
                    .unwrap_or_default();
                return Err(OcrError::Timeout {
                    pattern: re.as_str().to_string(),
                    timeout,
                    attempts,
                    saved,
                    last_text,
                });
            }
            std::thread::sleep(delay.min(deadline - now));
            delay = (delay * 2).min(max);
        }
    }
}

fn save_failure(
    dir: &Path,
    img: &RgbImage,
    texts: &[Option<VariantText>],
    variants: &[crate::Variant],
) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let stem = format!("ocr-{ms}");
    let result = (|| -> Result<(), OcrError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OcrError::io("cannot create directory", dir, e))?;
        write_png(img, &dir.join(format!("{stem}-screen.png")))?;
        for (v, t) in variants.iter().zip(texts) {
            let path = dir.join(format!("{stem}-{}.txt", v.name));
            let text = t.as_ref().map_or("(not read)\n", |t| t.text());
            std::fs::write(&path, text).map_err(|e| OcrError::io("cannot write", &path, e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => format!("{}/{stem}-*", dir.display()),
        Err(e) => format!("(nowhere: saving them failed: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_blink_is_not_a_change_but_a_character_is() {
        let a = RgbImage::new(720, 400);
        let mut cursor = a.clone();
        for x in 9..18 {
            for y in 14..16 {
                cursor.put_pixel(x, y, image::Rgb([170, 170, 170]));
            }
        }
        assert!(same_screen(&a, &cursor));
        let mut glyph = a.clone();
        for y in 2..12 {
            glyph.put_pixel(30, y, image::Rgb([170, 170, 170]));
        }
        assert!(!same_screen(&a, &glyph));
        assert!(!same_screen(&a, &RgbImage::new(640, 400)));
    }

    #[test]
    fn invalid_regex_names_the_pattern() {
        let err = compile("login(").unwrap_err().to_string();
        assert!(err.contains("\"login(\""), "{err}");
    }
}
