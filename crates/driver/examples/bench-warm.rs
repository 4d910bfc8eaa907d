//! `cargo run --release -p machinist --example bench-warm [runs]`: warm start vs cold boot.
fn main() {
    let runs = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM lock");
    match machinist::warm_bench::run(runs) {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => {
            eprintln!("bench warm failed: {e}");
            std::process::exit(1);
        }
    }
}
