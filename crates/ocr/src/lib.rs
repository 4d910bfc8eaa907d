//! Screenshots to text: in-process preprocessing and tesseract, with wait-for-text and word boxes.
