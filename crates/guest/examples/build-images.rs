//! Build (or reuse) the images the bundled tests need: `cargo run -p machinist-guest --example build-images [-- --rebuild] [names...]`.

use machinist_guest::{bundled_specs, ImageCache, Progress};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rebuild = args.iter().any(|a| a == "--rebuild");
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let cache = ImageCache::from_env().rebuild(rebuild);
    for (name, spec) in bundled_specs() {
        if !names.is_empty() && !names.iter().any(|n| *n == name) {
            continue;
        }
        let t = std::time::Instant::now();
        match cache.ensure(&spec, Progress::Lines) {
            Ok(img) => println!(
                "{name}: {} ({}) in {:.3} s",
                img.disk.display(),
                spec.name(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        }
    }
}
