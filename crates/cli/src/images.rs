//! `machinist build-images`: build (or reuse) the guest images the bundled tests boot, with
//! progress, and (when warm start is on) the warm-start snapshot of each of their machines, so
//! that the first test run does not pay for them.

use std::time::Instant;

use machinist_guest::{bundled_specs, ImageCache, Progress};

use crate::args::RunArgs;
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
    if !machinist::warm::warm_start_from_env() {
        eprintln!("machinist: warm start is off (MACHINIST_WARM_START=0): no snapshots to build");
        return EXIT_PASS;
    }
    build_snapshots()
}

/// Builds (or reuses) the warm-start snapshot of every machine of every bundled test. A test
/// that cannot be declared here (e.g. no PostgREST binary yet) is skipped with a note: its
/// snapshots are then built by its first run.
fn build_snapshots() -> u8 {
    let total = Instant::now();
    for test in crate::bundled::tests() {
        let scratch = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("machinist: creating a scratch directory: {e}");
                return EXIT_USAGE;
            }
        };
        let decl = match (test.declare)(&RunArgs::for_test(&test.name)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!(
                    "machinist: snapshots of test {} skipped (its first run builds them): {e}",
                    test.name
                );
                continue;
            }
        };
        let run = decl
            .output_dir(scratch.path())
            .start()
            .and_then(|run| run.prepare_warm_start());
        match run {
            Ok(machines) => {
                for (machine, outcome) in machines {
                    match outcome {
                        machinist::Prepared::Snapshot { key } => eprintln!(
                            "machinist: snapshot of {}/{machine}: ready ({key})",
                            test.name
                        ),
                        machinist::Prepared::Cold { reason } => {
                            eprintln!("machinist: {}/{machine} boots cold: {reason}", test.name)
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("machinist: snapshots of test {} failed: {e}", test.name);
                return EXIT_USAGE;
            }
        }
    }
    eprintln!(
        "machinist: snapshots ready in {:.1} s (cache: {})",
        total.elapsed().as_secs_f64(),
        machinist::warm::snapshot_root().display()
    );
    EXIT_PASS
}
