//! Screenshots to text: in-process preprocessing and tesseract, with wait-for-text and word boxes.

mod error;
mod image_io;

pub use error::OcrError;
pub use image_io::{decode_image, encode_pgm, encode_png, load_image, write_gray_png, write_png};
