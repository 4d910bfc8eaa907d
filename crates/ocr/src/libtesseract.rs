//! The in-process backend (cargo feature `libtesseract`): libtesseract through the `tesseract`
//! crate. Initialised engines are pooled, so a language model is loaded once per engine rather
//! than once per call; each call takes an idle engine (or makes one), reads one preprocessed
//! image and gives the engine back.
//!
//! It reads the same grayscale image, with the same language, page segmentation mode and
//! `-c` settings, as the CLI backend, and returns the same TSV (`TessBaseAPI::GetTSVText`, which
//! is what `tesseract ... tsv` prints), so the same parser turns it into word boxes.

use std::os::raw::c_int;
use std::sync::Mutex;

use image::GrayImage;
use tesseract::{PageSegMode, Tesseract};

use crate::{OcrError, TesseractConfig};

/// The header line the CLI's TSV renderer prints before `GetTSVText`'s rows.
const TSV_HEADER: &str =
    "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n";

// OpenMP's per-thread controls, from libgomp (Debian's libtesseract is built with OpenMP).
// tesseract asks for teams of 4 threads (`num_threads(4)` in its LSTM code); with dynamic
// adjustment on, the calling thread's nthreads setting caps that. This is the in-process
// equivalent of the CLI backend's `OMP_THREAD_LIMIT`, which OpenMP reads only at process start.
#[link(name = "gomp")]
extern "C" {
    fn omp_set_dynamic(dynamic_threads: c_int);
    fn omp_set_num_threads(num_threads: c_int);
}

/// At most `n` OpenMP threads for parallel regions started by the calling thread.
fn limit_openmp_threads(n: u32) {
    let n = c_int::try_from(n.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: both take an int and only set the calling thread's OpenMP control variables
    // (libgomp makes a per-thread copy for threads it did not create); no pointers involved.
    unsafe {
        omp_set_dynamic(1);
        omp_set_num_threads(n);
    }
}

/// Idle, initialised libtesseract engines for one language and set of settings.
pub(crate) struct EnginePool {
    lang: String,
    settings: Vec<(String, String)>,
    omp_threads: Option<u32>,
    idle: Mutex<Vec<Tesseract>>,
    /// Serialises `Init` (loading a model); recognition runs concurrently.
    creating: Mutex<()>,
}

impl std::fmt::Debug for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |v| v.len());
        f.debug_struct("EnginePool")
            .field("lang", &self.lang)
            .field("settings", &self.settings)
            .field("idle", &idle)
            .finish()
    }
}

/// libtesseract's version, e.g. `libtesseract 5.3.0 (in process)`.
pub(crate) fn version() -> String {
    format!(
        "libtesseract {} (in process)",
        tesseract::plumbing::version().to_string_lossy()
    )
}

/// The `tesseract` crate's name for a page segmentation mode number (`--psm N`).
pub(crate) fn page_seg_mode(psm: u8) -> Option<PageSegMode> {
    use PageSegMode::*;
    Some(match psm {
        0 => PsmOsdOnly,
        1 => PsmAutoOsd,
        2 => PsmAutoOnly,
        3 => PsmAuto,
        4 => PsmSingleColumn,
        5 => PsmSingleBlockVertText,
        6 => PsmSingleBlock,
        7 => PsmSingleLine,
        8 => PsmSingleWord,
        9 => PsmCircleWord,
        10 => PsmSingleChar,
        11 => PsmSparseText,
        12 => PsmSparseTextOsd,
        13 => PsmRawLine,
        _ => return None,
    })
}

impl EnginePool {
    /// Makes one engine (so a missing language model or a bad setting fails here, not at the
    /// first screenshot) and keeps it idle.
    pub(crate) fn new(cfg: &TesseractConfig) -> Result<EnginePool, OcrError> {
        if page_seg_mode(cfg.psm).is_none() {
            return Err(bad_psm(cfg.psm));
        }
        let pool = EnginePool {
            lang: cfg.lang.clone(),
            settings: cfg.settings.clone(),
            omp_threads: cfg.omp_threads,
            idle: Mutex::new(Vec::new()),
            creating: Mutex::new(()),
        };
        // libtesseract's Init succeeds when at least one of `a+b` loads; check each alone.
        if cfg.lang.contains('+') {
            for lang in cfg.lang.split('+') {
                Tesseract::new(None, Some(lang)).map_err(|e| init_error(lang, &e))?;
            }
        }
        let first = pool.create()?;
        pool.idle.lock().expect("engine pool lock").push(first);
        Ok(pool)
    }

    fn create(&self) -> Result<Tesseract, OcrError> {
        let _one_at_a_time = self.creating.lock().expect("engine creation lock");
        // datapath None: TESSDATA_PREFIX, else the library's default (Debian:
        // /usr/share/tesseract-ocr/5/tessdata), as the CLI does.
        let mut engine =
            Tesseract::new(None, Some(&self.lang)).map_err(|e| init_error(&self.lang, &e))?;
        let debug = ("debug_file".to_string(), "/dev/null".to_string());
        for (k, v) in std::iter::once(&debug).chain(&self.settings) {
            engine = engine.set_variable(k, v).map_err(|e| {
                OcrError::Config(format!(
                    "libtesseract rejected the setting `{k}={v}` ({e}): it is unknown, or can \
                     only be set at initialisation; remove it from TesseractConfig::settings \
                     or use Backend::Cli"
                ))
            })?;
        }
        Ok(engine)
    }

    /// Reads a grayscale image with page segmentation mode `psm`; returns tesseract's TSV.
    pub(crate) fn recognize(
        &self,
        img: &GrayImage,
        variant: &str,
        psm: u8,
    ) -> Result<String, OcrError> {
        let mode = page_seg_mode(psm).ok_or_else(|| bad_psm(psm))?;
        let failed = |step: &str, detail: String| OcrError::LibTesseractFailed {
            variant: variant.to_string(),
            step: step.to_string(),
            detail,
        };
        let (w, h) = img.dimensions();
        let (width, height) = match (i32::try_from(w), i32::try_from(h)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => return Err(failed("setting the image", format!("{w}x{h} is too large"))),
        };
        let idle = self.idle.lock().expect("engine pool lock").pop();
        let mut engine = match idle {
            Some(e) => e,
            None => self.create()?,
        };
        engine.set_page_seg_mode(mode);
        if let Some(n) = self.omp_threads {
            limit_openmp_threads(n);
        }
        // 8-bit gray, rows packed: exactly the PGM the CLI backend writes to tesseract's stdin.
        let mut engine = engine
            .set_frame(img.as_raw(), width, height, 1, width)
            .map_err(|e| failed("setting the image", e.to_string()))?
            .recognize()
            .map_err(|e| failed("recognising", e.to_string()))?;
        // Page 0, as the CLI's renderer asks for its first (only) image.
        let rows = engine
            .get_tsv_text(0)
            .map_err(|e| failed("getting the TSV text", e.to_string()))?;
        self.idle.lock().expect("engine pool lock").push(engine);
        Ok(format!("{TSV_HEADER}{rows}"))
    }
}

fn init_error(lang: &str, e: &tesseract::InitializeError) -> OcrError {
    OcrError::LibTesseractInit {
        lang: lang.to_string(),
        packages: lang
            .split('+')
            .map(|l| format!("tesseract-ocr-{l}"))
            .collect::<Vec<_>>()
            .join(" "),
        detail: e.to_string(),
    }
}

fn bad_psm(psm: u8) -> OcrError {
    OcrError::Config(format!(
        "page segmentation mode {psm} does not exist (tesseract knows 0-13); fix \
         TesseractConfig::psm or the variant's psm"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_psm_of_the_cli_has_a_mode() {
        assert!((0..=13).all(|p| page_seg_mode(p).is_some()));
        assert_eq!(page_seg_mode(11), Some(PageSegMode::PsmSparseText));
        assert_eq!(page_seg_mode(6), Some(PageSegMode::PsmSingleBlock));
        assert_eq!(page_seg_mode(14), None);
    }

    #[test]
    fn missing_language_names_the_debian_package() {
        let cfg = TesseractConfig {
            lang: "xyz".into(),
            ..Default::default()
        };
        let err = EnginePool::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("tesseract-ocr-xyz"), "{err}");
    }

    #[test]
    fn unknown_setting_is_a_config_error() {
        let mut cfg = TesseractConfig::default();
        cfg.settings
            .push(("no_such_setting_here".into(), "1".into()));
        let err = EnginePool::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("no_such_setting_here"), "{err}");
    }

    #[test]
    fn version_names_libtesseract() {
        assert!(version().starts_with("libtesseract 5."), "{}", version());
    }
}
