//! Wall-time reporting per phase, so CI time can be tracked.

use std::time::Instant;

/// Runs `f` as the phase `name`, printing its wall time whether it succeeds or fails.
pub fn phase<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("xtask: phase {name}: start");
    let t0 = Instant::now();
    let r = f();
    let outcome = if r.is_ok() { "ok" } else { "FAILED" };
    eprintln!(
        "xtask: phase {name}: {outcome} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    r
}
