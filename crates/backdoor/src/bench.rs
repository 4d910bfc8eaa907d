//! Benchmark: our protocol against the NixOS protocol ([`crate::nixos`]) on the same connected
//! guest shell, interleaved command by command so both see the same conditions.
//!
//! `cargo xtask bench backdoor` boots a guest, connects its main console as a [`Shell`] and calls
//! [`run`], which prints lines like
//! `bench backdoor: true_ms ours=1.20 baseline=48.00 ratio=40.00 baseline_kind=competitor`
//! (ratio > 1 = ours better; the baseline is another implementation's protocol, not ours with a
//! part turned off).

use std::time::{Duration, Instant};

use crate::error::ShellError;
use crate::shell::Shell;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Commands per latency series (`true`, `/bin/true`).
    pub iterations: usize,
    /// Rounds of the mixed workload (three commands each).
    pub mixed_rounds: usize,
    /// Size of the throughput command's output, in MiB (`head -c <N>M /dev/zero`).
    pub throughput_mib: usize,
    /// Throughput runs per protocol (median reported; 0 skips the throughput metric).
    pub throughput_runs: usize,
    /// Commands used to count guest processes per command.
    pub process_count_runs: usize,
    /// The mixed workload, cycled.
    pub mixed: Vec<String>,
    /// Bench name in the printed lines.
    pub name: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            iterations: 200,
            mixed_rounds: 30,
            throughput_mib: 50,
            throughput_runs: 3,
            process_count_runs: 20,
            mixed: MIXED.iter().map(|s| s.to_string()).collect(),
            name: "backdoor".to_owned(),
        }
    }
}

/// One compared metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Metric name, e.g. `true_ms`.
    pub name: String,
    /// Our protocol's value.
    pub ours: f64,
    /// The NixOS protocol's value.
    pub baseline: f64,
    /// > 1 means ours is better (baseline/ours for latencies, ours/baseline for throughput).
    pub ratio: f64,
}

/// All metrics of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Bench name.
    pub name: String,
    /// The metrics, in print order.
    pub metrics: Vec<Metric>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.metrics {
            writeln!(
                f,
                "bench {}: {} ours={:.2} baseline={:.2} ratio={:.2} baseline_kind=competitor",
                self.name, m.name, m.ours, m.baseline, m.ratio
            )?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of `v` (nearest rank).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The default mixed workload.
pub const MIXED: [&str; 3] = [
    "systemctl is-active multi-user.target",
    "test -e /etc/hostname",
    "cat /etc/os-release",
];

const WAIT: Duration = Duration::from_secs(600);

async fn ours(shell: &mut Shell, cmd: &str) -> Result<(f64, Vec<u8>), ShellError> {
    let t = Instant::now();
    let out = shell.execute(cmd, Some(WAIT), &mut |_| {}).await?;
    Ok((ms(t.elapsed()), out.stdout))
}

async fn baseline(shell: &mut Shell, cmd: &str) -> Result<(f64, Vec<u8>), ShellError> {
    let t = Instant::now();
    let out = shell.execute_nixos(cmd, None, WAIT).await?;
    Ok((ms(t.elapsed()), out.stdout))
}

/// Interleaved latency series of `cmds` (cycled) for both protocols: (ours, baseline) in ms.
async fn series(
    shell: &mut Shell,
    cmds: &[&str],
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), ShellError> {
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let cmd = cmds[i % cmds.len()];
        let (ta, oa) = ours(shell, cmd).await?;
        let (tb, ob) = baseline(shell, cmd).await?;
        if oa != ob {
            return Err(shell.desync(format!(
                "bench: the two protocols disagree on the output of `{cmd}`"
            )));
        }
        a.push(ta);
        b.push(tb);
    }
    Ok((a, b))
}

/// The guest's last created pid (a builtin read; the reading command's own fork counts).
async fn last_pid(shell: &mut Shell) -> Result<i64, ShellError> {
    let out = shell
        .execute(
            "read -r _ _ _ _ p </proc/loadavg; echo \"$p\"",
            Some(WAIT),
            &mut |_| {},
        )
        .await?;
    out.stdout_lossy()
        .trim()
        .parse()
        .map_err(|_| shell.desync("bench: cannot read the last pid from /proc/loadavg"))
}

/// Guest processes created per command, averaged over `n` runs of `cmd`, for (ours, baseline).
async fn processes(shell: &mut Shell, cmd: &str, n: usize) -> Result<(f64, f64), ShellError> {
    let p0 = last_pid(shell).await?;
    for _ in 0..n {
        ours(shell, cmd).await?;
    }
    let p1 = last_pid(shell).await?;
    for _ in 0..n {
        baseline(shell, cmd).await?;
    }
    let p2 = last_pid(shell).await?;
    // Each last_pid call forks one subshell itself.
    let per = |d: i64| (d - 1) as f64 / n as f64;
    Ok((per(p1 - p0), per(p2 - p1)))
}

fn latency(name: &str, ours: &[f64], base: &[f64], metrics: &mut Vec<Metric>) {
    for (suffix, q) in [("", 0.5), ("_p95", 0.95)] {
        let (o, b) = (quantile(ours, q), quantile(base, q));
        metrics.push(Metric {
            name: format!("{name}{suffix}_ms"),
            ours: o,
            baseline: b,
            ratio: b / o,
        });
    }
}

/// `runs` throughput runs of `cmd` (which prints `bytes` bytes), ours then the NixOS protocol's,
/// in MB/s.
async fn throughput(
    shell: &mut Shell,
    cmd: &str,
    bytes: f64,
    runs: usize,
    ta: &mut Vec<f64>,
    tb: &mut Vec<f64>,
) -> Result<(), ShellError> {
    for _ in 0..runs {
        let (t, out) = ours(shell, cmd).await?;
        if out.len() as f64 != bytes {
            return Err(shell.desync(format!("bench: `{cmd}` returned {} bytes", out.len())));
        }
        ta.push(bytes / 1e6 / (t / 1000.0));
        let (t, out) = baseline(shell, cmd).await?;
        if out.len() as f64 != bytes {
            return Err(shell.desync(format!(
                "bench: `{cmd}` (NixOS) returned {} bytes",
                out.len()
            )));
        }
        tb.push(bytes / 1e6 / (t / 1000.0));
    }
    Ok(())
}

/// Run the benchmark on a connected shell, print the report lines to stdout and return them.
pub async fn run(shell: &mut Shell, opts: &BenchOptions) -> Result<BenchReport, ShellError> {
    let mut metrics = Vec::new();
    // Warm-up (page cache, TCG translation).
    series(shell, &["true", "/bin/true"], 10).await?;

    let (a, b) = series(shell, &["true"], opts.iterations).await?;
    latency("true", &a, &b, &mut metrics);
    let (a, b) = series(shell, &["/bin/true"], opts.iterations).await?;
    latency("bin_true", &a, &b, &mut metrics);
    let mixed: Vec<&str> = opts.mixed.iter().map(String::as_str).collect();
    let (a, b) = series(shell, &mixed, opts.mixed_rounds * mixed.len()).await?;
    latency("mixed", &a, &b, &mut metrics);

    // `head -c <N>M`, spelled in bytes so that busybox's head accepts it too.
    let cmd = format!("head -c {} /dev/zero", opts.throughput_mib * 1024 * 1024);
    let bytes = (opts.throughput_mib * 1024 * 1024) as f64;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    // The whole output is measured: keep all of it.
    let limit = shell.output_limit();
    shell.set_output_limit(limit.max(bytes as usize));
    let measured = throughput(shell, &cmd, bytes, opts.throughput_runs, &mut ta, &mut tb).await;
    shell.set_output_limit(limit);
    measured?;
    if opts.throughput_runs > 0 {
        let (o, bl) = (quantile(&ta, 0.5), quantile(&tb, 0.5));
        metrics.push(Metric {
            name: "mb_per_s".into(),
            ours: o,
            baseline: bl,
            ratio: o / bl,
        });
    }

    for (name, cmd) in [("procs_true", "true"), ("procs_bin_true", "/bin/true")] {
        let (o, bl) = processes(shell, cmd, opts.process_count_runs).await?;
        metrics.push(Metric {
            name: name.into(),
            ours: o,
            baseline: bl,
            ratio: bl / o.max(1e-9),
        });
    }

    let report = BenchReport {
        name: opts.name.clone(),
        metrics,
    };
    print!("{report}");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.95), 5.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn a_line_names_its_baseline_a_competitor() {
        let report = BenchReport {
            name: "backdoor".into(),
            metrics: vec![Metric {
                name: "true_ms".into(),
                ours: 1.2,
                baseline: 48.0,
                ratio: 40.0,
            }],
        };
        assert_eq!(
            report.to_string(),
            "bench backdoor: true_ms ours=1.20 baseline=48.00 ratio=40.00 baseline_kind=competitor\n"
        );
    }
}
