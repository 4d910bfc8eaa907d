//! Run the switch benchmark: `cargo run --release -p machinist-netsim --features bench --example bench_switch`.

fn main() {
    if let Err(e) = machinist_netsim::bench::run() {
        eprintln!("bench switch failed: {e}");
        std::process::exit(1);
    }
}
