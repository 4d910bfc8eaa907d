//! The installed QEMU's version (for `machinist doctor` and cache keys).

use std::path::Path;
use std::process::Command;

use crate::command::find_binary;
use crate::error::QemuError;

/// A parsed `qemu-system-x86_64 --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    /// The first output line, e.g. `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`.
    pub text: String,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The version of `qemu-system-x86_64` on `PATH`; the error names the Debian package when it
/// is missing.
pub fn qemu_version() -> Result<QemuVersion, QemuError> {
    qemu_version_of(Path::new("qemu-system-x86_64"))
}

/// The version of a given QEMU binary.
pub fn qemu_version_of(binary: &Path) -> Result<QemuVersion, QemuError> {
    let bin = find_binary(binary)?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| QemuError::io(format!("running {} --version", bin.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).ok_or_else(|| {
        QemuError::io(
            format!("cannot parse `{} --version` output: {text}", bin.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        )
    })
}

fn parse_version(text: &str) -> Option<QemuVersion> {
    let line = text.lines().next()?.trim();
    let rest = line.split("version ").nth(1)?;
    let num = rest.split_whitespace().next()?;
    let mut parts = num.split('.').map(|p| p.parse::<u32>().ok());
    Some(QemuVersion {
        major: parts.next()??,
        minor: parts.next().flatten().unwrap_or(0),
        micro: parts.next().flatten().unwrap_or(0),
        text: line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_line() {
        let v = parse_version(
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022\n",
        )
        .unwrap();
        assert_eq!((v.major, v.minor, v.micro), (7, 2, 22));
        assert_eq!(v.to_string(), "7.2.22");
        assert!(parse_version("garbage").is_none());
    }

    #[test]
    fn installed_qemu_reports_a_version() {
        let v = qemu_version().unwrap();
        assert!(v.major >= 7, "{v:?}");
    }
}
