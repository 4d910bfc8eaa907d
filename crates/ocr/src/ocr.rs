//! The `Ocr` engine: runs preprocessing variants through tesseract, concurrently and with early
//! exit, and returns text and word boxes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::RgbImage;
use regex::Regex;

use crate::console::{read_console, ConsoleFont};
use crate::preprocess::{default_variants, Reader, Variant};
use crate::tesseract::{Backend, Canceller, TesseractConfig};
use crate::tsv::{assemble, parse_tsv, WordBox, Words};
use crate::{encode_pgm, OcrError};

/// Configuration of an [`Ocr`] engine.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrConfig {
    /// How tesseract is run.
    pub tesseract: TesseractConfig,
    /// Preprocessing variants, best first (see [`default_variants`]).
    pub variants: Vec<Variant>,
    /// How many tesseract processes run at once (default: available cores).
    pub parallelism: usize,
    /// `wait_for_text`: first pause between screenshots (doubles after each failed attempt).
    pub retry_initial: std::time::Duration,
    /// `wait_for_text`: longest pause between screenshots.
    pub retry_max: std::time::Duration,
    /// Console reader: the largest fraction of inked cells that may match no glyph before the
    /// screen is declared "not a text console in a known font".
    pub console_max_unknown: f32,
    /// Fonts the console reader tries, in order (default: the VGA BIOS font of our guests; add
    /// a guest's `setfont` font with [`ConsoleFont::from_psf`]).
    pub console_fonts: Vec<ConsoleFont>,
    /// `wait_for_text`/`find_text`: when the console reader read every cell exactly and the
    /// pattern is not there, skip the tesseract variants for that screenshot.
    pub trust_exact_console: bool,
}

impl Default for OcrConfig {
    fn default() -> Self {
        OcrConfig {
            tesseract: TesseractConfig::default(),
            variants: default_variants(),
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry_initial: std::time::Duration::from_millis(100),
            retry_max: std::time::Duration::from_secs(1),
            console_max_unknown: 0.05,
            console_fonts: vec![ConsoleFont::vga().clone()],
            trust_exact_console: true,
        }
    }
}

/// What one variant read on one screenshot.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantText {
    /// The variant's name.
    pub variant: String,
    /// Words, boxes (in screenshot pixels) and the assembled text.
    pub words: Words,
    /// False when the variant's reader does not apply to this screen (the console reader on a
    /// screen that is not a text console in a known font); the text is then empty.
    pub applicable: bool,
    /// True when the console reader matched every inked cell exactly.
    pub exact: bool,
}

impl VariantText {
    /// The recognised text, one screen row per line.
    pub fn text(&self) -> &str {
        &self.words.text
    }
}

/// What one variant race did (see [`Ocr::find_text_with_stats`]). Every variant is counted
/// once: `read + killed + not_started` is the number of variants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaceStats {
    /// Variants that were read to the end (the winner, and any that finished first or in time).
    pub read: usize,
    /// tesseract processes killed while still running because another variant had matched.
    pub killed: usize,
    /// Variants never started because another variant had matched (or the exact console reader
    /// showed the pattern is not on the screen).
    pub not_started: usize,
}

/// An OCR engine (cheap to clone; holds configuration, and with the in-process backend a
/// shared pool of initialised libtesseract engines).
#[derive(Debug, Clone)]
pub struct Ocr {
    config: OcrConfig,
    version: String,
    #[cfg(feature = "libtesseract")]
    engines: Option<std::sync::Arc<crate::libtesseract::EnginePool>>,
}

impl Ocr {
    /// Checks that tesseract runs (the CLI backend: the program starts and has the languages;
    /// the in-process backend: libtesseract loads the languages) and that at least one variant
    /// is configured. The error names the Debian package to install when something is missing.
    pub fn new(config: OcrConfig) -> Result<Ocr, OcrError> {
        if config.variants.is_empty() {
            return Err(OcrError::Config(
                "OcrConfig::variants is empty: configure at least one preprocessing variant".into(),
            ));
        }
        match config.tesseract.backend {
            Backend::Cli => Ok(Ocr {
                version: config.tesseract.check()?,
                config,
                #[cfg(feature = "libtesseract")]
                engines: None,
            }),
            #[cfg(feature = "libtesseract")]
            Backend::InProcess => {
                let pool = crate::libtesseract::EnginePool::new(&config.tesseract)?;
                Ok(Ocr {
                    version: crate::libtesseract::version(),
                    config,
                    engines: Some(std::sync::Arc::new(pool)),
                })
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OcrConfig {
        &self.config
    }

    /// tesseract's version line, e.g. `tesseract 5.3.0`, or `libtesseract 5.3.0 (in process)`
    /// with the in-process backend.
    pub fn tesseract_version(&self) -> &str {
        &self.version
    }

    /// Reads a screenshot with one variant.
    pub fn read_variant(&self, img: &RgbImage, variant: &Variant) -> Result<VariantText, OcrError> {
        self.read_cancellable(img, variant, &Canceller::new())?
            .ok_or_else(|| OcrError::Config("a fresh OCR call was cancelled".into()))
    }

    fn read_cancellable(
        &self,
        img: &RgbImage,
        variant: &Variant,
        cancel: &Canceller,
    ) -> Result<Option<VariantText>, OcrError> {
        if variant.reader == Reader::ConsoleFont {
            let max_unknown = self.config.console_max_unknown;
            let read = self
                .config
                .console_fonts
                .iter()
                .find_map(|f| read_console(img, f, max_unknown));
            return Ok(Some(match read {
                Some(r) => VariantText {
                    variant: variant.name.clone(),
                    exact: r.unknown == 0,
                    words: r.words,
                    applicable: true,
                },
                None => VariantText {
                    variant: variant.name.clone(),
                    words: Words::default(),
                    applicable: false,
                    exact: false,
                },
            }));
        }
        let prepared = variant.apply(img);
        let psm = variant.psm.unwrap_or(self.config.tesseract.psm);
        let tesseract = &self.config.tesseract;
        let tsv = match tesseract.backend {
            Backend::Cli => {
                tesseract.run_with_psm(&encode_pgm(&prepared), &variant.name, psm, cancel)?
            }
            #[cfg(feature = "libtesseract")]
            Backend::InProcess => {
                if cancel.is_cancelled() {
                    None
                } else {
                    let engines = self
                        .engines
                        .as_ref()
                        .expect("Ocr::new made the engine pool");
                    Some(engines.recognize(&prepared, &variant.name, psm)?)
                }
            }
        };
        let Some(tsv) = tsv else {
            return Ok(None);
        };
        let words = assemble(parse_tsv(&tsv, variant.scale())?);
        Ok(Some(VariantText {
            variant: variant.name.clone(),
            words,
            applicable: true,
            exact: false,
        }))
    }

    /// The text on a screenshot, read with the first variant that applies to it (the exact
    /// console reader on a VGA text console, else the first tesseract variant). One screen
    /// row per line, words separated by single spaces.
    pub fn get_screen_text(&self, img: &RgbImage) -> Result<String, OcrError> {
        Ok(self.read_best(img)?.words.text)
    }

    /// Like [`Ocr::get_screen_text`], with word boxes and the variant's name.
    pub fn read_best(&self, img: &RgbImage) -> Result<VariantText, OcrError> {
        let mut last = None;
        for v in &self.config.variants {
            let vt = self.read_variant(img, v)?;
            if vt.applicable {
                return Ok(vt);
            }
            last = Some(vt);
        }
        Ok(last.expect("Ocr::new checked that there is a variant"))
    }

    /// The text of every variant that applies to the screen (in configuration order), read
    /// concurrently.
    pub fn get_screen_text_variants(&self, img: &RgbImage) -> Result<Vec<String>, OcrError> {
        Ok(self
            .read_all(img)?
            .into_iter()
            .map(|v| v.words.text)
            .collect())
    }

    /// Every applicable variant's words and text (in configuration order), read concurrently.
    pub fn read_all(&self, img: &RgbImage) -> Result<Vec<VariantText>, OcrError> {
        let race = self.race(img, None)?;
        Ok(race
            .results
            .into_iter()
            .flatten()
            .filter(|v| v.applicable)
            .collect())
    }

    /// Where `re` matches on the screen: one box per match (the union of the words it touches,
    /// in screenshot pixels). Variants are tried concurrently; the first variant with a match
    /// wins and the others are killed. Empty when no variant finds it.
    pub fn find_text(&self, img: &RgbImage, re: &Regex) -> Result<Vec<WordBox>, OcrError> {
        Ok(self.find_text_with_stats(img, re)?.0)
    }

    /// [`Ocr::find_text`], also saying what the race did: how many variants were read, how
    /// many tesseract processes were killed because another variant had matched, and how many
    /// were never started.
    pub fn find_text_with_stats(
        &self,
        img: &RgbImage,
        re: &Regex,
    ) -> Result<(Vec<WordBox>, RaceStats), OcrError> {
        let race = self.race(img, Some(re))?;
        let boxes = race
            .winner
            .map(|i| {
                race.results[i]
                    .as_ref()
                    .expect("winner has a result")
                    .words
                    .find(re)
            })
            .unwrap_or_default();
        Ok((boxes, race.stats))
    }

    /// Runs the variants on up to `parallelism` threads. With `stop_at`, the first variant whose
    /// text matches wins and the still-running tesseract processes are killed.
    pub(crate) fn race(&self, img: &RgbImage, stop_at: Option<&Regex>) -> Result<Race, OcrError> {
        let variants = &self.config.variants;
        // In-process readers first: they take a millisecond and may make tesseract unnecessary.
        let mut early: Vec<Option<VariantText>> = vec![None; variants.len()];
        let mut exact_miss = false;
        for (i, v) in variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.reader == Reader::ConsoleFont)
        {
            let vt = self.read_variant(img, v)?;
            if let Some(re) = stop_at {
                if vt.applicable && re.is_match(vt.text()) {
                    early[i] = Some(vt);
                    return Ok(Race::new(early, Some(i), 0));
                }
                exact_miss |= vt.exact;
            }
            early[i] = Some(vt);
        }
        if exact_miss && self.config.trust_exact_console {
            return Ok(Race::new(early, None, 0));
        }
        let todo: Vec<usize> = (0..variants.len())
            .filter(|&i| variants[i].reader != Reader::ConsoleFont)
            .collect();
        let next = AtomicUsize::new(0);
        let cancel = Canceller::new();
        let results: Mutex<Vec<Option<VariantText>>> = Mutex::new(early);
        let winner: Mutex<Option<usize>> = Mutex::new(None);
        let first_error: Mutex<Option<OcrError>> = Mutex::new(None);
        let workers = self.config.parallelism.clamp(1, todo.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= todo.len() || cancel.is_cancelled() {
                        break;
                    }
                    let i = todo[k];
                    match self.read_cancellable(img, &variants[i], &cancel) {
                        Ok(Some(vt)) => {
                            let matched = stop_at.is_some_and(|re| re.is_match(vt.text()));
                            results.lock().expect("results lock")[i] = Some(vt);
                            if matched {
                                let mut w = winner.lock().expect("winner lock");
                                if w.is_none() {
                                    *w = Some(i);
                                    cancel.cancel();
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            first_error.lock().expect("error lock").get_or_insert(e);
                        }
                    }
                });
            }
        });
        let results = results.into_inner().expect("results lock");
        let winner = winner.into_inner().expect("winner lock");
        if winner.is_none() {
            if let Some(e) = first_error.into_inner().expect("error lock") {
                return Err(e);
            }
        }
        Ok(Race::new(results, winner, cancel.killed()))
    }
}

/// The outcome of running the variants on one screenshot.
#[derive(Debug)]
pub(crate) struct Race {
    /// Per variant (configuration order): its text, or `None` when it was cancelled.
    pub results: Vec<Option<VariantText>>,
    /// The index of the first variant that matched.
    pub winner: Option<usize>,
    /// What happened to each variant.
    pub stats: RaceStats,
}

impl Race {
    fn new(results: Vec<Option<VariantText>>, winner: Option<usize>, killed: usize) -> Race {
        let read = results.iter().flatten().count();
        let stats = RaceStats {
            read,
            killed,
            not_started: results.len().saturating_sub(read + killed),
        };
        Race {
            results,
            winner,
            stats,
        }
    }
}
