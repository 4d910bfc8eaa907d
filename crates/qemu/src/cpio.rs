//! A writer for cpio "newc" archives (the initramfs format).
//!
//! Per entry: a 110-byte ASCII header (`070701` + 13 fields of 8 hex digits), the name with its
//! NUL padded so header + name is a multiple of 4, then the data padded to 4. The archive ends
//! with `TRAILER!!!`. Owners are root, mtimes 0 and inodes sequential, so output is
//! reproducible. Concatenated archives are valid initramfs images (the kernel unpacks each).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a newc archive to `W`. Call [`NewcWriter::finish`] to write the trailer.
///
/// ```
/// use machinist_qemu::cpio::NewcWriter;
/// let mut w = NewcWriter::new(Vec::new());
/// w.dir("bin", 0o755).unwrap();
/// w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
/// w.symlink("bin/sh", "busybox").unwrap();
/// let bytes = w.finish().unwrap();
/// assert!(bytes.starts_with(b"070701"));
/// ```
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> NewcWriter<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        NewcWriter {
            out,
            next_ino: 1,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (`mode` = permission bits, e.g. `0o755`).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = clean(path)?;
        self.dirs.insert(name.clone());
        self.entry(&name, S_IFDIR | (mode & 0o7777), 2, 0, &[])
    }

    /// Adds `path` and every missing parent directory (mode 0755), like `mkdir -p`.
    pub fn dir_all(&mut self, path: &str) -> io::Result<()> {
        let name = clean(path)?;
        let mut acc = String::new();
        for part in name.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !self.dirs.contains(&acc) {
                let a = acc.clone();
                self.dir(&a, 0o755)?;
            }
        }
        Ok(())
    }

    /// Adds a regular file with `contents`.
    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> io::Result<()> {
        let name = clean(path)?;
        self.entry(&name, S_IFREG | (mode & 0o7777), 1, 0, contents)
    }

    /// Adds a regular file with the contents of the host file `source`.
    pub fn file_from(&mut self, path: &str, mode: u32, source: &Path) -> io::Result<()> {
        let data = std::fs::read(source)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", source.display())))?;
        self.file(path, mode, &data)
    }

    /// Adds a symlink `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = clean(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!("bad symlink target {target:?} for {path}")));
        }
        self.entry(&name, S_IFLNK | 0o777, 1, 0, target.as_bytes())
    }

    /// Adds a character device node (e.g. `dev/console`, 5, 1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = clean(path)?;
        self.entry(
            &name,
            S_IFCHR | (mode & 0o7777),
            1,
            (u64::from(major) << 32) | u64::from(minor),
            &[],
        )
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0, 0)?;
        self.pad()?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| invalid(format!("{name}: file too large for newc (> 4 GiB)")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, size, rdev)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: u64,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            (rdev >> 32) as u32,
            rdev as u32,
            namesize,
            0, // check
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        debug_assert_eq!(h.len(), 110);
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

fn clean(path: &str) -> io::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty()
        || p.contains('\0')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid(format!("bad archive path {path:?}")));
    }
    Ok(p.to_string())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = NewcWriter::new(Vec::new());
        w.dir_all("usr/lib/machinist").unwrap();
        w.dir("etc", 0o750).unwrap();
        w.file("etc/hostname", 0o644, b"server\n").unwrap();
        w.file("/usr/lib/machinist/apply", 0o755, b"#!/bin/sh\nexit 0\n")
            .unwrap();
        w.file("empty", 0o600, b"").unwrap();
        w.symlink("etc/link", "hostname").unwrap();
        w.dir_all("usr/lib").unwrap(); // already there: no duplicate entries
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_aligned_and_reproducible() {
        let a = sample();
        assert_eq!(a, sample());
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        // First header: ino 1, dir mode 040755, nlink 2, namesize 4 ("usr\0").
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ED");
        assert_eq!(&a[38..46], b"00000002");
        assert_eq!(&a[94..102], b"00000004");
        assert!(NewcWriter::new(Vec::new())
            .file("../x", 0o644, b"")
            .is_err());
        assert!(NewcWriter::new(Vec::new()).file("", 0o644, b"").is_err());
    }

    fn cpio(args: &[&str], input: &[u8], cwd: &Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio not found: install the Debian package cpio");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        use std::os::unix::fs::PermissionsExt;
        let a = sample();
        let dir = tempfile::tempdir().unwrap();
        let list = cpio(&["-t", "--quiet"], &a, dir.path());
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            vec![
                "usr",
                "usr/lib",
                "usr/lib/machinist",
                "etc",
                "etc/hostname",
                "usr/lib/machinist/apply",
                "empty",
                "etc/link"
            ]
        );
        cpio(
            &["-i", "-d", "--quiet", "--no-absolute-filenames"],
            &a,
            dir.path(),
        );
        let d = dir.path();
        assert_eq!(
            std::fs::read_to_string(d.join("etc/hostname")).unwrap(),
            "server\n"
        );
        let mode = std::fs::metadata(d.join("usr/lib/machinist/apply"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(
            std::fs::read_link(d.join("etc/link")).unwrap(),
            Path::new("hostname")
        );
        assert_eq!(std::fs::metadata(d.join("empty")).unwrap().len(), 0);
        let etc = std::fs::metadata(d.join("etc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(etc & 0o777, 0o750);
        // A device node lists fine too (extracting one needs root, so only list it).
        let mut w = NewcWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let list = cpio(&["-t", "-v", "--quiet"], &w.finish().unwrap(), dir.path());
        assert!(
            list.contains("5,") && list.contains("dev/console"),
            "{list}"
        );
    }
}
