//! Sanity run of the benchmark against the host's bash (no VM):
//! `cargo run -p machinist-backdoor --example bench_local --release`.
//! Against a booted guest, `cargo xtask bench backdoor` calls `bench::run` on a booted Debian guest's main shell (crates/driver's backdoor_bench).

use machinist_backdoor::bench::{self, BenchOptions};
use machinist_backdoor::local::LocalShell;
use machinist_backdoor::{ConnectOptions, Shell};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_local, stream) = LocalShell::spawn(std::process::Stdio::null())?;
    let mut shell = Shell::connect(stream, ConnectOptions::new("local")).await?;
    let opts = BenchOptions {
        name: "backdoor-local".into(),
        ..BenchOptions::default()
    };
    bench::run(&mut shell, &opts).await?;
    Ok(())
}
