//! qcow2 overlays over read-only backing images (`qemu-img create -b`).

use std::path::Path;
use std::process::Command;

use crate::error::QemuError;

/// Creates `overlay` as a qcow2 image whose backing file is `backing` (format `backing_format`,
/// e.g. `raw` or `qcow2`). The backing file is never written. Takes about 10 ms.
///
/// The error names the Debian package `qemu-utils` when `qemu-img` is missing.
pub fn create_qcow2_overlay(
    backing: &Path,
    backing_format: &str,
    overlay: &Path,
) -> Result<(), QemuError> {
    if !backing.exists() {
        return Err(QemuError::MissingFile {
            what: "backing image",
            path: backing.to_path_buf(),
        });
    }
    let backing_abs = absolute(backing)?;
    qemu_img(
        &["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"],
        &backing_abs,
        overlay,
    )
}

/// Points the qcow2 image `overlay` at `backing` (format `backing_format`) without reading or
/// copying any data (`qemu-img rebase -u`): for a backing file that moved, e.g. one pinned by a
/// hard link. The caller guarantees that the new backing file holds the same bytes.
pub fn repoint_backing(
    overlay: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), QemuError> {
    let backing_abs = absolute(backing)?;
    qemu_img(
        &["rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b"],
        &backing_abs,
        overlay,
    )
}

fn absolute(p: &Path) -> Result<std::path::PathBuf, QemuError> {
    std::path::absolute(p).map_err(|e| QemuError::io(format!("resolving {}", p.display()), e))
}

/// Runs `qemu-img <args> <backing> <overlay>`; the error quotes its stderr and names the Debian
/// package when `qemu-img` is missing.
fn qemu_img(args: &[&str], backing: &Path, overlay: &Path) -> Result<(), QemuError> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(backing)
        .arg(overlay)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QemuError::io(
                    "qemu-img not found: install the Debian package qemu-utils",
                    e,
                )
            } else {
                QemuError::io("running qemu-img", e)
            }
        })?;
    if !out.status.success() {
        return Err(QemuError::io(
            format!(
                "qemu-img {} {} {} failed: {}",
                args.join(" "),
                backing.display(),
                overlay.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            std::io::Error::other("qemu-img failed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_over_raw_image() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let ov = dir.path().join("vm.qcow2");
        create_qcow2_overlay(&base, "raw", &ov).unwrap();
        let head = std::fs::read(&ov).unwrap();
        assert_eq!(&head[..4], b"QFI\xfb");
        let err = create_qcow2_overlay(&dir.path().join("nope"), "raw", &ov).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn repointing_changes_only_the_backing_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let ov = dir.path().join("vm.qcow2");
        create_qcow2_overlay(&base, "raw", &ov).unwrap();
        let pinned = dir.path().join("pinned.img");
        std::fs::hard_link(&base, &pinned).unwrap();
        repoint_backing(&ov, &pinned, "raw").unwrap();
        let info = Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(&ov)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], pinned.display().to_string());
        assert!(repoint_backing(&dir.path().join("missing.qcow2"), &pinned, "raw").is_err());
    }
}
