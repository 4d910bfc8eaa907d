//! `cargo run --release -p machinist --example bench-backdoor`: our backdoor protocol vs the
//! NixOS protocol on a booted Debian guest.
fn main() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM lock");
    match machinist::backdoor_bench::run() {
        // The bench prints its lines as it finishes.
        Ok(_report) => {}
        Err(e) => {
            eprintln!("bench backdoor failed: {e}");
            std::process::exit(1);
        }
    }
}
