//! A test kernel without a guest image: Debian's `linux-image-cloud-amd64` (or, for comparison,
//! the generic `linux-image-amd64`: [`KernelFlavour`]), fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` into the cache (no root needed), plus a tiny busybox initramfs
//! builder so any crate's tests can boot a real kernel in ~2 s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cache::cache_dir;
use crate::cache_entries::touch_last_use;
use crate::cpio::NewcWriter;
use crate::publish::{publish_dir, CacheLock, PublishError, Staging};

/// The Debian metapackage whose dependency is the versioned cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The Debian metapackage whose dependency is the versioned generic kernel.
pub const GENERIC_KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// Which Debian amd64 kernel to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KernelFlavour {
    /// `linux-image-cloud-amd64` (release `*-cloud-amd64`): virtio and little else; the kernel
    /// every test and image uses.
    #[default]
    Cloud,
    /// `linux-image-amd64` (release `*-amd64`): the generic distribution kernel, for comparison.
    Generic,
}

impl KernelFlavour {
    /// The Debian metapackage that depends on the current versioned kernel of this flavour.
    pub fn metapackage(self) -> &'static str {
        match self {
            KernelFlavour::Cloud => KERNEL_METAPACKAGE,
            KernelFlavour::Generic => GENERIC_KERNEL_METAPACKAGE,
        }
    }

    /// The flavour part of a kernel release (`6.1.0-57-cloud-amd64` -> `cloud-amd64`).
    fn release_tail(self) -> &'static str {
        match self {
            KernelFlavour::Cloud => "cloud-amd64",
            KernelFlavour::Generic => "amd64",
        }
    }

    /// Whether `release` (e.g. `6.1.0-57-amd64`) is a kernel of this flavour.
    pub fn matches_release(self, release: &str) -> bool {
        // <upstream>-<abi>-<flavour>: the flavour is everything after the second `-`.
        release.splitn(3, '-').nth(2) == Some(self.release_tail())
    }
}
/// Modules (with their dependencies resolved automatically) for a virtio console.
pub const VIRTIO_CONSOLE_MODULES: &[&str] = &["virtio_pci", "virtio_console"];
/// Kernel command line for booting a [`TinyInitramfs`] on the serial console.
pub const TINY_APPEND: &str = "console=ttyS0 panic=-1";

/// Errors while fetching the kernel or building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An external command failed.
    #[error("`{command}` failed: {message}; {hint}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or the OS error.
        message: String,
        /// What to do next.
        hint: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The package did not contain what was expected, or a module is missing.
    #[error("{0}")]
    Layout(String),
    /// Locking or publishing the kernel cache failed.
    #[error(transparent)]
    Cache(#[from] PublishError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let context = context.into();
    move |source| KernelError::Io { context, source }
}

/// An unpacked Debian kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestKernel {
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage to pass as `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules_dir: PathBuf,
    /// The unpacked package root.
    pub root: PathBuf,
}

/// Returns the cached Debian cloud kernel, downloading and unpacking it on first use into
/// `<cache_dir>/kernel/<release>/` (lock + atomic rename, safe across processes).
pub fn test_kernel() -> Result<TestKernel, KernelError> {
    test_kernel_in(&cache_dir().join("kernel"))
}

/// [`test_kernel`] with an explicit kernel cache directory.
pub fn test_kernel_in(dir: &Path) -> Result<TestKernel, KernelError> {
    test_kernel_of_in(KernelFlavour::Cloud, dir)
}

/// Like [`test_kernel`] for any [`KernelFlavour`] (same cache directory; releases of different
/// flavours have different names, so they sit side by side).
pub fn test_kernel_of(flavour: KernelFlavour) -> Result<TestKernel, KernelError> {
    test_kernel_of_in(flavour, &cache_dir().join("kernel"))
}

/// [`test_kernel_of`] with an explicit kernel cache directory.
pub fn test_kernel_of_in(flavour: KernelFlavour, dir: &Path) -> Result<TestKernel, KernelError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // Fast path, offline: the local apt lists name the current versioned package.
    let wanted = resolve_versioned_package_offline(flavour.metapackage());
    if let Some(pkg) = &wanted {
        if let Some(k) = cached(dir, release_of(pkg)) {
            return Ok(k);
        }
    }
    let _lock = CacheLock::acquire(dir.join(".lock"), LOCK_TIMEOUT, || {})?;
    if let Some(pkg) = &wanted {
        if let Some(k) = cached(dir, release_of(pkg)) {
            return Ok(k);
        }
    }
    match download(dir, flavour) {
        Ok(k) => Ok(k),
        Err(e) => {
            if let Some(k) = newest_cached(dir, flavour) {
                tracing::warn!(
                    "cannot refresh the test kernel ({e}); using cached {}",
                    k.release
                );
                Ok(k)
            } else {
                Err(e)
            }
        }
    }
}

/// How long to wait for another process downloading the kernel.
const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

fn release_of(pkg: &str) -> &str {
    pkg.strip_prefix("linux-image-").unwrap_or(pkg)
}

/// The cached kernel `release`, if complete (marked as used: see [`crate::cache_entries`]).
fn cached(dir: &Path, release: &str) -> Option<TestKernel> {
    let root = dir.join(release);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let modules_dir = root.join("lib/modules").join(release);
    if !(vmlinuz.is_file() && modules_dir.is_dir()) {
        return None;
    }
    touch_last_use(&root);
    Some(TestKernel {
        release: release.to_string(),
        vmlinuz,
        modules_dir,
        root,
    })
}

fn newest_cached(dir: &Path, flavour: KernelFlavour) -> Option<TestKernel> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && flavour.matches_release(n))
        .collect();
    names.sort();
    names.iter().rev().find_map(|n| cached(dir, n))
}

fn resolve_versioned_package_offline(metapackage: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "--important", metapackage])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_kernel_dep(&String::from_utf8_lossy(&out.stdout), metapackage)
}

/// Finds the first `linux-image-<release>` other than `metapackage` in a Depends field or
/// `apt-cache depends` output.
fn parse_kernel_dep(text: &str, metapackage: &str) -> Option<String> {
    text.split([',', '\n', '|'])
        .map(|s| s.trim().trim_start_matches("Depends:").trim())
        .map(|s| s.split_whitespace().next().unwrap_or(""))
        .find(|s| s.starts_with("linux-image-") && *s != metapackage)
        .map(str::to_string)
}

fn run(cmd: &mut Command, hint: &str) -> Result<String, KernelError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| KernelError::Command {
        command: line.clone(),
        message: e.to_string(),
        hint: hint.to_string(),
    })?;
    if !out.status.success() {
        return Err(KernelError::Command {
            command: line,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint: hint.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn download(dir: &Path, flavour: KernelFlavour) -> Result<TestKernel, KernelError> {
    let started = Instant::now();
    let staging = Staging::new(dir, "download")?;
    let result = download_into(dir, staging.path(), flavour.metapackage());
    drop(staging);
    if let Ok(k) = &result {
        tracing::info!(
            "test kernel {} unpacked into {} in {:.1}s",
            k.release,
            k.root.display(),
            started.elapsed().as_secs_f64()
        );
    }
    result
}

fn apt_download(tmp: &Path, pkg: &str) -> Result<PathBuf, KernelError> {
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(tmp).args(["download", "-q", pkg]);
    run(
        &mut cmd,
        "check the network and the apt sources (run `apt-get update` as root), or put a kernel \
         into the cache by hand",
    )?;
    let prefix = format!("{pkg}_");
    std::fs::read_dir(tmp)
        .map_err(io_err(format!("listing {}", tmp.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| KernelError::Layout(format!("apt-get download {pkg} produced no .deb")))
}

fn download_into(dir: &Path, tmp: &Path, metapackage: &str) -> Result<TestKernel, KernelError> {
    let meta = apt_download(tmp, metapackage)?;
    let depends = run(
        Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"),
        "dpkg-deb is part of the Debian package dpkg",
    )?;
    let pkg = parse_kernel_dep(&depends, metapackage).ok_or_else(|| {
        KernelError::Layout(format!(
            "{metapackage} depends on no linux-image package: {depends}"
        ))
    })?;
    let release = release_of(&pkg).to_string();
    if let Some(k) = cached(dir, &release) {
        return Ok(k);
    }
    let deb = apt_download(tmp, &pkg)?;
    let root = tmp.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb is part of the Debian package dpkg; check free disk space",
    )?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(KernelError::Layout(format!(
            "{pkg} has no boot/vmlinuz-{release}"
        )));
    }
    publish_dir(&root, &dir.join(&release), |p| {
        let _ = std::fs::remove_dir_all(p);
    })?;
    cached(dir, &release)
        .ok_or_else(|| KernelError::Layout(format!("{pkg} has no lib/modules/{release} directory")))
}

impl TestKernel {
    /// Index of module name (`-` normalised to `_`) to file.
    fn module_index(&self) -> Result<BTreeMap<String, PathBuf>, KernelError> {
        let mut map = BTreeMap::new();
        let mut stack = vec![self.modules_dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(io_err(format!("listing {}", d.display())))?;
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = n.strip_suffix(".ko") {
                        map.insert(stem.replace('-', "_"), p.clone());
                    }
                }
            }
        }
        Ok(map)
    }

    fn builtin(&self) -> BTreeSet<String> {
        std::fs::read_to_string(self.modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
            .map(|s| s.replace('-', "_"))
            .collect()
    }

    /// The `.ko` files for `names` and all their dependencies, in load order (dependencies
    /// first, no duplicates). Built-in modules are skipped; an unknown name is an error.
    pub fn modules_with_deps(&self, names: &[&str]) -> Result<Vec<(String, PathBuf)>, KernelError> {
        let index = self.module_index()?;
        let builtin = self.builtin();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            self.visit(
                &n.replace('-', "_"),
                &index,
                &builtin,
                &mut seen,
                &mut order,
                0,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<(), KernelError> {
        if seen.contains(name) || builtin.contains(name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(KernelError::Layout(format!(
                "module dependency loop at {name}"
            )));
        }
        let path = index.get(name).ok_or_else(|| {
            KernelError::Layout(format!(
                "kernel module `{name}` not found under {} (neither a module nor built in)",
                self.modules_dir.display()
            ))
        })?;
        let data = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        for dep in modinfo_depends(&data) {
            self.visit(&dep, index, builtin, seen, order, depth + 1)?;
        }
        seen.insert(name.to_string());
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
}

/// The `depends=` list from a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(pos) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[pos + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// What the tiny initramfs's `/init` does after printing its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterMarker {
    /// Sleep forever (the VM stays up until killed).
    #[default]
    Sleep,
    /// Run a busybox shell on ttyS0 (drive it with `QemuProcess::write_stdin`).
    Shell,
    /// Power off at once (`poweroff -f`; QEMU exits).
    Poweroff,
}

/// A minimal initramfs: static busybox, chosen kernel modules (dependencies resolved), and an
/// `/init` that mounts /dev, /proc, /sys, loads the modules, runs `script`, and prints `marker`
/// on ttyS0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyInitramfs {
    /// Printed on its own line on /dev/ttyS0 once init is ready.
    pub marker: String,
    /// Modules to load (names like `virtio_console`).
    pub modules: Vec<String>,
    /// Shell run before the marker (busybox `sh`).
    pub script: String,
    /// What happens after the marker.
    pub after: AfterMarker,
    /// The busybox binary to embed (must be static).
    pub busybox: PathBuf,
}

impl TinyInitramfs {
    /// An initramfs printing `marker` then sleeping, with no modules.
    pub fn new(marker: impl Into<String>) -> Self {
        TinyInitramfs {
            marker: marker.into(),
            modules: Vec::new(),
            script: String::new(),
            after: AfterMarker::Sleep,
            busybox: PathBuf::from("/bin/busybox"),
        }
    }

    /// Adds modules to load.
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Sets the script run before the marker.
    pub fn script(mut self, script: impl Into<String>) -> Self {
        self.script = script.into();
        self
    }

    /// Sets what happens after the marker.
    pub fn after(mut self, after: AfterMarker) -> Self {
        self.after = after;
        self
    }

    /// The `/init` script.
    pub fn init_script(&self, modules: &[String]) -> String {
        let after = match self.after {
            AfterMarker::Sleep => "while :; do sleep 3600; done",
            AfterMarker::Shell => "exec setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'",
            AfterMarker::Poweroff => "poweroff -f; while :; do sleep 3600; done",
        };
        format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t devtmpfs dev /dev\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             for m in {mods}; do insmod /lib/modules/$m.ko || echo \"tiny-initramfs: insmod $m failed\" >/dev/ttyS0; done\n\
             {script}\n\
             echo {marker} >/dev/ttyS0\n\
             {after}\n",
            mods = modules.join(" "),
            script = self.script,
            marker = crate::shell_quote(&self.marker),
        )
    }

    /// Builds the archive (uncompressed newc) for `kernel`.
    pub fn build(&self, kernel: &TestKernel) -> Result<Vec<u8>, KernelError> {
        let busybox = std::fs::read(&self.busybox).map_err(|e| KernelError::Io {
            context: format!(
                "reading {} (install the Debian package busybox-static)",
                self.busybox.display()
            ),
            source: e,
        })?;
        if is_dynamic_elf(&busybox) {
            return Err(KernelError::Layout(format!(
                "{} is dynamically linked; the initramfs needs a static busybox: install the \
                 Debian package busybox-static",
                self.busybox.display()
            )));
        }
        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let mods = kernel.modules_with_deps(&names)?;
        let mut w = NewcWriter::new(Vec::new());
        let e = |e: std::io::Error| KernelError::Io {
            context: "writing the initramfs".into(),
            source: e,
        };
        for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
            w.dir(d, 0o755).map_err(e)?;
        }
        w.char_device("dev/console", 0o600, 5, 1).map_err(e)?;
        w.file("bin/busybox", 0o755, &busybox).map_err(e)?;
        w.symlink("bin/sh", "busybox").map_err(e)?;
        for (name, path) in &mods {
            w.file_from(&format!("lib/modules/{name}.ko"), 0o644, path)
                .map_err(e)?;
        }
        let names: Vec<String> = mods.into_iter().map(|(n, _)| n).collect();
        w.file("init", 0o755, self.init_script(&names).as_bytes())
            .map_err(e)?;
        w.finish().map_err(e)
    }

    /// Builds the archive and writes it to `path`.
    pub fn write(&self, kernel: &TestKernel, path: &Path) -> Result<(), KernelError> {
        let bytes = self.build(kernel)?;
        std::fs::write(path, bytes).map_err(io_err(format!("writing {}", path.display())))
    }
}

/// Whether an ELF file has a program interpreter (i.e. is dynamically linked).
fn is_dynamic_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let phoff = u64at(0x20);
    let phentsize = u16at(0x36);
    let phnum = u16at(0x38);
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= elf.len() && u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]) == 3
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_dependency() {
        let cloud = KERNEL_METAPACKAGE;
        assert_eq!(
            parse_kernel_dep("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n", cloud).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            parse_kernel_dep(
                "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n",
                cloud
            )
            .as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_kernel_dep("libc6", cloud), None);
        let generic = KernelFlavour::Generic.metapackage();
        assert_eq!(
            parse_kernel_dep(
                "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n",
                generic
            )
            .as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
    }

    #[test]
    fn flavours_tell_their_releases_apart() {
        use KernelFlavour::{Cloud, Generic};
        assert_eq!(KernelFlavour::default(), Cloud);
        assert_eq!(Cloud.metapackage(), "linux-image-cloud-amd64");
        assert_eq!(Generic.metapackage(), "linux-image-amd64");
        assert!(Cloud.matches_release("6.1.0-57-cloud-amd64"));
        assert!(!Cloud.matches_release("6.1.0-57-amd64"));
        assert!(Generic.matches_release("6.1.0-57-amd64"));
        assert!(!Generic.matches_release("6.1.0-57-cloud-amd64"));
        assert!(!Generic.matches_release("6.1.0-57-rt-amd64"));
        assert!(!Generic.matches_release(".tmp-123"));
    }

    #[test]
    fn newest_cached_keeps_to_its_flavour() {
        let dir = tempfile::tempdir().unwrap();
        for release in ["6.1.0-56-amd64", "6.1.0-57-cloud-amd64"] {
            let root = dir.path().join(release);
            std::fs::create_dir_all(root.join("boot")).unwrap();
            std::fs::create_dir_all(root.join("lib/modules").join(release)).unwrap();
            std::fs::write(root.join(format!("boot/vmlinuz-{release}")), b"").unwrap();
        }
        let name = |f| newest_cached(dir.path(), f).map(|k| k.release);
        assert_eq!(
            name(KernelFlavour::Cloud).as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            name(KernelFlavour::Generic).as_deref(),
            Some("6.1.0-56-amd64")
        );
        // A lookup marks the kernel it returns as used (for the cache's LRU clean-up).
        for release in ["6.1.0-56-amd64", "6.1.0-57-cloud-amd64"] {
            let stamp = dir
                .path()
                .join(release)
                .join(crate::cache_entries::LAST_USE_FILE);
            assert!(stamp.is_file(), "{} not touched", stamp.display());
        }
    }

    #[test]
    fn modinfo_depends_are_read() {
        let ko = b"junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_console\0";
        assert_eq!(modinfo_depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn busybox_is_static_and_ls_is_dynamic() {
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            assert!(
                !is_dynamic_elf(&bb),
                "/bin/busybox should be busybox-static"
            );
        }
        assert!(is_dynamic_elf(&std::fs::read("/bin/ls").unwrap()));
    }

    #[test]
    fn init_script_mentions_modules_and_marker() {
        let s = TinyInitramfs::new("READY 1").init_script(&["virtio".into(), "virtio_pci".into()]);
        assert!(s.contains("for m in virtio virtio_pci;"));
        assert!(s.contains("echo 'READY 1' >/dev/ttyS0"));
    }
}
