//! Decoding screenshots (PPM from QMP `screendump`, or PNG) and writing PNG, all in memory.

use std::io::Cursor;
use std::path::Path;

use image::{GrayImage, ImageFormat, RgbImage};

use crate::OcrError;

/// Decodes a screenshot held in memory: PPM (P6, what QMP `screendump` writes) or PNG.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, OcrError> {
    let format = if bytes.starts_with(b"P6") || bytes.starts_with(b"P5") || bytes.starts_with(b"P3")
    {
        ImageFormat::Pnm
    } else {
        image::guess_format(bytes).map_err(|source| OcrError::Decode {
            what: "screenshot bytes".into(),
            source,
        })?
    };
    image::load_from_memory_with_format(bytes, format)
        .map(|img| img.into_rgb8())
        .map_err(|source| OcrError::Decode {
            what: "screenshot bytes".into(),
            source,
        })
}

/// Reads a PPM or PNG screenshot from a file.
pub fn load_image(path: &Path) -> Result<RgbImage, OcrError> {
    let bytes = std::fs::read(path).map_err(|e| OcrError::io("cannot read screenshot", path, e))?;
    decode_image(&bytes).map_err(|e| match e {
        OcrError::Decode { source, .. } => OcrError::Decode {
            what: path.display().to_string(),
            source,
        },
        other => other,
    })
}

/// Writes an RGB image as PNG (no netpbm or ImageMagick involved).
pub fn write_png(img: &RgbImage, path: &Path) -> Result<(), OcrError> {
    img.save_with_format(path, ImageFormat::Png)
        .map_err(|source| OcrError::Encode {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a grayscale image as PNG.
pub fn write_gray_png(img: &GrayImage, path: &Path) -> Result<(), OcrError> {
    img.save_with_format(path, ImageFormat::Png)
        .map_err(|source| OcrError::Encode {
            path: path.to_path_buf(),
            source,
        })
}

/// Encodes a grayscale image as binary PGM (P5): no compression, the cheapest format for
/// handing an image to tesseract on stdin.
pub fn encode_pgm(img: &GrayImage) -> Vec<u8> {
    let header = format!("P5\n{} {}\n255\n", img.width(), img.height());
    let mut out = Vec::with_capacity(header.len() + img.as_raw().len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(img.as_raw());
    out
}

/// Encodes an RGB image as PNG in memory.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, OcrError> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|source| OcrError::Encode {
            path: "<memory>".into(),
            source,
        })?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_p6_from_memory() {
        let mut ppm = b"P6\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let img = decode_image(&ppm).unwrap();
        assert_eq!(img.dimensions(), (2, 1));
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 0, 255]);
    }

    #[test]
    fn png_round_trip() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 80, y as u8 * 100, 7]));
        let png = encode_png(&img).unwrap();
        assert_eq!(decode_image(&png).unwrap(), img);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode_image(b"not an image").unwrap_err();
        assert!(err.to_string().contains("PPM"), "{err}");
    }

    #[test]
    fn pgm_header() {
        let img = GrayImage::from_raw(2, 2, vec![1, 2, 3, 4]).unwrap();
        assert_eq!(encode_pgm(&img), b"P5\n2 2\n255\n\x01\x02\x03\x04");
    }
}
