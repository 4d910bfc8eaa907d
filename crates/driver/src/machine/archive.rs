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
mod tests;
