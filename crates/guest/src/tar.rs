//! A minimal ustar writer: regular files and symlinks, owned by root, for shipping a node layer
//! to a running guest in one binary stream (GNU tar in the guest unpacks it).

use std::fmt;

const BLOCK: usize = 512;

/// A path or link target that ustar cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarPathError {
    /// The offending path or link target.
    pub path: String,
    /// Why it does not fit.
    pub reason: &'static str,
}

impl fmt::Display for TarPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot store `{}` in a tar archive: {}",
            self.path, self.reason
        )
    }
}

impl std::error::Error for TarPathError {}

/// Builds a ustar archive in memory.
#[derive(Debug, Default)]
pub struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    /// An empty archive.
    pub fn new() -> Self {
        TarWriter::default()
    }

    /// Appends a regular file with permission bits `mode`.
    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> Result<(), TarPathError> {
        let header = header(path, mode, contents.len() as u64, b'0', "")?;
        self.out.extend_from_slice(&header);
        self.out.extend_from_slice(contents);
        self.pad();
        Ok(())
    }

    /// Appends a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TarPathError> {
        let header = header(path, 0o777, 0, b'2', target)?;
        self.out.extend_from_slice(&header);
        Ok(())
    }

    /// Ends the archive (two zero blocks) and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 2 * BLOCK, 0);
        self.out
    }

    fn pad(&mut self) {
        let rem = self.out.len() % BLOCK;
        if rem != 0 {
            self.out.resize(self.out.len() + BLOCK - rem, 0);
        }
    }
}

/// Splits `path` into ustar's `prefix` (155 bytes) and `name` (100 bytes) at a slash.
fn split_path(path: &str) -> Result<(&str, &str), TarPathError> {
    let err = |reason| TarPathError {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.contains('\0') {
        return Err(err("empty or contains a NUL byte"));
    }
    if path.len() <= 100 {
        return Ok(("", path));
    }
    path.char_indices()
        .filter(|&(_, c)| c == '/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100 && !name.is_empty())
        .ok_or_else(|| err("longer than ustar allows (155 + 100 bytes split at a slash)"))
}

fn put_octal(field: &mut [u8], value: u64) {
    // Zero-padded octal followed by a NUL, filling the field.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn header(
    path: &str,
    mode: u32,
    size: u64,
    kind: u8,
    link: &str,
) -> Result<[u8; BLOCK], TarPathError> {
    let (prefix, name) = split_path(path)?;
    if link.len() > 100 {
        return Err(TarPathError {
            path: link.to_owned(),
            reason: "a link target longer than 100 bytes",
        });
    }
    if size >= 8u64.pow(11) {
        return Err(TarPathError {
            path: path.to_owned(),
            reason: "larger than 8 GiB",
        });
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], u64::from(mode & 0o7777));
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is computed with its own field as eight spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_block_aligned_and_ends_with_two_zero_blocks() {
        let mut w = TarWriter::new();
        w.file("a/b.txt", 0o644, b"hello").unwrap();
        let out = w.finish();
        assert_eq!(out.len(), 512 + 512 + 1024);
        assert!(out[1024..].iter().all(|&b| b == 0));
        assert_eq!(&out[512..517], b"hello");
    }

    #[test]
    fn header_fields_and_checksum() {
        let h = header("x", 0o755, 10, b'0', "").unwrap();
        assert_eq!(&h[100..108], b"0000755\0");
        assert_eq!(&h[124..136], b"00000000012\0");
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
    }

    #[test]
    fn long_paths_use_the_prefix() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let (prefix, name) = split_path(&long).unwrap();
        assert_eq!(prefix.len(), 120);
        assert_eq!(name.len(), 90);
        assert!(split_path(&"x".repeat(101)).is_err());
        assert!(split_path("").is_err());
    }

    /// GNU tar (Essential in Debian, so present on the host and in every guest) reads it back.
    #[test]
    fn gnu_tar_extracts_files_modes_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/deep.txt", "sub".repeat(40));
        let mut w = TarWriter::new();
        w.file("root/etc/hostname", 0o644, b"server\n").unwrap();
        w.file("root/usr/bin/tool", 0o755, &[0, 1, 2, 255]).unwrap();
        w.file(&long, 0o600, b"deep").unwrap();
        w.symlink("root/etc/link", "/dev/null").unwrap();
        let tar_path = dir.path().join("l.tar");
        std::fs::write(&tar_path, w.finish()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut tar = std::process::Command::new("tar");
        tar.arg("-xpf").arg(&tar_path).arg("-C").arg(&out);
        let run = crate::supervise::output(&tar, std::time::Duration::from_secs(60)).unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::read(out.join("root/etc/hostname")).unwrap(),
            b"server\n"
        );
        let tool = out.join("root/usr/bin/tool");
        assert_eq!(std::fs::read(&tool).unwrap(), [0, 1, 2, 255]);
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"deep");
        assert_eq!(
            std::fs::read_link(out.join("root/etc/link")).unwrap(),
            std::path::Path::new("/dev/null")
        );
    }
}
