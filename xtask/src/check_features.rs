//! `cargo xtask check-features`: builds every optional cargo feature of every workspace crate and
//! runs the tests that feature adds (the crate's unit tests with the feature on, and every test
//! target that declares it in `required-features`). `cargo xtask test` runs it after the suite.
//!
//! Optional features may need extra system packages (listed in [`FEATURE_PACKAGES`]); they are
//! installed here, not by `cargo xtask deps`, so that `cargo xtask deps` alone stays lean.

use anyhow::{Context, Result};

use crate::deps::{self, Package};
use crate::run::{cargo, run};
use crate::timing::phase;

/// Debian packages that only optional features need.
pub const FEATURE_PACKAGES: &[Package] = &[
    // crates/ocr, optional in-process tesseract feature (tesseract-sys / leptonica-sys + bindgen).
    Package {
        name: "libtesseract-dev",
        why: "ocr feature: in-process tesseract",
    },
    Package {
        name: "libleptonica-dev",
        why: "ocr feature: in-process tesseract",
    },
    Package {
        name: "clang",
        why: "ocr feature: bindgen",
    },
    Package {
        name: "libclang-dev",
        why: "ocr feature: bindgen",
    },
];

/// One optional feature of one workspace member, and the test targets that need it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OptionalFeature {
    /// The package.
    pub package: String,
    /// The feature.
    pub feature: String,
    /// Test targets (`[[test]]`) whose `required-features` include it.
    pub tests: Vec<String>,
    /// The package has a library target (its unit tests run with `--lib`).
    pub has_lib: bool,
    /// The package has binary targets (their unit tests run with `--bins`).
    pub has_bins: bool,
}

/// Lists every non-default feature of every workspace member, with its test targets.
pub fn optional_features(metadata: &serde_json::Value) -> Vec<OptionalFeature> {
    let mut out = Vec::new();
    for pkg in metadata["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default();
        let Some(features) = pkg["features"].as_object() else {
            continue;
        };
        let has_kind = |kind: &str| {
            pkg["targets"].as_array().into_iter().flatten().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == kind))
            })
        };
        for f in features.keys().filter(|f| *f != "default") {
            let tests = pkg["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "test"))
                })
                .filter(|t| {
                    t["required-features"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r == f.as_str()))
                })
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect();
            out.push(OptionalFeature {
                package: name.to_string(),
                feature: f.clone(),
                tests,
                has_lib: has_kind("lib"),
                has_bins: has_kind("bin"),
            });
        }
    }
    out.sort();
    out
}

/// Runs the command.
pub fn run_all() -> Result<()> {
    phase("deps (features)", || {
        deps::ensure()?;
        deps::ensure_packages(FEATURE_PACKAGES)
    })?;
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata output")?;
    let features = optional_features(&meta);
    if features.is_empty() {
        eprintln!("xtask: no crate declares optional features");
    }
    for f in features {
        let (pkg, feature) = (&f.package, &f.feature);
        phase(&format!("check {pkg} --features {feature}"), || {
            run(cargo().args(["check", "-p", pkg, "--all-targets", "--features", feature]))
        })?;
        phase(&format!("test {pkg} --features {feature}"), || {
            let mut cmd = cargo();
            cmd.args(["test", "-p", pkg, "--features", feature]);
            if f.has_lib {
                cmd.arg("--lib");
            }
            if f.has_bins {
                cmd.arg("--bins");
            }
            for t in &f.tests {
                cmd.args(["--test", t]);
            }
            run(&mut cmd)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_non_default_features() {
        let meta = serde_json::json!({"packages": [
            {"name": "machinist-ocr", "features": {"default": [], "libtesseract": ["dep:tesseract"]},
             "targets": [
                {"name": "machinist_ocr", "kind": ["lib"]},
                {"name": "corpus", "kind": ["test"]},
                {"name": "inprocess", "kind": ["test"], "required-features": ["libtesseract"]},
                {"name": "inprocess", "kind": ["example"], "required-features": ["libtesseract"]},
             ]},
            {"name": "xtask", "features": {"bench": []},
             "targets": [{"name": "xtask", "kind": ["bin"]}]},
        ]});
        assert_eq!(
            optional_features(&meta),
            [
                OptionalFeature {
                    package: "machinist-ocr".into(),
                    feature: "libtesseract".into(),
                    tests: vec!["inprocess".into()],
                    has_lib: true,
                    has_bins: false,
                },
                OptionalFeature {
                    package: "xtask".into(),
                    feature: "bench".into(),
                    tests: vec![],
                    has_lib: false,
                    has_bins: true,
                }
            ]
        );
    }
}
