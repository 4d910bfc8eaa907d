//! Runs the OCR benchmark:
//! `cargo run --release -p machinist-ocr --features bench --example bench -- [corpus_dir]`.
//! This is what `cargo xtask bench ocr` calls.

fn main() -> std::process::ExitCode {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(machinist_ocr::corpus::default_corpus_dir, Into::into);
    match machinist_ocr::bench::run(&dir) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench ocr: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
