//! `cargo run --release -p machinist-guest --features bench --example bench-boot [-- RUNS]`: the
//! boot benchmark that `cargo xtask bench boot` runs (prints `bench boot: ...` lines).

fn main() {
    let runs = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let cache = machinist_guest::ImageCache::from_env();
    match machinist_guest::bench::run_boot_bench(&cache, runs, machinist_guest::Progress::Lines) {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
        }
        Err(e) => {
            eprintln!("bench boot failed: {e}");
            std::process::exit(1);
        }
    }
}
