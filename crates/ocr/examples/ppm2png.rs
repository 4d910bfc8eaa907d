//! Converts a QMP screendump (PPM) to PNG with machinist-ocr: `ppm2png in.ppm out.png`.
//! Used by tests/corpus/generate.sh.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: ppm2png IN.ppm OUT.png".into());
    };
    let img = machinist_ocr::load_image(Path::new(input))?;
    machinist_ocr::write_png(&img, Path::new(output))?;
    Ok(())
}
