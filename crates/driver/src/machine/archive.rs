//! Host-side data handling of copies: decoding a download's base64 stream to disk, packing a
//! host directory, and unpacking a guest's tar stream as untrusted input, entry by entry.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Decodes base64 lines into a file as they arrive; the first error is kept for
/// [`Base64Sink::finish`].
pub(super) struct Base64Sink {
    out: BufWriter<File>,
    /// Base64 characters not decoded yet (fewer than 4 after each line).
    pending: Vec<u8>,
    decoded: Vec<u8>,
    error: Option<String>,
}

impl Base64Sink {
    pub(super) fn new(file: File) -> Self {
        Base64Sink {
            out: BufWriter::with_capacity(256 * 1024, file),
            pending: Vec::new(),
            decoded: Vec::new(),
            error: None,
        }
    }

    pub(super) fn line(&mut self, line: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.pending
            .extend(line.iter().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.pending.len() / 4 * 4;
        if let Err(e) = self.decode(whole) {
            self.error = Some(e);
        }
    }

    fn decode(&mut self, n: usize) -> std::result::Result<(), String> {
        use base64::Engine;
        if n == 0 {
            return Ok(());
        }
        self.decoded.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(&self.pending[..n], &mut self.decoded)
            .map_err(|e| e.to_string())?;
        self.pending.drain(..n);
        self.out
            .write_all(&self.decoded)
            .map_err(|e| format!("writing to disk: {e}"))
    }

    pub(super) fn finish(mut self) -> std::result::Result<(), String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.pending.is_empty() {
            return Err(format!(
                "{} base64 characters left over at the end",
                self.pending.len()
            ));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| format!("writing to disk: {}", e.error()))?;
        file.sync_all().map_err(|e| format!("writing to disk: {e}"))
    }
}

/// Packs a host directory as a tar stream (symlinks kept as symlinks).
pub(super) fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .and_then(|()| builder.into_inner())
        .map_err(|e| Error::io(format!("packing {} as a tar stream", dir.display()), e))
}

/// What [`unpack`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub(crate) files: usize,
    pub(crate) dirs: usize,
    pub(crate) symlinks: usize,
    pub(crate) refused: usize,
}

/// Unpacks an untrusted tar stream into the existing directory `dest`, entry by entry.
///
/// Kept: regular files (mode `& 0o777 | 0o600`), directories (`& 0o777 | 0o700`, applied at the
/// end) and relative symlinks whose target stays inside `dest` (only leading `..`, no deeper
/// than the link's own directory). Refused, with a line to `refuse`: absolute paths and `..`
/// components, hard links, device nodes, fifos and other types, symlinks that could escape, and
/// any entry whose parent on disk is not a real directory (a symlink planted by an earlier entry
/// is never written through). Ownership is never taken from the archive. An existing file or
/// symlink at an entry's path is replaced (unlinked, never followed).
pub(crate) fn unpack(
    reader: impl Read,
    dest: &Path,
    refuse: &mut dyn FnMut(&str),
) -> Result<Unpacked> {
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let bad_archive = |e: std::io::Error| Error::io("reading the tar stream from the guest", e);
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let path = entry.path().map_err(bad_archive)?.into_owned();
        let kind = entry.header().entry_type();
        let shown = path.display().to_string();
        let mut no = |why: String| {
            done.refused += 1;
            refuse(&format!("refused `{shown}`: {why}"));
        };
        use tar::EntryType as T;
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            continue;
        }
        let parts = match relative_parts(&path) {
            Ok(p) => p,
            Err(why) => {
                no(why.into());
                continue;
            }
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let Some((name, parents)) = parts.split_last() else {
            // The archive's root (`./`): `dest` itself.
            if !kind.is_dir() {
                no("an entry without a name that is not a directory".into());
            }
            continue;
        };
        let parent = match real_dirs(dest, parents) {
            Ok(p) => p,
            Err(why) => {
                no(why);
                continue;
            }
        };
        let target = parent.join(name);
        match kind {
            T::Directory => match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {
                    dir_modes.push((target, mode | 0o700));
                    done.dirs += 1;
                }
                Ok(_) => no("a file or symlink of that name was unpacked before".into()),
                Err(_) => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
                    dir_modes.push((target, mode | 0o700));
                    done.dirs += 1;
                }
            },
            T::Regular | T::Continuous => {
                if let Err(why) = make_room(&target) {
                    no(why);
                    continue;
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
                std::io::copy(&mut entry, &mut file)
                    .map_err(|e| Error::io(format!("writing {}", target.display()), e))?;
                file.set_permissions(fs::Permissions::from_mode(mode | 0o600))
                    .map_err(|e| {
                        Error::io(format!("setting the mode of {}", target.display()), e)
                    })?;
                done.files += 1;
            }
            T::Symlink => {
                let link = match entry.link_name() {
                    Ok(Some(l)) => l.into_owned(),
                    _ => {
                        no("a symlink without a readable target".into());
                        continue;
                    }
                };
                if let Err(why) = link_stays_inside(&link, parents.len()) {
                    no(format!("symlink to `{}` {why}", link.display()));
                    continue;
                }
                if let Err(why) = make_room(&target) {
                    no(why);
                    continue;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(|e| {
                    Error::io(format!("creating the symlink {}", target.display()), e)
                })?;
                done.symlinks += 1;
            }
            T::Link => no("hard links are not unpacked".into()),
            T::Char | T::Block => no("device nodes are not unpacked".into()),
            T::Fifo => no("fifos are not unpacked".into()),
            other => no(format!("entry type {other:?} is not unpacked")),
        }
    }
    // Deepest first, so that a read-only directory does not block its children's modes.
    for (dir, mode) in dir_modes.iter().rev() {
        if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
                .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
        }
    }
    Ok(done)
}

/// The normal components of an archive path (`.` dropped); absolute paths and `..` refused.
fn relative_parts(path: &Path) -> std::result::Result<Vec<&std::ffi::OsStr>, &'static str> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok(parts)
}

/// `dest/parents...`, creating missing directories; every existing component must be a real
/// directory (never a symlink).
fn real_dirs(dest: &Path, parents: &[&std::ffi::OsStr]) -> std::result::Result<PathBuf, String> {
    let mut at = dest.to_path_buf();
    for p in parents {
        at.push(p);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "its parent `{}` is a symlink or file, not a directory",
                    at.strip_prefix(dest).unwrap_or(&at).display()
                ))
            }
            Err(_) => fs::DirBuilder::new()
                .mode(0o755)
                .create(&at)
                .map_err(|e| format!("creating {}: {e}", at.display()))?,
        }
    }
    Ok(at)
}

/// Unlink a file or symlink at `target` (never following it); a directory stays and refuses.
fn make_room(target: &Path) -> std::result::Result<(), String> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err("a directory of that name was unpacked before".into()),
        Ok(_) => fs::remove_file(target).map_err(|e| format!("replacing it: {e}")),
        Err(_) => Ok(()),
    }
}

/// Whether a symlink in a directory `depth` levels below the destination, pointing to `link`,
/// stays inside it whatever the other entries are: relative, `..` only at the start and no more
/// of them than `depth` (every other component descends, through real directories or through
/// symlinks checked the same way).
fn link_stays_inside(link: &Path, depth: usize) -> std::result::Result<(), &'static str> {
    if link.as_os_str().is_empty() {
        return Err("is empty");
    }
    let mut ups = 0;
    let mut descended = false;
    for c in link.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
            Component::CurDir => {}
            Component::ParentDir if descended => return Err("has `..` after a name"),
            Component::ParentDir => {
                ups += 1;
                if ups > depth {
                    return Err("leaves the copied directory");
                }
            }
            Component::Normal(_) => descended = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A header for `path` (written raw, so that `..` and `/` survive the builder's checks).
    fn header(path: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        // Not the host user's ids (the test may run as root): never applied.
        h.set_uid(4242);
        h.set_gid(4242);
        h.set_mtime(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
        let mut h = header(
            path.as_bytes(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
        );
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: &str) {
        let mut h = header(path.as_bytes(), kind, 0o777, 0);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn unpack_into(archive: Vec<u8>, dest: &Path) -> (Unpacked, Vec<String>) {
        let mut lines = Vec::new();
        let r = unpack(&archive[..], dest, &mut |l: &str| lines.push(l.to_string())).unwrap();
        (r, lines)
    }

    #[test]
    fn malicious_archive_lands_only_inside_without_special_bits() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("copy");
        fs::create_dir(&dest).unwrap();
        let escape_target = outside.path().join("pwned");
        let abs = escape_target.display().to_string();

        let mut b = tar::Builder::new(Vec::new());
        special(&mut b, "./", tar::EntryType::Directory, "");
        file(&mut b, "ok.txt", 0o644, b"fine");
        file(&mut b, "../escape", 0o644, b"x");
        file(&mut b, "a/../../escape2", 0o644, b"x");
        file(&mut b, &abs, 0o644, b"x");
        file(&mut b, "suid", 0o4755, b"#!/bin/sh\n");
        file(&mut b, "sgid-sticky", 0o3777, b"y");
        special(&mut b, "null", tar::EntryType::Char, "");
        special(&mut b, "disk", tar::EntryType::Block, "");
        special(&mut b, "fifo", tar::EntryType::Fifo, "");
        // A symlink to /etc, then a file through it.
        special(&mut b, "etc", tar::EntryType::Symlink, "/etc");
        file(&mut b, "etc/evil.conf", 0o644, b"x");
        // A relative symlink that climbs out, then a file through it.
        let ups = "../".repeat(outside.path().components().count() + 2);
        let climb = format!(
            "{ups}{}",
            outside.path().strip_prefix("/").unwrap().display()
        );
        special(&mut b, "out", tar::EntryType::Symlink, &climb);
        file(&mut b, "out/pwned", 0o644, b"x");
        // A symlink that looks inside but climbs through another symlink.
        special(&mut b, "here", tar::EntryType::Symlink, ".");
        special(&mut b, "sneaky", tar::EntryType::Symlink, "here/..");
        // A file through a symlink to a directory inside: refused too (never through a link).
        file(&mut b, "here/x", 0o644, b"x");
        // A planted symlink, then a regular file of the same name: the file replaces the link
        // instead of writing through it.
        fs::write(&escape_target, b"original").unwrap();
        special(&mut b, "plant", tar::EntryType::Symlink, "ok.txt");
        file(&mut b, "plant", 0o644, b"replaced");
        // Hard links (to a file inside and to one outside).
        special(&mut b, "hard", tar::EntryType::Link, "ok.txt");
        special(&mut b, "hard2", tar::EntryType::Link, &abs);
        // Harmless symlinks stay.
        file(&mut b, "sub/deep/f", 0o600, b"deep");
        special(
            &mut b,
            "sub/deep/up",
            tar::EntryType::Symlink,
            "../../ok.txt",
        );
        special(&mut b, "sub/link", tar::EntryType::Symlink, "deep/f");
        special(&mut b, "sub/too-far", tar::EntryType::Symlink, "../../x");
        let archive = b.into_inner().unwrap();

        let (done, lines) = unpack_into(archive, &dest);
        let text = lines.join("\n");

        // Nothing outside.
        assert_eq!(fs::read(&escape_target).unwrap(), b"original");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "{text}");
        assert!(!root.path().join("escape").exists());
        assert!(!root.path().join("escape2").exists());
        assert!(!Path::new("/etc/evil.conf").exists());

        // What landed inside, exactly.
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "etc",
                "here",
                "ok.txt",
                "out",
                "plant",
                "sgid-sticky",
                "sub",
                "suid"
            ],
            "{text}"
        );
        // The refused links left no link: the files meant to go through them landed in plain
        // directories inside the copy.
        for (dir, f) in [("etc", "evil.conf"), ("out", "pwned")] {
            assert!(fs::symlink_metadata(dest.join(dir)).unwrap().is_dir());
            assert_eq!(fs::read(dest.join(dir).join(f)).unwrap(), b"x");
        }
        assert!(!dest.join("x").exists());
        assert_eq!(fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("sgid-sticky"), 0o777);
        assert!(fs::symlink_metadata(dest.join("plant")).unwrap().is_file());
        assert_eq!(fs::read(dest.join("plant")).unwrap(), b"replaced");
        assert_eq!(fs::read(dest.join("sub/deep/up")).unwrap(), b"fine");
        assert_eq!(fs::read(dest.join("sub/link")).unwrap(), b"deep");
        assert_eq!(mode("sub/deep/f"), 0o600);
        let me = unsafe { libc::getuid() };
        assert_eq!(fs::metadata(dest.join("ok.txt")).unwrap().uid(), me);
        assert_ne!(me, 4242);

        for refused in [
            "`../escape`: its path has a `..` component",
            "`a/../../escape2`: its path has a `..` component",
            "its path is absolute",
            "`null`: device nodes are not unpacked",
            "`disk`: device nodes are not unpacked",
            "`fifo`: fifos are not unpacked",
            "`etc`: symlink to `/etc` is absolute",
            "`out`: symlink to",
            "`here/x`: its parent `here` is a symlink or file, not a directory",
            "`sneaky`: symlink to `here/..` has `..` after a name",
            "`hard`: hard links are not unpacked",
            "`hard2`: hard links are not unpacked",
            "`sub/too-far`: symlink to `../../x` leaves the copied directory",
        ] {
            assert!(text.contains(refused), "no `{refused}` in:\n{text}");
        }
        assert_eq!(
            done,
            Unpacked {
                files: 7,
                dirs: 0,
                symlinks: 4,
                refused: 13
            },
            "{text}"
        );
    }

    #[test]
    fn directory_modes_are_masked_and_applied_last() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        special(&mut b, "ro/", tar::EntryType::Directory, "");
        // `special` sets 0o777; make this one read-only with setgid.
        let mut h = header(b"ro2/", tar::EntryType::Directory, 0o2555, 0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        file(&mut b, "ro2/inside", 0o644, b"z");
        let (done, lines) = unpack_into(b.into_inner().unwrap(), root.path());
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(done.dirs, 2);
        assert_eq!(done.files, 1);
        let m = fs::metadata(root.path().join("ro2")).unwrap().mode() & 0o7777;
        assert_eq!(m, 0o755);
        assert_eq!(fs::read(root.path().join("ro2/inside")).unwrap(), b"z");
    }

    #[test]
    fn a_host_directory_round_trips_through_tar_dir() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/f"), b"data").unwrap();
        fs::set_permissions(src.path().join("d/f"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("d/f", src.path().join("l")).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let (done, lines) = unpack_into(tar_dir(src.path()).unwrap(), dest.path());
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!((done.files, done.symlinks), (1, 1));
        assert_eq!(fs::read(dest.path().join("l")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(dest.path().join("d/f")).unwrap().mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn base64_lines_decode_to_the_file_in_any_split() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        for width in [76, 5, 1, 10_000_000] {
            let path = dir.path().join(format!("w{width}"));
            let mut sink = Base64Sink::new(File::create(&path).unwrap());
            for line in b64.as_bytes().chunks(width) {
                sink.line(line);
            }
            sink.finish().unwrap();
            assert_eq!(fs::read(&path).unwrap(), data, "width {width}");
        }
        let mut sink = Base64Sink::new(File::create(dir.path().join("bad")).unwrap());
        sink.line(b"not base64!");
        assert!(sink.finish().is_err());
        let mut sink = Base64Sink::new(File::create(dir.path().join("short")).unwrap());
        sink.line(b"QUJD");
        sink.line(b"QQ");
        assert!(sink.finish().unwrap_err().contains("left over"));
    }

    #[test]
    fn symlink_rule() {
        assert!(link_stays_inside(Path::new("a/b"), 0).is_ok());
        assert!(link_stays_inside(Path::new("./a"), 0).is_ok());
        assert!(link_stays_inside(Path::new("../a"), 1).is_ok());
        assert!(link_stays_inside(Path::new("../a"), 0).is_err());
        assert!(link_stays_inside(Path::new("a/../b"), 3).is_err());
        assert!(link_stays_inside(Path::new("/a"), 3).is_err());
        assert!(link_stays_inside(Path::new(""), 3).is_err());
    }
}
