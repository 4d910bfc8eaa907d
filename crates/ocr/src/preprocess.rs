//! In-process preprocessing: grayscale, upscaling, contrast normalisation, thresholding and
//! negation, combined into named [`Variant`]s. Variants are plain data: adding one is one line
//! in [`default_variants`] (or in your own `OcrConfig::variants`).

use image::{imageops, GrayImage, RgbImage};

/// How colour is turned into gray (always the first thing a variant does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gray {
    /// Rec. 601 luma: what the eye sees; dark blue text stays dark.
    Luma,
    /// The brightest of R, G and B: coloured text on black (blue, red, green) stays bright,
    /// which suits text consoles.
    MaxChannel,
}

/// Resampling filter for [`Step::Upscale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pixel replication: keeps glyphs sharp and blocky.
    Nearest,
    /// Bilinear.
    Triangle,
    /// Catmull-Rom bicubic (what NixOS asks ImageMagick for).
    CatmullRom,
    /// Lanczos with a 3-lobe window: the sharpest smooth filter.
    Lanczos3,
}

impl Filter {
    fn to_image(self) -> imageops::FilterType {
        match self {
            Filter::Nearest => imageops::FilterType::Nearest,
            Filter::Triangle => imageops::FilterType::Triangle,
            Filter::CatmullRom => imageops::FilterType::CatmullRom,
            Filter::Lanczos3 => imageops::FilterType::Lanczos3,
        }
    }
}

/// One preprocessing step on a grayscale image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Scale both dimensions by `factor` (e.g. 2.0) with `filter`. Word boxes are mapped back
    /// to screenshot coordinates automatically.
    Upscale {
        /// Scale factor (> 0).
        factor: f32,
        /// Resampling filter.
        filter: Filter,
    },
    /// Linear contrast stretch so that the darkest `clip` fraction of pixels maps to 0 and the
    /// brightest `clip` fraction to 255 (`clip` = 0.0 is a plain min/max stretch).
    Normalize {
        /// Fraction of pixels clipped at each end (0.0..0.5).
        clip: f32,
    },
    /// Binarise with Otsu's global threshold.
    Otsu,
    /// Binarise at a fixed level (pixels > level become white).
    Threshold(u8),
    /// Invert: dark text on light ground becomes light on dark and vice versa.
    Negate,
    /// Make the image dark text on a light background (what tesseract reads best): negates when
    /// most pixels are dark, as on a text console.
    DarkOnLight,
}

/// What reads a variant's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The tesseract CLI, on the preprocessed image.
    Tesseract,
    /// Exact glyph matching for VGA text-mode consoles ([`crate::console`]), on the raw
    /// screenshot (gray and steps are ignored). Not applicable to other screens.
    ConsoleFont,
}

/// A named preprocessing recipe. The name appears in results and in failure reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Short name, e.g. `"upscaled"`; used in file names, so keep it to `[a-z0-9-]`.
    pub name: String,
    /// What reads the image.
    pub reader: Reader,
    /// tesseract page segmentation mode for this variant (`None`: `TesseractConfig::psm`).
    /// 11 (sparse text) suits scattered GUI text, 6 (one uniform block) suits consoles.
    pub psm: Option<u8>,
    /// Gray conversion.
    pub gray: Gray,
    /// Steps applied in order after the gray conversion.
    pub steps: Vec<Step>,
}

impl Variant {
    /// A tesseract variant from its name, gray conversion and steps.
    pub fn new(name: &str, gray: Gray, steps: &[Step]) -> Variant {
        Variant {
            name: name.to_string(),
            reader: Reader::Tesseract,
            psm: None,
            gray,
            steps: steps.to_vec(),
        }
    }

    /// The same variant with its own tesseract page segmentation mode.
    pub fn with_psm(mut self, psm: u8) -> Variant {
        self.psm = Some(psm);
        self
    }

    /// The exact text-console reader (see [`Reader::ConsoleFont`]).
    pub fn console_font(name: &str) -> Variant {
        Variant {
            name: name.to_string(),
            reader: Reader::ConsoleFont,
            psm: None,
            gray: Gray::Luma,
            steps: Vec::new(),
        }
    }

    /// The overall scale factor of this variant (product of its upscales).
    pub fn scale(&self) -> f32 {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Upscale { factor, .. } => *factor,
                _ => 1.0,
            })
            .product()
    }

    /// Runs the recipe on a screenshot.
    pub fn apply(&self, img: &RgbImage) -> GrayImage {
        let mut g = to_gray(img, self.gray);
        for step in &self.steps {
            g = apply_step(g, step);
        }
        g
    }
}

const UP2: Step = Step::Upscale {
    factor: 2.0,
    filter: Filter::Lanczos3,
};

/// The default variants, best first: `get_screen_text` uses the first that applies to the
/// screen, `get_screen_text_variants` and `wait_for_text` use all of them (concurrently,
/// stopping at the first match). One line per variant.
///
/// `luma` (one text block, psm 6) is the best single tesseract variant on our corpus (word recall
/// 0.90 against 0.81 for the sparse-text variants); `upscaled` and `binary` use psm 11 (sparse
/// text, as NixOS does), which suits scattered GUI text, and add diversity to the race.
#[rustfmt::skip]
pub fn default_variants() -> Vec<Variant> {
    vec![
        Variant::console_font("console"),
        Variant::new("luma", Gray::Luma, &[UP2, Step::Normalize { clip: 0.01 }, Step::DarkOnLight]).with_psm(6),
        Variant::new("upscaled", Gray::MaxChannel, &[UP2, Step::Normalize { clip: 0.0 }, Step::DarkOnLight]),
        Variant::new("binary", Gray::MaxChannel, &[UP2, Step::Otsu, Step::DarkOnLight]),
    ]
}

/// Converts to gray.
pub fn to_gray(img: &RgbImage, gray: Gray) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity((w * h) as usize);
    match gray {
        Gray::Luma => out.extend(img.as_raw().chunks_exact(3).map(|p| {
            ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000)
                as u8
        })),
        Gray::MaxChannel => out.extend(
            img.as_raw()
                .chunks_exact(3)
                .map(|p| p[0].max(p[1]).max(p[2])),
        ),
    }
    GrayImage::from_raw(w, h, out).expect("buffer has w*h pixels")
}

fn apply_step(mut g: GrayImage, step: &Step) -> GrayImage {
    match *step {
        Step::Upscale { factor, filter } => {
            let w = ((g.width() as f32 * factor).round() as u32).max(1);
            let h = ((g.height() as f32 * factor).round() as u32).max(1);
            if (w, h) == g.dimensions() {
                return g;
            }
            imageops::resize(&g, w, h, filter.to_image())
        }
        Step::Normalize { clip } => {
            let (lo, hi) = percentiles(&histogram(&g), g.as_raw().len(), clip);
            if hi > lo {
                let lut: Vec<u8> = (0..=255u32)
                    .map(|v| {
                        let v = v.clamp(u32::from(lo), u32::from(hi));
                        ((v - u32::from(lo)) * 255 / u32::from(hi - lo)) as u8
                    })
                    .collect();
                map_pixels(&mut g, |v| lut[v as usize]);
            }
            g
        }
        Step::Otsu => {
            let t = otsu_level(&histogram(&g));
            map_pixels(&mut g, |v| if v > t { 255 } else { 0 });
            g
        }
        Step::Threshold(t) => {
            map_pixels(&mut g, |v| if v > t { 255 } else { 0 });
            g
        }
        Step::Negate => {
            map_pixels(&mut g, |v| 255 - v);
            g
        }
        Step::DarkOnLight => {
            let hist = histogram(&g);
            let dark: u64 = hist[..128].iter().sum();
            if dark * 2 > g.as_raw().len() as u64 {
                map_pixels(&mut g, |v| 255 - v);
            }
            g
        }
    }
}

fn map_pixels(g: &mut GrayImage, f: impl Fn(u8) -> u8) {
    for v in g.iter_mut() {
        *v = f(*v);
    }
}

/// The 256-bin histogram of a gray image.
pub fn histogram(g: &GrayImage) -> [u64; 256] {
    let mut h = [0u64; 256];
    for &v in g.as_raw() {
        h[v as usize] += 1;
    }
    h
}

fn percentiles(hist: &[u64; 256], total: usize, clip: f32) -> (u8, u8) {
    let cut = (total as f64 * f64::from(clip.clamp(0.0, 0.49))) as u64;
    let mut acc = 0;
    let mut lo = 0u8;
    for (v, &n) in hist.iter().enumerate() {
        acc += n;
        if acc > cut {
            lo = v as u8;
            break;
        }
    }
    acc = 0;
    let mut hi = 255u8;
    for (v, &n) in hist.iter().enumerate().rev() {
        acc += n;
        if acc > cut {
            hi = v as u8;
            break;
        }
    }
    (lo, hi)
}

/// Otsu's threshold: the level that maximises the between-class variance. Pixels above it
/// are foreground/background "bright".
pub fn otsu_level(hist: &[u64; 256]) -> u8 {
    let total: u64 = hist.iter().sum();
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(v, &n)| v as f64 * n as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0u64, 0f64, -1f64, 0u8);
    for (t, &n) in hist.iter().enumerate() {
        w0 += n;
        if w0 == 0 {
            continue;
        }
        let w1 = total - w0;
        if w1 == 0 {
            break;
        }
        sum0 += t as f64 * n as f64;
        let m0 = sum0 / w0 as f64;
        let m1 = (sum_all - sum0) / w1 as f64;
        let between = w0 as f64 * w1 as f64 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console_like() -> RgbImage {
        // Black screen with a 4x2 block of "text" in light gray and one blue pixel.
        let mut img = RgbImage::new(8, 4);
        for x in 2..6 {
            for y in 1..3 {
                img.put_pixel(x, y, image::Rgb([170, 170, 170]));
            }
        }
        img.put_pixel(0, 0, image::Rgb([0, 0, 170]));
        img
    }

    #[test]
    fn max_channel_keeps_blue_bright_luma_does_not() {
        let img = console_like();
        assert_eq!(to_gray(&img, Gray::MaxChannel).get_pixel(0, 0).0, [170]);
        assert_eq!(to_gray(&img, Gray::Luma).get_pixel(0, 0).0, [19]);
        assert_eq!(to_gray(&img, Gray::Luma).get_pixel(2, 1).0, [170]);
    }

    #[test]
    fn normalize_stretches_to_full_range() {
        let g = Variant::new("n", Gray::MaxChannel, &[Step::Normalize { clip: 0.0 }])
            .apply(&console_like());
        assert_eq!(g.get_pixel(2, 1).0, [255]);
        assert_eq!(g.get_pixel(7, 3).0, [0]);
    }

    #[test]
    fn dark_on_light_negates_a_console() {
        let v = Variant::new("d", Gray::Luma, &[Step::Otsu, Step::DarkOnLight]);
        let g = v.apply(&console_like());
        assert_eq!(g.get_pixel(7, 3).0, [255], "background becomes white");
        assert_eq!(g.get_pixel(2, 1).0, [0], "text becomes black");
        // Already dark-on-light: untouched.
        let again = Variant::new("d", Gray::Luma, &[Step::DarkOnLight])
            .apply(&image::DynamicImage::ImageLuma8(g.clone()).into_rgb8());
        assert_eq!(again, g);
    }

    #[test]
    fn otsu_splits_two_peaks() {
        let mut h = [0u64; 256];
        h[10] = 100;
        h[200] = 50;
        let t = otsu_level(&h);
        assert!((10..200).contains(&t), "{t}");
    }

    #[test]
    fn upscale_scales_dimensions_and_reports_scale() {
        let v = Variant::new(
            "u",
            Gray::Luma,
            &[Step::Upscale {
                factor: 2.0,
                filter: Filter::Lanczos3,
            }],
        );
        assert_eq!(v.apply(&console_like()).dimensions(), (16, 8));
        assert_eq!(v.scale(), 2.0);
    }

    #[test]
    fn negate_inverts() {
        let g = Variant::new("n", Gray::Luma, &[Step::Negate]).apply(&console_like());
        assert_eq!(g.get_pixel(7, 3).0, [255]);
    }
}
