//! Accuracy on the committed corpus of real guest screenshots, and the behaviour of
//! `wait_for_text` / `find_text` on them (real tesseract, no VM needed).

use std::time::{Duration, Instant};

use image::RgbImage;
use machinist_ocr::corpus::{default_corpus_dir, load_corpus};
use machinist_ocr::metrics::word_recall;
use machinist_ocr::{compile, Ocr, OcrConfig, OcrError};

fn ocr() -> Ocr {
    Ocr::new(OcrConfig::default()).expect("tesseract is installed (Debian package tesseract-ocr)")
}

#[test]
fn corpus_word_recall_is_at_least_95_percent() {
    let ocr = ocr();
    let (mut found, mut total) = (0, 0);
    let mut report = String::new();
    for e in load_corpus(&default_corpus_dir()).unwrap() {
        let best = ocr.read_best(&e.image).unwrap();
        let (f, t) = word_recall(&e.truth, best.text());
        report.push_str(&format!(
            "{:<8} {:<9} {f:>3}/{t:<3} {:.3}\n",
            e.name,
            best.variant,
            f as f64 / t as f64
        ));
        found += f;
        total += t;
        insta::assert_snapshot!(format!("text_{}", e.name), best.text());
    }
    let overall = found as f64 / total as f64;
    eprintln!("{report}overall  {found}/{total} {overall:.3}");
    assert!(
        overall >= 0.95,
        "overall word recall {overall:.3} < 0.95:\n{report}"
    );
}

#[test]
fn tesseract_alone_keeps_its_recall() {
    // The tesseract variants matter for screens that are not text consoles; keep them honest.
    let mut cfg = OcrConfig::default();
    cfg.variants
        .retain(|v| v.reader == machinist_ocr::Reader::Tesseract);
    cfg.variants.truncate(1);
    let ocr = Ocr::new(cfg).unwrap();
    let (mut found, mut total) = (0, 0);
    for e in load_corpus(&default_corpus_dir()).unwrap() {
        let (f, t) = word_recall(&e.truth, &ocr.get_screen_text(&e.image).unwrap());
        found += f;
        total += t;
    }
    let recall = found as f64 / total as f64;
    eprintln!("tesseract-only recall {recall:.3}");
    assert!(recall >= 0.85, "tesseract-only recall fell to {recall:.3}");
}

#[test]
fn wait_for_text_finds_every_phrase() {
    let ocr = ocr();
    let dir = tempfile::tempdir().unwrap();
    for e in load_corpus(&default_corpus_dir()).unwrap() {
        let Some(phrase) = &e.phrase else { continue };
        let mut source = || -> Result<RgbImage, OcrError> { Ok(e.image.clone()) };
        let m = ocr
            .wait_for_text_str(&mut source, phrase, Duration::from_secs(30), dir.path())
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert!(!m.boxes.is_empty(), "{}: no box for {phrase}", e.name);
        assert_eq!(m.attempts, 1, "{}", e.name);
    }
}

#[test]
fn find_text_gives_cell_exact_boxes_on_a_console() {
    let ocr = ocr();
    let login = load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == "login")
        .unwrap();
    let boxes = ocr
        .find_text(&login.image, &compile("testvm login:").unwrap())
        .unwrap();
    assert_eq!(boxes.len(), 1);
    // Fourth row (index 3) of the 9x16 grid, columns 0..13.
    let b = &boxes[0];
    assert_eq!(
        (b.left, b.top, b.width, b.height),
        (0, 3 * 16, 13 * 9, 16),
        "{b:?}"
    );
    assert!(ocr
        .find_text(&login.image, &compile("password").unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn timeout_saves_the_screen_and_every_variant_and_skips_unchanged_screens() {
    let ocr = ocr();
    let e = load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == "large")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut grabs = 0;
    let mut source = || -> Result<RgbImage, OcrError> {
        grabs += 1;
        Ok(e.image.clone())
    };
    let start = Instant::now();
    let err = ocr
        .wait_for_text_str(
            &mut source,
            "this text is not on the screen",
            Duration::from_millis(1500),
            dir.path(),
        )
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20));
    let OcrError::Timeout {
        attempts,
        ref saved,
        ref last_text,
        ..
    } = err
    else {
        panic!("{err}")
    };
    // The error quotes what the screen said instead.
    assert!(!last_text.is_empty());
    assert!(
        err.to_string().contains("the screen last read: \""),
        "{err}"
    );
    assert_eq!(attempts, 1, "an unchanged screen is read once");
    assert!(grabs > 1, "fresh screenshots are taken");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(saved.ends_with("-*"), "{saved}");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("-screen.png")),
        "{files:?}"
    );
    for v in &ocr.config().variants {
        assert!(
            files
                .iter()
                .any(|f| f.ends_with(&format!("-{}.txt", v.name))),
            "{} missing: {files:?}",
            v.name
        );
    }
}

#[test]
fn invalid_regex_fails_before_any_screenshot() {
    let ocr = ocr();
    let mut source = || -> Result<RgbImage, OcrError> { panic!("no screenshot may be taken") };
    let err = ocr
        .wait_for_text_str(
            &mut source,
            "login(",
            Duration::from_secs(60),
            std::path::Path::new("/nonexistent"),
        )
        .unwrap_err();
    assert!(matches!(err, OcrError::InvalidRegex { .. }), "{err}");
}

#[test]
fn missing_tesseract_names_the_debian_package() {
    let mut cfg = OcrConfig::default();
    cfg.tesseract.program = "/nonexistent/tesseract".into();
    let err = Ocr::new(cfg).unwrap_err().to_string();
    assert!(err.contains("tesseract-ocr"), "{err}");
    let mut cfg = OcrConfig::default();
    cfg.tesseract.lang = "eng+xyz".into();
    let err = Ocr::new(cfg).unwrap_err().to_string();
    assert!(
        err.contains("tesseract-ocr-xyz") && err.contains("eng"),
        "{err}"
    );
    let mut cfg = OcrConfig::default();
    cfg.variants.clear();
    assert!(matches!(Ocr::new(cfg), Err(OcrError::Config(_))));
}

/// The `huge` screen uses Lat15-VGA16 (console-setup) with doubled rows, which the default VGA
/// font does not cover; given that font as PSF, the console reader reads it exactly. Runs when
/// the font is on this machine (console-setup-linux, which `cargo xtask deps` installs, or
/// generate.sh's download cache). Under CI a missing font fails the test; elsewhere it says loudly
/// that it was skipped and what to install.
#[test]
fn a_guest_font_given_as_psf_is_read_exactly() {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        "/usr/share/consolefonts/Lat15-VGA16.psf.gz".to_string(),
        format!(
            "{home}/.cache/machinist/ocr-corpus/root/usr/share/consolefonts/Lat15-VGA16.psf.gz"
        ),
    ];
    let Some(path) = candidates.iter().find(|p| std::path::Path::new(p).exists()) else {
        let why = "Lat15-VGA16.psf.gz not found: install the Debian package console-setup-linux \
                   (`cargo xtask deps` does)";
        assert!(!under_ci(), "{why}");
        eprintln!("SKIPPED (not under CI): {why}");
        return;
    };
    let psf = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap()
        .stdout;
    let mut cfg = OcrConfig::default();
    cfg.console_fonts
        .push(machinist_ocr::ConsoleFont::from_psf(&psf).unwrap());
    let ocr = Ocr::new(cfg).unwrap();
    let huge = load_corpus(&default_corpus_dir())
        .unwrap()
        .into_iter()
        .find(|e| e.name == "huge")
        .unwrap();
    let best = ocr.read_best(&huge.image).unwrap();
    assert_eq!(best.variant, "console");
    assert!(best.exact);
    assert_eq!(
        word_recall(&huge.truth, best.text()),
        (18, 18),
        "{}",
        best.text()
    );
}

#[test]
fn the_engine_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Ocr>();
}

/// True when `CI` is set to anything but empty or `false` (as `.ci/run` sets it).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}
