//! `cargo xtask check-features`: builds every optional cargo feature of every workspace crate.
//!
//! Optional features may need extra system packages (listed in [`FEATURE_PACKAGES`]); they are
//! installed here, not by `cargo xtask deps`, so that ordinary CI runs do not pay for them.

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

/// Lists `(package, feature)` for every non-default feature of every workspace member.
pub fn optional_features(metadata: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pkg in metadata["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default();
        if let Some(features) = pkg["features"].as_object() {
            for f in features.keys().filter(|f| *f != "default") {
                out.push((name.to_string(), f.clone()));
            }
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
    for (pkg, feature) in features {
        phase(&format!("check {pkg} --features {feature}"), || {
            run(cargo().args(["check", "-p", &pkg, "--all-targets", "--features", &feature]))
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
            {"name": "machinist-ocr", "features": {"default": [], "libtesseract": ["dep:tesseract"]}},
            {"name": "xtask", "features": {}},
        ]});
        assert_eq!(
            optional_features(&meta),
            [("machinist-ocr".to_string(), "libtesseract".to_string())]
        );
    }
}
