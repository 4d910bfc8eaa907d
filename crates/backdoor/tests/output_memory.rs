//! Host memory while a guest command writes without end (`yes`) under the default output limit.
//! Its own test binary so that the process's peak RSS belongs to this test alone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use machinist_backdoor::local::LocalShell;
use machinist_backdoor::{ConnectOptions, Shell, DEFAULT_OUTPUT_LIMIT};

/// A field of /proc/self/status in KiB (e.g. `VmHWM`, the peak resident set size).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test]
async fn yes_for_ten_seconds_keeps_host_memory_bounded() {
    let err = tempfile::NamedTempFile::new().unwrap();
    let (_local, stream) = LocalShell::spawn(Stdio::from(err.reopen().unwrap())).unwrap();
    let opts = ConnectOptions::new("main").timeout(Duration::from_secs(20));
    let mut shell = Shell::connect(stream, opts).await.unwrap();
    assert_eq!(shell.output_limit(), DEFAULT_OUTPUT_LIMIT);
    let before = status_kib("VmHWM");
    let t = Instant::now();
    let mut lines = 0u64;
    let out = shell
        .execute("timeout 10 yes", Some(Duration::from_secs(60)), &mut |_| {
            lines += 1
        })
        .await
        .unwrap();
    let elapsed = t.elapsed();
    let peak = status_kib("VmHWM");
    let streamed = 2 * lines;
    eprintln!(
        "yes for {:.1} s: {streamed} bytes streamed ({:.0} MB/s), kept {} bytes, \
         peak RSS {before} KiB before, {peak} KiB after",
        elapsed.as_secs_f64(),
        streamed as f64 / elapsed.as_secs_f64() / 1e6,
        out.stdout.len()
    );
    assert_eq!(out.code, 124, "timeout's exit code comes through");
    assert!(
        streamed > 2 * DEFAULT_OUTPUT_LIMIT as u64,
        "yes wrote only {streamed} bytes: the test proves nothing"
    );
    assert!(out.stdout.len() <= DEFAULT_OUTPUT_LIMIT + 200);
    // Twice the limit for the buffer's slack, plus the test binary itself.
    let bound_kib = (2 * DEFAULT_OUTPUT_LIMIT / 1024) as u64 + 48 * 1024;
    assert!(
        peak < bound_kib,
        "peak RSS {peak} KiB exceeds {bound_kib} KiB"
    );
    let next = shell
        .execute("echo next", Some(Duration::from_secs(10)), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(next.stdout, b"next\n");
}
