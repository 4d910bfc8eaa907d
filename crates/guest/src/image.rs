//! Images: a base rootfs built with mmdebstrap, derived images with extra packages built from
//! the cached base, a content-addressed cache with atomic publish and a per-image lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machinist_qemu::cache_entries::touch_last_use;
use machinist_qemu::publish::{lock_path, CacheLock, Staging};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backdoor_files::backdoor_files;
use crate::error::GuestError;
use crate::integrity::{inspect_entry, seal, Entry};
use crate::progress::Progress;
use crate::tuning::{self, Profile, Step};

/// Default Debian suite.
pub const DEFAULT_SUITE: &str = "bookworm";

/// apt sources used for every image (`{suite}` is replaced).
pub const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
    "deb http://deb.debian.org/debian {suite}-updates main",
];

/// mmdebstrap options besides packages, suite and mirrors.
pub const MMDEBSTRAP_OPTIONS: &[&str] = &[
    "--variant=minbase",
    "--components=main",
    "--aptopt=Acquire::Languages \"none\"",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
];

/// The shell recipe run (in a private mount namespace) to add packages to a copy of the base.
pub const DERIVED_RECIPE: &str = r#"set -eu
T=$1; shift
mount -t proc proc "$T/proc"
printf '#!/bin/sh\nexit 101\n' > "$T/usr/sbin/policy-rc.d"; chmod 755 "$T/usr/sbin/policy-rc.d"
chroot "$T" apt-get update -q
chroot "$T" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
chroot "$T" apt-get clean
rm -f "$T/usr/sbin/policy-rc.d"
umount "$T/proc"
"#;

/// Rebuild Debian's initramfs of stock images so it contains the apply-layer hook.
pub const STOCK_INITRAMFS_RECIPE: &str = r#"set -eu
T=$1
mount -t proc proc "$T/proc"
chroot "$T" update-initramfs -u -k all
umount "$T/proc"
"#;

/// Deadline of one external build step (mmdebstrap, apt-get, mkfs).
pub const STEP_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Deadline of a quick external command (qemu-img create, umount, cp of one image file).
pub const QUICK_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// Free space needed before a build starts.
pub const NEEDED_FREE_MIB: u64 = 3 * 1024;

/// What an image contains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Debian suite (default bookworm).
    pub suite: String,
    /// Extra packages on top of the base image (empty = the base image).
    pub packages: BTreeSet<String>,
    /// Boot tuning profile.
    #[serde(default)]
    pub profile: Profile,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec::base()
    }
}

impl ImageSpec {
    /// The tuned base image of the default suite.
    pub fn base() -> Self {
        ImageSpec {
            suite: DEFAULT_SUITE.into(),
            packages: BTreeSet::new(),
            profile: Profile::Tuned,
        }
    }

    /// The base image plus `packages`.
    pub fn with_packages<I, S>(packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ImageSpec {
            packages: packages.into_iter().map(Into::into).collect(),
            ..ImageSpec::base()
        }
    }

    /// The image for a node configuration.
    pub fn for_node(cfg: &crate::NodeConfig) -> Self {
        ImageSpec::with_packages(cfg.packages.iter().cloned())
    }

    /// Set the profile.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The spec of the base this image derives from (itself if it is a base).
    pub fn base_spec(&self) -> ImageSpec {
        ImageSpec {
            suite: self.suite.clone(),
            packages: BTreeSet::new(),
            profile: self.profile,
        }
    }

    /// Is this a base image (no extra packages)?
    pub fn is_base(&self) -> bool {
        self.packages.is_empty()
    }

    /// A short human name: `bookworm-base`, `bookworm+curl`, `bookworm-stock+postgresql`.
    pub fn name(&self) -> String {
        let mut n = self.suite.clone();
        if self.profile == Profile::Stock {
            n.push_str("-stock");
        }
        if self.packages.is_empty() {
            n.push_str("-base");
        } else {
            for p in &self.packages {
                n.push('+');
                n.push_str(p);
            }
        }
        n
    }

    fn base_package_list(&self) -> Vec<String> {
        let mut v: Vec<String> = tuning::BASE_PACKAGES
            .iter()
            .map(|s| s.to_string())
            .collect();
        if self.profile == Profile::Stock {
            v.extend(tuning::STOCK_EXTRA_PACKAGES.iter().map(|s| s.to_string()));
        }
        v
    }

    fn mirrors(&self) -> Vec<String> {
        MIRRORS
            .iter()
            .map(|m| m.replace("{suite}", &self.suite))
            .collect()
    }

    /// The hash of the mmdebstrap output alone (suite, mirrors, options, packages): the
    /// bootstrap tree is cached under it, so changing a guest script only re-runs the fast steps.
    pub fn bootstrap_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"machinist-guest bootstrap tree\0");
        h.update(self.suite.as_bytes());
        h.update(b"\0");
        for s in self.mirrors() {
            h.update(s.as_bytes());
            h.update(b"\0");
        }
        for s in MMDEBSTRAP_OPTIONS {
            h.update(s.as_bytes());
            h.update(b"\0");
        }
        for p in self.base_package_list() {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        hex(&h.finalize())
    }

    /// The content hash (hex sha256) of the base recipe, before the machine-id is derived from it.
    fn base_recipe_hash(&self) -> Result<String, GuestError> {
        let mut h = Sha256::new();
        h.update(b"machinist-guest base image\0");
        h.update(self.bootstrap_hash().as_bytes());
        h.update(self.profile.as_str());
        let steps = tuning::steps(self.profile, &backdoor_files(), "MACHINE-ID");
        h.update(serde_json::to_vec(&steps).unwrap_or_default());
        if self.profile == Profile::Stock {
            h.update(STOCK_INITRAMFS_RECIPE.as_bytes());
        }
        h.update(crate::initrd::hash_inputs()?);
        Ok(hex(&h.finalize()))
    }

    /// The content hash of this image (hex). Covers suite, packages, mirrors, every file and
    /// script the build installs (backdoor, apply-layer, tuning, initrd init, busybox).
    pub fn hash(&self) -> Result<String, GuestError> {
        let base = self.base_recipe_hash()?;
        if self.is_base() {
            return Ok(base);
        }
        let mut h = Sha256::new();
        h.update(b"machinist-guest derived image\0");
        h.update(base.as_bytes());
        h.update(DERIVED_RECIPE.as_bytes());
        for p in &self.packages {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        Ok(hex(&h.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A built image in the cache. Never write to its files: use it as a qcow2 backing file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// What it contains.
    pub spec: ImageSpec,
    /// Content hash (the cache directory name).
    pub hash: String,
    /// The cache directory.
    pub dir: PathBuf,
    /// Raw ext4 root filesystem (read-only backing file).
    pub disk: PathBuf,
    /// Kernel for `-kernel`.
    pub kernel: PathBuf,
    /// Our tiny initramfs for `-initrd` (append the node layer with [`crate::NodeLayer::to_cpio`]).
    pub initrd: PathBuf,
    /// Debian's own initramfs (kept for the baseline benchmark).
    pub debian_initrd: Option<PathBuf>,
    /// Kernel version.
    pub kernel_version: String,
    /// Seconds the build took (0 if unknown).
    pub build_seconds: f64,
    /// Size and sha256 of every file of the image (`rootfs.img`, `vmlinuz`, ...), recorded when
    /// it was published. The sizes are checked on every use, the hashes by [`crate::verify_cache`].
    #[serde(default)]
    pub artefacts: BTreeMap<String, Artefact>,
}

/// One file of a cached image as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artefact {
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256 of the contents.
    pub sha256: String,
}

impl Image {
    /// Create a per-VM qcow2 overlay at `path` backed by this image
    /// (`qemu-img create -f qcow2 -b <disk> -F raw`). Prefer [`Image::create_pinned_overlay`]:
    /// an overlay backed by the cache entry itself breaks when that entry is rebuilt or pruned.
    pub fn create_overlay(&self, path: &Path) -> Result<(), GuestError> {
        self.overlay_on(&self.disk, path)
    }

    /// Pin this image's disk into `run_dir` ([`crate::pin_image`]) and create the qcow2 overlay
    /// `path` on the pin. The machine keeps using exactly this image — across a crash and
    /// restart too — whatever happens to the cache entry. Returns the pinned backing file.
    pub fn create_pinned_overlay(
        &self,
        run_dir: &Path,
        path: &Path,
    ) -> Result<PathBuf, GuestError> {
        let pinned = crate::integrity::pin_image(&self.disk, run_dir)?;
        self.overlay_on(&pinned, path)?;
        Ok(pinned)
    }

    fn overlay_on(&self, backing: &Path, path: &Path) -> Result<(), GuestError> {
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(backing)
            .arg(path);
        let out = crate::supervise::output(&cmd, QUICK_DEADLINE)
            .map_err(|e| supervise_error(e, &self.spec.name(), "qemu-img create", "qemu-utils"))?;
        if !out.status.success() {
            return Err(GuestError::BuildStep {
                image: self.spec.name(),
                step: format!("qemu-img create {}", path.display()),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// An identifier of this build's exact bytes: the recipe [`Image::hash`] plus the recorded
    /// sha256 of every artefact. Two builds of one recipe differ (mkfs UUIDs, timestamps), so key
    /// anything derived from the image's bytes (e.g. a warm-start snapshot whose disk is an
    /// overlay on it) on this, not on `hash`: a rebuild of the entry then invalidates it.
    pub fn content_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.hash.as_bytes());
        for (name, a) in &self.artefacts {
            h.update(b"\0");
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(a.sha256.as_bytes());
        }
        hex(&h.finalize())
    }

    /// Write our initrd with `layer` appended to `path` (the kernel unpacks both archives).
    pub fn write_initrd_with_layer(
        &self,
        layer: &crate::NodeLayer,
        path: &Path,
    ) -> Result<(), GuestError> {
        self.write_initrd_with(&self.initrd, layer, path)
    }

    /// Like [`Image::write_initrd_with_layer`] but from an explicit base initrd (e.g. Debian's).
    pub fn write_initrd_with(
        &self,
        base: &Path,
        layer: &crate::NodeLayer,
        path: &Path,
    ) -> Result<(), GuestError> {
        let mut data = fs::read(base).map_err(|e| GuestError::io("reading initrd", base, e))?;
        // Each archive must start 4-byte aligned.
        while data.len() % 4 != 0 {
            data.push(0);
        }
        data.extend_from_slice(&layer.to_cpio()?);
        fs::write(path, data).map_err(|e| GuestError::io("writing initrd", path, e))
    }
}

/// The image cache under `<cache>/images/<hash>/`.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
    rebuild: bool,
}

/// The images the bundled tests need: `base`, `server` (postgresql), `client` (curl).
pub fn bundled_specs() -> Vec<(&'static str, ImageSpec)> {
    vec![
        ("base", ImageSpec::base()),
        ("server", ImageSpec::with_packages(["postgresql"])),
        ("client", ImageSpec::with_packages(["curl"])),
    ]
}

/// The machinist cache directory, shared by every crate: `$MACHINIST_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/machinist`, else `~/.cache/machinist` ([`machinist_qemu::cache_dir`]).
pub fn default_cache_dir() -> PathBuf {
    machinist_qemu::cache_dir()
}

pub(crate) const MANIFEST: &str = "manifest.json";

/// The files an image directory may hold besides its manifest (`initrd-debian.img`: stock only).
pub const ARTEFACT_FILES: &[&str] = &["rootfs.img", "vmlinuz", "initrd.img", "initrd-debian.img"];

impl ImageCache {
    /// A cache rooted at `cache_dir` (images go to `<cache_dir>/images/`).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ImageCache {
            root: cache_dir.into(),
            rebuild: false,
        }
    }

    /// A cache at [`default_cache_dir`].
    pub fn from_env() -> Self {
        Self::new(default_cache_dir())
    }

    /// Rebuild images (and their bootstrap tree) even when cached: each at most once per process,
    /// so images sharing a base or bootstrap tree do not rebuild it again.
    pub fn rebuild(mut self, on: bool) -> Self {
        self.rebuild = on;
        self
    }

    /// Remove cache entries (images and bootstrap trees) that none of `keep` uses, e.g. left
    /// behind by older guest scripts. Returns the removed directories. Entries being built
    /// (locked) are skipped; VMs already running on a removed image keep working (open files).
    pub fn prune_except(&self, keep: &[ImageSpec]) -> Result<Vec<PathBuf>, GuestError> {
        let mut names = BTreeSet::new();
        for spec in keep {
            names.insert(spec.hash()?);
            names.insert(spec.base_spec().hash()?);
            names.insert(format!("bootstrap-{}", spec.bootstrap_hash()));
        }
        let images = self.images_dir();
        let mut removed = Vec::new();
        let Ok(rd) = fs::read_dir(&images) else {
            return Ok(removed);
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') || names.contains(&n) || !e.path().is_dir() {
                continue;
            }
            if remove_entry(&images, &e.path()) {
                removed.push(e.path());
            }
        }
        Ok(removed)
    }

    /// Check the full sha256 of every cached image against its manifest (see [`crate::verify_cache`]).
    pub fn verify(&self, repair: bool) -> Vec<crate::VerifyReport> {
        crate::verify_cache(&self.root, repair)
    }

    /// `<cache>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The cached image for `spec`, if present and intact (never builds). An entry whose files
    /// do not have the sizes its manifest records is not returned.
    pub fn lookup(&self, spec: &ImageSpec) -> Result<Option<Image>, GuestError> {
        let hash = spec.hash()?;
        Ok(match inspect_entry(&self.images_dir().join(&hash)) {
            Entry::Intact(img) => Some(used(img)),
            Entry::Missing | Entry::Damaged(_) => None,
        })
    }

    /// Return the cached image for `spec`, building it (and its base) first if needed.
    /// Concurrent callers for the same image wait for one build. A cache hit takes milliseconds.
    pub fn ensure(&self, spec: &ImageSpec, progress: Progress) -> Result<Image, GuestError> {
        let hash = spec.hash()?;
        let dir = self.images_dir().join(&hash);
        if !self.rebuild {
            if let Entry::Intact(img) = inspect_entry(&dir) {
                return Ok(used(img));
            }
        }
        let images = self.images_dir();
        fs::create_dir_all(&images)
            .map_err(|e| GuestError::io("creating cache directory", &images, e))?;
        let _lock = lock_image(&images, &hash, &spec.name(), progress)?;
        if !self.rebuild {
            match inspect_entry(&dir) {
                Entry::Intact(img) => return Ok(used(img)),
                Entry::Damaged(why) => {
                    let line = format!(
                        "image {}: cache entry {} is damaged ({why}); rebuilding it",
                        spec.name(),
                        dir.display()
                    );
                    tracing::warn!("{line}");
                    progress.line(&line);
                }
                Entry::Missing => {}
            }
        }
        // Leftovers of interrupted builds of this image (we hold its lock, so they are stale).
        remove_stale(&images, &hash);
        check_free_space(&images, &spec.name())?;
        let staging = Staging::with_remover(&images, &hash, safe_remove_dir_all)?;
        let tmp = staging.path();
        let start = Instant::now();
        let result = if spec.is_base() {
            self.build_base(spec, &hash, tmp, progress)
        } else {
            let base = self.ensure(&spec.base_spec(), progress)?;
            self.build_derived(spec, &base, tmp, progress)
        };
        let kernel_version = result?;
        let mut img = Image {
            spec: spec.clone(),
            hash: hash.clone(),
            dir: dir.clone(),
            disk: dir.join("rootfs.img"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            debian_initrd: tmp
                .join("initrd-debian.img")
                .exists()
                .then(|| dir.join("initrd-debian.img")),
            kernel_version,
            build_seconds: start.elapsed().as_secs_f64(),
            artefacts: BTreeMap::new(),
        };
        let phase = progress.phase(&spec.name(), "publish");
        seal(tmp, &mut img)?;
        staging.publish(&dir)?;
        touch_last_use(&dir);
        phase.finish();
        img.build_seconds = start.elapsed().as_secs_f64();
        self.empty_trash();
        progress.line(&format!(
            "image {}: built in {:.1} s ({})",
            spec.name(),
            img.build_seconds,
            dir.display()
        ));
        Ok(img)
    }

    /// The cached mmdebstrap output for `spec`'s base (built if missing): `<cache>/images/bootstrap-<hash>/tree`.
    fn ensure_bootstrap(
        &self,
        spec: &ImageSpec,
        progress: Progress,
    ) -> Result<PathBuf, GuestError> {
        let bhash = spec.bootstrap_hash();
        let images = self.images_dir();
        let key = format!("bootstrap-{bhash}");
        let dir = images.join(&key);
        let done = dir.join("tree/.machinist-bootstrap-complete");
        let rebuild = self.rebuild && !REBUILT.lock().map(|s| s.contains(&key)).unwrap_or(false);
        if done.exists() && !rebuild {
            touch_last_use(&dir);
            return Ok(dir.join("tree"));
        }
        let name = format!("{}-bootstrap", spec.suite);
        let _lock = lock_image(&images, &key, &name, progress)?;
        let rebuild = take_rebuild(rebuild, &key);
        if done.exists() && !rebuild {
            touch_last_use(&dir);
            return Ok(dir.join("tree"));
        }
        remove_stale(&images, &key);
        require_tool("mmdebstrap", "mmdebstrap")?;
        let staging = Staging::with_remover(&images, &key, safe_remove_dir_all)?;
        let tmp = staging.path();
        let tree = tmp.join("tree");
        let phase = progress.phase(&name, "mmdebstrap");
        // In a private mount namespace: mounts mmdebstrap makes die with it, even on SIGKILL.
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "mmdebstrap"])
            .args(MMDEBSTRAP_OPTIONS)
            .arg(format!("--include={}", spec.base_package_list().join(",")))
            .arg(&spec.suite)
            .arg(&tree)
            .args(spec.mirrors());
        run_logged(&mut cmd, &tmp.join("build.log"), &name, "mmdebstrap", &tree)?;
        // The tree is durable before it is marked complete.
        syncfs(&tree)?;
        write_synced(&tree.join(".machinist-bootstrap-complete"), b"")?;
        staging.publish(&dir)?;
        touch_last_use(&dir);
        phase.finish();
        Ok(dir.join("tree"))
    }

    /// Move a finished build tree out of the way; it is deleted after the image is published.
    fn discard_tree(&self, tree: &Path) -> Result<(), GuestError> {
        let trash = self.images_dir().join(format!(
            ".trash-{}-{}",
            std::process::id(),
            TRASH_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::rename(tree, &trash).map_err(|e| GuestError::io("moving build tree aside", tree, e))
    }

    fn empty_trash(&self) {
        let Ok(rd) = fs::read_dir(self.images_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!(".trash-{}-", std::process::id())) {
                safe_remove_dir_all(&e.path());
            }
        }
    }

    fn copy_bootstrap(
        &self,
        spec: &ImageSpec,
        tree: &Path,
        log: &Path,
        progress: Progress,
    ) -> Result<(), GuestError> {
        let bootstrap = self.ensure_bootstrap(spec, progress)?;
        let phase = progress.phase(&spec.name(), "copy bootstrap tree");
        let mut cmd = Command::new("cp");
        cmd.args(["-a", "--reflink=auto"]).arg(&bootstrap).arg(tree);
        run_logged(&mut cmd, log, &spec.name(), "cp -a bootstrap tree", tree)?;
        let _ = fs::remove_file(tree.join(".machinist-bootstrap-complete"));
        phase.finish();
        Ok(())
    }

    fn build_base(
        &self,
        spec: &ImageSpec,
        hash: &str,
        tmp: &Path,
        progress: Progress,
    ) -> Result<String, GuestError> {
        let name = spec.name();
        let tree = tmp.join("tree");
        let log = tmp.join("build.log");
        require_tool("mkfs.ext4", "e2fsprogs")?;
        self.copy_bootstrap(spec, &tree, &log, progress)?;

        let phase = progress.phase(&name, "customize");
        let machine_id = &hash[..32];
        apply_steps(
            &tree,
            &tuning::steps(spec.profile, &backdoor_files(), machine_id),
            &name,
        )?;
        set_empty_root_password(&tree, &name)?;
        if spec.profile == Profile::Stock {
            let mut cmd = Command::new("unshare");
            cmd.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                STOCK_INITRAMFS_RECIPE,
                "sh",
            ])
            .arg(&tree);
            run_logged(&mut cmd, &log, &name, "update-initramfs", &tree)?;
        }
        phase.finish();

        let kv = self.export_boot_files(spec, &tree, tmp, progress)?;
        make_ext4(&tree, &tmp.join("rootfs.img"), &log, &name, progress)?;
        self.discard_tree(&tree)?;
        Ok(kv)
    }

    fn export_boot_files(
        &self,
        spec: &ImageSpec,
        tree: &Path,
        tmp: &Path,
        progress: Progress,
    ) -> Result<String, GuestError> {
        let name = spec.name();
        let phase = progress.phase(&name, "kernel + tiny initrd");
        let kv = crate::initrd::kernel_version(tree, &name)?;
        let boot = tree.join("boot");
        let vmlinuz = boot.join(format!("vmlinuz-{kv}"));
        fs::copy(&vmlinuz, tmp.join("vmlinuz"))
            .map_err(|e| GuestError::io("copying kernel", &vmlinuz, e))?;
        let deb_initrd = boot.join(format!("initrd.img-{kv}"));
        if deb_initrd.exists() {
            if spec.profile == Profile::Stock {
                fs::copy(&deb_initrd, tmp.join("initrd-debian.img"))
                    .map_err(|e| GuestError::io("copying Debian initrd", &deb_initrd, e))?;
            } else {
                // Not used by tuned images (the tiny initrd is); saves ~30 MB per image.
                let _ = fs::remove_file(&deb_initrd);
            }
        }
        let cpio = crate::initrd::build(tree, &name)?;
        write_synced(&tmp.join("initrd.img"), &cpio)?;
        phase.finish();
        Ok(kv)
    }

    fn build_derived(
        &self,
        spec: &ImageSpec,
        base: &Image,
        tmp: &Path,
        progress: Progress,
    ) -> Result<String, GuestError> {
        let name = spec.name();
        let tree = tmp.join("tree");
        let log = tmp.join("build.log");
        self.copy_bootstrap(spec, &tree, &log, progress)?;

        let phase = progress.phase(&name, "apt-get install");
        let resolv = tree.join("etc/resolv.conf");
        let _ = fs::remove_file(&resolv);
        fs::copy("/etc/resolv.conf", &resolv)
            .map_err(|e| GuestError::io("copying", "/etc/resolv.conf", e))?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            DERIVED_RECIPE,
            "sh",
        ])
        .arg(&tree)
        .args(&spec.packages);
        run_logged(&mut cmd, &log, &name, "apt-get install", &tree)?;
        phase.finish();

        let phase = progress.phase(&name, "customize");
        let machine_id = &base.hash[..32];
        apply_steps(
            &tree,
            &tuning::steps(spec.profile, &backdoor_files(), machine_id),
            &name,
        )?;
        set_empty_root_password(&tree, &name)?;
        phase.finish();
        let kv = self.export_boot_files(spec, &tree, tmp, progress)?;
        make_ext4(&tree, &tmp.join("rootfs.img"), &log, &name, progress)?;
        self.discard_tree(&tree)?;
        Ok(kv)
    }
}

/// Cache keys rebuilt by this process (so `rebuild(true)` rebuilds each image and the bootstrap
/// tree at most once per process, even when several images share them).
static REBUILT: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

fn take_rebuild(flag: bool, key: &str) -> bool {
    flag && REBUILT
        .lock()
        .map(|mut s| s.insert(key.to_string()))
        .unwrap_or(false)
}

static TRASH_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Remove a build directory, but never through a mount point: if anything is still mounted
/// below it (a killed chroot step), lazily unmount it first and skip the removal if that fails.
fn safe_remove_dir_all(dir: &Path) {
    let Ok(canon) = fs::canonicalize(dir) else {
        return;
    };
    let prefix = canon.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &under {
        let mut cmd = Command::new("umount");
        cmd.args(["-l", m]);
        let ok = crate::supervise::run(&cmd, Stdio::null(), Stdio::null(), QUICK_DEADLINE)
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            tracing::warn!("not removing {}: {m} is still mounted", dir.display());
            return;
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// Marks a cached image as used now (the cache's least-recently-used clean-up reads it).
fn used(img: Box<Image>) -> Image {
    touch_last_use(&img.dir);
    *img
}

/// Remove the cache entry `dir` (in `images`) unless a build holds its lock; true if removed.
pub(crate) fn remove_entry(images: &Path, dir: &Path) -> bool {
    let Some(n) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return false;
    };
    match CacheLock::try_acquire(lock_path(images, &n)) {
        Ok(Some(lock)) => {
            safe_remove_dir_all(dir);
            // Removed while held: a waiter that opened it locks the new file instead.
            let _ = fs::remove_file(lock.path());
            !dir.exists()
        }
        Ok(None) | Err(_) => false,
    }
}

fn remove_stale(images: &Path, hash: &str) {
    let Ok(rd) = fs::read_dir(images) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let dead_trash = n
            .strip_prefix(".trash-")
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            });
        if dead_trash
            || n.starts_with(&format!(".tmp-{hash}-"))
            || n.starts_with(&format!(".old-{hash}-"))
        {
            safe_remove_dir_all(&e.path());
        }
    }
}

/// Takes the build lock of cache entry `key`, telling `progress` once if another build holds it.
fn lock_image(
    images: &Path,
    key: &str,
    name: &str,
    progress: Progress,
) -> Result<CacheLock, GuestError> {
    Ok(CacheLock::acquire(
        lock_path(images, key),
        STEP_DEADLINE * 2,
        || {
            progress.line(&format!(
                "image {name}: waiting for another build of it to finish"
            ))
        },
    )?)
}

fn check_free_space(dir: &Path, image: &str) -> Result<(), GuestError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| GuestError::io("statvfs", dir, std::io::Error::from(e)))?;
    let free_mib = st.blocks_available() as u64 * st.fragment_size() as u64 / (1024 * 1024);
    if free_mib < NEEDED_FREE_MIB {
        return Err(GuestError::DiskFull {
            image: image.into(),
            path: dir.to_path_buf(),
            detail: format!("only {free_mib} MiB free"),
            needed_mib: NEEDED_FREE_MIB,
        });
    }
    Ok(())
}

fn tool_error(tool: &str, package: &str, e: std::io::Error) -> GuestError {
    if e.kind() == std::io::ErrorKind::NotFound {
        GuestError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        }
    } else {
        GuestError::io(format!("running {tool}"), tool, e)
    }
}

fn supervise_error(
    e: crate::supervise::SuperviseError,
    image: &str,
    step: &str,
    package: &str,
) -> GuestError {
    use crate::supervise::SuperviseError as S;
    match e {
        S::Spawn { program, source } => tool_error(&program, package, source),
        S::Timeout { seconds, .. } => GuestError::Timeout {
            what: format!("image {image}: {step} (its process group was killed)"),
            seconds,
        },
        S::Wait { program, source } => GuestError::io(
            format!("image {image}: waiting for {step}"),
            program,
            source,
        ),
    }
}

fn require_tool(tool: &str, package: &str) -> Result<(), GuestError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(GuestError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        })
    }
}

/// Flush the whole filesystem holding `path` (a tree of thousands of files, e.g. mmdebstrap's).
fn syncfs(path: &Path) -> Result<(), GuestError> {
    let f = fs::File::open(path).map_err(|e| GuestError::io("opening", path, e))?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(GuestError::io(
            "syncing the filesystem of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), GuestError> {
    let mut f = fs::File::create(path).map_err(|e| map_write_err(path, e))?;
    f.write_all(data).map_err(|e| map_write_err(path, e))?;
    f.sync_all().map_err(|e| map_write_err(path, e))
}

fn map_write_err(path: &Path, e: std::io::Error) -> GuestError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        GuestError::DiskFull {
            image: String::new(),
            path: path.to_path_buf(),
            detail: e.to_string(),
            needed_mib: NEEDED_FREE_MIB,
        }
    } else {
        GuestError::io("writing", path, e)
    }
}

/// Run `cmd` with output appended to `log`, with a deadline; map apt/disk errors.
fn run_logged(
    cmd: &mut Command,
    log: &Path,
    image: &str,
    step: &str,
    workdir: &Path,
) -> Result<(), GuestError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let start_len = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| GuestError::io("opening build log", log, e))?;
    let logf2 = logf
        .try_clone()
        .map_err(|e| GuestError::io("opening build log", log, e))?;
    // Its own process group, killed as a whole on timeout or when this thread dies.
    let status = crate::supervise::run(cmd, logf.into(), logf2.into(), STEP_DEADLINE)
        .map_err(|e| supervise_error(e, image, step, &program))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(start_len as usize).min(text.len())..]).into_owned();
    Err(classify_failure(
        &text,
        image,
        step,
        &status.to_string(),
        workdir,
    ))
}

/// Turn a failed step's output into the most helpful error.
pub fn classify_failure(
    output: &str,
    image: &str,
    step: &str,
    status: &str,
    workdir: &Path,
) -> GuestError {
    for line in output.lines() {
        let l = line.trim();
        let pkg = l
            .strip_prefix("E: Unable to locate package ")
            .map(|p| p.trim().to_string())
            .or_else(|| {
                l.strip_prefix("E: Package '")
                    .and_then(|r| r.split_once('\''))
                    .filter(|(_, rest)| rest.contains("no installation candidate"))
                    .map(|(p, _)| p.to_string())
            });
        if let Some(package) = pkg {
            return GuestError::UnknownPackage {
                image: image.into(),
                package,
                apt_message: l.to_string(),
            };
        }
    }
    if let Some(l) = output
        .lines()
        .find(|l| l.contains("No space left on device"))
    {
        return GuestError::DiskFull {
            image: image.into(),
            path: workdir.to_path_buf(),
            detail: format!("{step}: {}", l.trim()),
            needed_mib: NEEDED_FREE_MIB,
        };
    }
    let lines: Vec<&str> = output.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    GuestError::BuildStep {
        image: image.into(),
        step: step.into(),
        status: status.into(),
        output: tail,
    }
}

fn apply_steps(tree: &Path, steps: &[Step], image: &str) -> Result<(), GuestError> {
    for step in steps {
        match step {
            Step::File {
                path,
                contents,
                mode,
            } => {
                let p = tree.join(path.trim_start_matches('/'));
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| GuestError::io("creating", parent, e))?;
                }
                let _ = fs::remove_file(&p);
                fs::write(&p, contents).map_err(|e| map_write_err(&p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .map_err(|e| GuestError::io("chmod", &p, e))?;
            }
            Step::Symlink { path, target } => {
                let p = tree.join(path.trim_start_matches('/'));
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| GuestError::io("creating", parent, e))?;
                }
                let _ = fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p)
                    .map_err(|e| GuestError::io("symlink", &p, e))?;
            }
            Step::Remove { path } => {
                let p = tree.join(path.trim_start_matches('/'));
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        fs::remove_dir_all(&p).map_err(|e| GuestError::io("removing", &p, e))?
                    }
                    Ok(_) => fs::remove_file(&p).map_err(|e| GuestError::io("removing", &p, e))?,
                    Err(_) => {}
                }
            }
        }
    }
    let _ = image;
    Ok(())
}

fn set_empty_root_password(tree: &Path, image: &str) -> Result<(), GuestError> {
    let p = tree.join("etc/shadow");
    let text = fs::read_to_string(&p).map_err(|e| GuestError::io("reading", &p, e))?;
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.first() == Some(&"root") && f.len() > 2 {
                found = true;
                f[1] = "";
                f.join(":")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        return Err(GuestError::BadImage {
            image: image.into(),
            what: "no root entry in /etc/shadow".into(),
        });
    }
    fs::write(&p, out.join("\n") + "\n").map_err(|e| GuestError::io("writing", &p, e))
}

fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512 + 256;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn make_ext4(
    tree: &Path,
    img: &Path,
    log: &Path,
    image: &str,
    progress: Progress,
) -> Result<(), GuestError> {
    let phase = progress.phase(image, "mkfs.ext4 -d");
    let used = tree_bytes(tree);
    // Room for the test's own writes (they land in the qcow2 overlay, but need free blocks).
    let mib = ((used as f64 * 1.3) as u64 / (1024 * 1024) + 1024).max(1536);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(img)
        .arg(format!("{mib}M"));
    run_logged(&mut cmd, log, image, "mkfs.ext4", img)?;
    phase.finish();
    Ok(())
}
