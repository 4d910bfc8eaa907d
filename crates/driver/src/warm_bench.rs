//! `cargo xtask bench warm`: time from QEMU spawn to the backdoor greeting, and to the node's
//! units active, for a warm start (restore from the snapshot) and a cold boot, in the same run.
//! The cold boot is our own start with warm start turned off, so the lines say
//! `baseline_kind=ablation`.
//!
//! ```no_run
//! for line in machinist::warm_bench::run(3).unwrap() {
//!     println!("{line}");
//! }
//! ```

use std::time::Instant;

use machinist_guest::{NodeConfig, ServiceSpec};

use crate::error::Result;
use crate::log::Logger;
use crate::test::Test;

/// One measured start.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// `start()` (QEMU spawn) to the first command answered (greeting + preamble; for a warm
    /// start also the identity step).
    pub greeting_s: f64,
    /// `start()` to the node's service active.
    pub ready_s: f64,
}

fn node() -> NodeConfig {
    NodeConfig::new()
        .service(ServiceSpec::new("bench-listener", "/usr/bin/nc -lk 7070"))
        .open_tcp_port(7070)
}

/// Starts one machine warm or cold and measures it.
pub fn sample(warm: bool) -> Result<Sample> {
    let mut out = None;
    Test::new(if warm { "bench-warm" } else { "bench-cold" })
        .node("bench", node())
        .warm_start(warm)
        .logger(Logger::silent())
        .script(|t| {
            let m = t.machine("bench");
            let t0 = Instant::now();
            m.start()?;
            m.succeed("true")?;
            let greeting_s = t0.elapsed().as_secs_f64();
            m.wait_for_unit("bench-listener.service", 120)?;
            out = Some(Sample {
                greeting_s,
                ready_s: t0.elapsed().as_secs_f64(),
            });
            Ok(())
        })
        .run()?;
    Ok(out.expect("the script ran"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One printed line: `bench warm: <metric> ours=<warm> baseline=<cold> ratio=<cold/warm>
/// baseline_kind=ablation`.
fn line(metric: &str, warm: f64, cold: f64) -> String {
    format!(
        "bench warm: {metric} ours={warm:.2} baseline={cold:.2} ratio={:.2} baseline_kind=ablation",
        cold / warm.max(1e-9)
    )
}

/// Runs `runs` warm and `runs` cold starts, interleaved (after one unmeasured warm start that
/// builds the snapshot if needed), and returns the bench lines
/// `bench warm: greeting_s ours=<warm> baseline=<cold> ratio=<cold/warm> baseline_kind=ablation`
/// and the same for `ready_s`. Hold the VM lock (`machinist_qemu::VmTestLock`) while calling it.
pub fn run(runs: usize) -> Result<Vec<String>> {
    let runs = runs.max(1);
    sample(true)?;
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        warm.push(sample(true)?);
        cold.push(sample(false)?);
    }
    let metric = |name: &str, f: fn(&Sample) -> f64| {
        line(
            name,
            median(warm.iter().map(f).collect()),
            median(cold.iter().map(f).collect()),
        )
    };
    Ok(vec![
        metric("greeting_s", |s| s.greeting_s),
        metric("ready_s", |s| s.ready_s),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_cold_boot_an_ablation() {
        assert_eq!(
            line("greeting_s", 2.0, 10.0),
            "bench warm: greeting_s ours=2.00 baseline=10.00 ratio=5.00 baseline_kind=ablation"
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
