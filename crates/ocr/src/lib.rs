//! Screenshots to text: in-process preprocessing and tesseract, with wait-for-text and word boxes.
//!
//! tesseract runs as the `tesseract` program by default ([`Backend::Cli`]); the cargo feature
//! `libtesseract` adds `Backend::InProcess`, libtesseract linked into the process.
//!
//! ```no_run
//! use machinist_ocr::{load_image, Ocr, OcrConfig};
//! let ocr = Ocr::new(OcrConfig::default())?;
//! let screen = load_image("screen.png".as_ref())?;
//! println!("{}", ocr.get_screen_text(&screen)?);
//! # Ok::<(), machinist_ocr::OcrError>(())
//! ```

#[cfg(feature = "bench")]
pub mod bench;
pub mod console;
pub mod corpus;
mod error;
mod image_io;
#[cfg(feature = "libtesseract")]
mod libtesseract;
pub mod metrics;
mod ocr;
pub mod preprocess;
pub mod tesseract;
mod tsv;
mod wait;

pub use console::{read_console, ConsoleFont, ConsoleRead};
pub use error::OcrError;
pub use image_io::{decode_image, encode_pgm, encode_png, load_image, write_gray_png, write_png};
pub use ocr::{Ocr, OcrConfig, RaceStats, VariantText};
pub use preprocess::{default_variants, Filter, Gray, Reader, Step, Variant};
pub use tesseract::{Backend, TesseractConfig};
pub use tsv::{assemble, parse_tsv, WordBox, Words};
pub use wait::{compile, same_screen, Match, ScreenSource};
