//! `machinist build-images`: build (or reuse) the guest images the bundled tests boot, with
//! progress, so that the first test run does not pay for them.

use std::time::Instant;

use machinist_guest::{bundled_specs, ImageCache, Progress};

use crate::{EXIT_PASS, EXIT_USAGE};

/// Ensures every image of [`bundled_specs`] is in the cache (`MACHINIST_CACHE_DIR`, ...),
/// rebuilding them if `rebuild`. Prints one line per image; exit 0, or 2 naming the image that
/// could not be built.
pub fn build_bundled(rebuild: bool) -> u8 {
    let cache = ImageCache::from_env().rebuild(rebuild);
    let total = Instant::now();
    for (role, spec) in bundled_specs() {
        let name = spec.name();
        let cached = !rebuild && matches!(cache.lookup(&spec), Ok(Some(_)));
        let t0 = Instant::now();
        match cache.ensure(&spec, Progress::Bar) {
            Ok(img) => {
                let how = if cached { "cached" } else { "built" };
                eprintln!(
                    "machinist: image {name} ({role}): {how} in {:.1} s: {}",
                    t0.elapsed().as_secs_f64(),
                    img.dir.display()
                );
            }
            Err(e) => {
                eprintln!("machinist: image {name} ({role}) could not be built: {e}");
                return EXIT_USAGE;
            }
        }
    }
    eprintln!(
        "machinist: images ready in {:.1} s (cache: {})",
        total.elapsed().as_secs_f64(),
        cache.images_dir().display()
    );
    EXIT_PASS
}
