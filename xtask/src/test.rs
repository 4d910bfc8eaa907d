//! `cargo xtask test`: system packages, then the whole test suite.

use anyhow::Result;

use crate::run::{cargo, have_nextest, run};
use crate::{deps, timing::phase};

/// Installs the Debian packages, then runs every test of the workspace: `cargo nextest run
/// --workspace --profile ci` (plus the doctests, which nextest does not run) when cargo-nextest is
/// installed, `cargo test --workspace --no-fail-fast` otherwise; then the tests of every optional
/// cargo feature ([`crate::check_features`]). `extra` goes to the test runner (and, when given,
/// the optional features are left out: a filtered run is not the whole suite).
pub fn run_suite(extra: &[String]) -> Result<()> {
    let total = std::time::Instant::now();
    phase("deps", deps::ensure)?;
    let r = if have_nextest() {
        phase("tests (cargo nextest)", || {
            run(cargo()
                .args(["nextest", "run", "--workspace", "--profile", "ci"])
                .args(extra))
        })
        .and_then(|()| {
            if extra.is_empty() {
                phase("doctests (cargo test --doc)", || {
                    run(cargo().args(["test", "--workspace", "--doc"]))
                })
            } else {
                Ok(())
            }
        })
    } else {
        eprintln!("xtask: cargo-nextest not installed; using cargo test (same tests)");
        phase("tests (cargo test)", || {
            run(cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(extra))
        })
    };
    let r = r.and_then(|()| {
        if extra.is_empty() {
            crate::check_features::run_all()
        } else {
            Ok(())
        }
    });
    eprintln!("xtask: test total {:.1} s", total.elapsed().as_secs_f64());
    r
}
