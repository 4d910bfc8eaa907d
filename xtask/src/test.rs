//! `cargo xtask test`: system packages, then the whole test suite and the NixOS corpus.

use anyhow::Result;

use crate::run::{cargo, have_nextest, run};
use crate::{deps, timing::phase};

/// Installs the Debian packages, then runs every test of the workspace: `cargo nextest run
/// --workspace --profile ci` (plus the doctests, which nextest does not run) when cargo-nextest is
/// installed, `cargo test --workspace --no-fail-fast` otherwise; then the tests of every optional
/// cargo feature ([`crate::check_features`]); then the NixOS compatibility corpus
/// ([`crate::corpus`], `tests/nixos/`, machines booted cold). `extra` goes to the test runner (and, when given, the
/// optional features and the corpus are left out: a filtered run is not the whole suite).
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
    let r = r.and_then(|()| {
        if extra.is_empty() {
            // Cold boots, as the NixOS driver always boots: the corpus measures what scripts
            // need, and on the suite's empty cache, building ~40 node snapshots would cost more
            // than the warm starts save (warm start has its own tests).
            phase("NixOS corpus (cargo xtask corpus --cold-boot)", || {
                crate::corpus::run_corpus(
                    &crate::workspace_root(),
                    &crate::corpus::Options {
                        cold_boot: true,
                        ..Default::default()
                    },
                )
            })
        } else {
            Ok(())
        }
    });
    eprintln!("xtask: test total {:.1} s", total.elapsed().as_secs_f64());
    r
}
