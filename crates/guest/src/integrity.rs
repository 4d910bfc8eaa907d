//! Integrity of cached images: artefacts are synced and recorded (size + sha256) in the manifest
//! before an image is published, sizes are checked on every use, full hashes by [`verify_cache`],
//! and [`pin_image`] gives a run its own reference to the exact image it started from.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::GuestError;
use crate::image::{Artefact, Image, ARTEFACT_FILES, MANIFEST, QUICK_DEADLINE};

/// What a cache directory holds.
pub(crate) enum Entry {
    /// No manifest: never built, or an interrupted build.
    Missing,
    /// The manifest and every file it records, with the recorded sizes.
    Intact(Box<Image>),
    /// Something is wrong (the reason, for the log line); the entry must be rebuilt.
    Damaged(String),
}

/// Read the manifest of the image directory `dir` and check that every recorded file has its
/// recorded size (cheap: one `stat` per file).
pub(crate) fn inspect_entry(dir: &Path) -> Entry {
    let text = match fs::read_to_string(dir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Missing,
        Err(e) => return Entry::Damaged(format!("cannot read {MANIFEST}: {e}")),
    };
    let mut img: Image = match serde_json::from_str(&text) {
        Ok(i) => i,
        Err(e) => return Entry::Damaged(format!("{MANIFEST} is not valid: {e}")),
    };
    // The cache may have been moved: trust the directory, not the recorded paths.
    img.dir = dir.to_path_buf();
    img.disk = dir.join("rootfs.img");
    img.kernel = dir.join("vmlinuz");
    img.initrd = dir.join("initrd.img");
    img.debian_initrd = img.debian_initrd.map(|_| dir.join("initrd-debian.img"));
    if let Err(why) = check_sizes(dir, &img) {
        return Entry::Damaged(why);
    }
    Entry::Intact(Box::new(img))
}

fn check_sizes(dir: &Path, img: &Image) -> Result<(), String> {
    if img.artefacts.is_empty() {
        return Err(format!(
            "{MANIFEST} records no file sizes and hashes (written by an older machinist)"
        ));
    }
    let mut required = vec!["rootfs.img", "vmlinuz", "initrd.img"];
    if img.debian_initrd.is_some() {
        required.push("initrd-debian.img");
    }
    for name in required {
        if !img.artefacts.contains_key(name) {
            return Err(format!("{MANIFEST} does not record {name}"));
        }
    }
    for (name, a) in &img.artefacts {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == a.size => {}
            Ok(m) if m.len() < a.size => {
                return Err(format!(
                    "{name} is truncated: {} bytes, the manifest records {}",
                    m.len(),
                    a.size
                ))
            }
            Ok(m) => {
                return Err(format!(
                    "{name} is {} bytes, the manifest records {}",
                    m.len(),
                    a.size
                ))
            }
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok(())
}

/// Sync every artefact of the build directory `tmp`, record its size and sha256 in `img`, write
/// the manifest (synced) and sync the directory: after this, renaming `tmp` publishes a complete
/// image even across a power loss.
pub(crate) fn seal(tmp: &Path, img: &mut Image) -> Result<(), GuestError> {
    img.artefacts = BTreeMap::new();
    for name in ARTEFACT_FILES {
        let path = tmp.join(name);
        if !path.exists() {
            continue;
        }
        let f = fs::File::open(&path).map_err(|e| GuestError::io("opening", &path, e))?;
        f.sync_all()
            .map_err(|e| GuestError::io("syncing", &path, e))?;
        let (size, sha256) = hash_file(&path)?;
        img.artefacts
            .insert(name.to_string(), Artefact { size, sha256 });
    }
    let manifest = serde_json::to_vec_pretty(img).unwrap_or_default();
    crate::image::write_synced(&tmp.join(MANIFEST), &manifest)?;
    sync_dir(tmp)
}

/// fsync a directory (its entries: new names, renames).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), GuestError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| GuestError::io("syncing directory", dir, e))
}

/// Size and hex sha256 of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(u64, String), GuestError> {
    let mut f = fs::File::open(path).map_err(|e| GuestError::io("opening", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| GuestError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((
        size,
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// The state of one cache entry found by [`verify_cache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyStatus {
    /// Every recorded file has its recorded size and sha256.
    Ok,
    /// Something does not match (each problem names the file); the entry will be rebuilt.
    Damaged(Vec<String>),
}

/// The verdict on one image directory of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The image directory (`<cache>/images/<hash>`).
    pub dir: PathBuf,
    /// The image's name from its manifest (`bookworm+curl`), if the manifest could be read.
    pub image: Option<String>,
    /// Bytes hashed.
    pub bytes: u64,
    /// The verdict.
    pub status: VerifyStatus,
    /// Whether the damaged entry was removed (with `repair`), so the next use rebuilds it.
    pub removed: bool,
}

impl VerifyReport {
    /// Is the entry intact?
    pub fn is_ok(&self) -> bool {
        self.status == VerifyStatus::Ok
    }

    /// One line for a terminal: `ok bookworm-base (1.6 GiB) /path` or
    /// `DAMAGED bookworm-base /path: rootfs.img: sha256 ... (removed)`.
    pub fn line(&self) -> String {
        let name = self.image.as_deref().unwrap_or("?");
        match &self.status {
            VerifyStatus::Ok => format!(
                "ok {name} ({:.1} MiB) {}",
                self.bytes as f64 / (1024.0 * 1024.0),
                self.dir.display()
            ),
            VerifyStatus::Damaged(p) => format!(
                "DAMAGED {name} {}: {}{}",
                self.dir.display(),
                p.join("; "),
                if self.removed {
                    " (removed; the next use rebuilds it)"
                } else {
                    " (the next use rebuilds it if a size differs; remove the directory to force it)"
                }
            ),
        }
    }
}

/// Check the full sha256 of every file of every image in the cache at `cache_dir` (the directory
/// holding `images/`) against its manifest. With `repair`, damaged entries that no build is
/// writing are removed so the next use rebuilds them. Bootstrap trees and in-progress builds are
/// not images and are not listed. Returns one report per image directory, sorted by path.
pub fn verify_cache(cache_dir: &Path, repair: bool) -> Vec<VerifyReport> {
    let images = cache_dir.join("images");
    let Ok(rd) = fs::read_dir(&images) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && !n.starts_with("bootstrap-") && e.path().is_dir()
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let mut r = verify_entry(&dir);
            if repair && !r.is_ok() {
                r.removed = crate::image::remove_entry(&images, &dir);
            }
            r
        })
        .collect()
}

fn verify_entry(dir: &Path) -> VerifyReport {
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        image: None,
        bytes: 0,
        status: VerifyStatus::Ok,
        removed: false,
    };
    let damaged = |mut r: VerifyReport, p: Vec<String>| {
        r.status = VerifyStatus::Damaged(p);
        r
    };
    let img: Image = match fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(i) => i,
        Err(e) => return damaged(report, vec![format!("{MANIFEST}: {e}")]),
    };
    report.image = Some(img.spec.name());
    if img.artefacts.is_empty() {
        return damaged(
            report,
            vec![format!(
                "{MANIFEST} records no hashes (written by an older machinist)"
            )],
        );
    }
    let mut problems = Vec::new();
    for (name, a) in &img.artefacts {
        match hash_file(&dir.join(name)) {
            Ok((size, sha)) => {
                report.bytes += size;
                if size != a.size {
                    problems.push(format!("{name}: {size} bytes, recorded {}", a.size));
                } else if sha != a.sha256 {
                    problems.push(format!("{name}: sha256 {sha}, recorded {}", a.sha256));
                }
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if problems.is_empty() {
        report
    } else {
        damaged(report, problems)
    }
}

/// Give a run its own reference to the image file `disk` (e.g. [`Image::disk`]): a hard link
/// `<run_dir>/pinned-<cache entry>-<file name>` (a reflink or sparse copy when `run_dir` is on another
/// filesystem), created atomically, replacing an older pin of the same name. Create the
/// machine's overlay on the returned path: the overlay keeps working — across a crash and
/// restart too — even if the cache entry is rebuilt or pruned meanwhile.
///
/// If the manifest next to `disk` records its size, a different size is an error (the cache
/// entry is damaged: the next [`crate::ImageCache::ensure`] rebuilds it).
pub fn pin_image(disk: &Path, run_dir: &Path) -> Result<PathBuf, GuestError> {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GuestError::BadImage {
            image: disk.display().to_string(),
            what: "the image path has no file name".into(),
        })?;
    // Only an image cache entry is checked (another manifest, e.g. a warm-start snapshot's, is
    // not an image manifest and is left alone).
    if let Some(dir) = disk.parent() {
        let img = fs::read_to_string(dir.join(MANIFEST))
            .ok()
            .and_then(|t| serde_json::from_str::<Image>(&t).ok());
        if let Some(img) = img {
            if let Err(why) = check_sizes(dir, &img) {
                return Err(GuestError::BadImage {
                    image: format!("{} ({})", img.spec.name(), dir.display()),
                    what: format!("{why}; run again to rebuild it"),
                });
            }
        }
    }
    fs::create_dir_all(run_dir).map_err(|e| GuestError::io("creating", run_dir, e))?;
    // Named after the cache entry too, so pins of different images in one run dir never collide.
    let entry = disk
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| format!("{}-", n.to_string_lossy()))
        .unwrap_or_default();
    let name = format!("{entry}{name}");
    let dest = run_dir.join(format!("pinned-{name}"));
    let tmp = run_dir.join(format!(".pinned-{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(disk, &tmp).is_err() {
        copy_sparse(disk, &tmp)?;
    }
    fs::rename(&tmp, &dest).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        GuestError::io("pinning the image as", &dest, e)
    })?;
    Ok(dest)
}

/// Copy `src` to `dst` as cheaply as the filesystem allows: a reflink where supported, else a
/// sparse copy (`cp --reflink=auto --sparse=always`, supervised).
pub(crate) fn copy_sparse(src: &Path, dst: &Path) -> Result<(), GuestError> {
    let mut cmd = std::process::Command::new("cp");
    cmd.args(["--reflink=auto", "--sparse=always", "--"])
        .arg(src)
        .arg(dst);
    let out = crate::supervise::output(&cmd, QUICK_DEADLINE).map_err(|e| GuestError::Io {
        context: format!("copying {} to", src.display()),
        path: dst.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if !out.status.success() {
        let _ = fs::remove_file(dst);
        return Err(GuestError::Io {
            context: format!("copying {} to", src.display()),
            path: dst.to_path_buf(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}
