//! Writes every tesseract variant's preprocessed image as PNG, for looking at what tesseract
//! sees: `dump_variants SCREEN.png OUT_DIR`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = args.as_slice() else {
        return Err("usage: dump_variants SCREEN.png OUT_DIR".into());
    };
    let img = machinist_ocr::load_image(Path::new(input))?;
    std::fs::create_dir_all(out)?;
    for v in machinist_ocr::default_variants() {
        if v.reader == machinist_ocr::Reader::Tesseract {
            let path = Path::new(out).join(format!("{}.png", v.name));
            machinist_ocr::write_gray_png(&v.apply(&img), &path)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
