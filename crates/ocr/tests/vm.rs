//! A real guest: boots Debian's cloud kernel with a busybox initramfs that writes a known
//! sentence to its VGA console, and waits for it with `wait_for_text` over QMP `screendump`.
//! Takes the host VM lock. Needs qemu-system-x86, busybox-static, cpio, apt-get (first run
//! downloads the kernel into `$XDG_CACHE_HOME/machinist/ocr-test-kernel`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use machinist_ocr::{decode_image, Ocr, OcrConfig, OcrError, ScreenSource};

const SENTENCE: &str = "Machinist reads the guest console: sentence 4711 is here.";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    let boot = dir.join("root/boot");
    std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// Debian's cloud kernel, downloaded once with apt-get into the cache.
fn kernel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        })
        .join("machinist");
    for d in [cache.join("ocr-test-kernel"), cache.join("ocr-corpus")] {
        if let Some(k) = find_vmlinuz(&d) {
            return k;
        }
    }
    // machinist-qemu's kernel::test_kernel() cache: kernel/<version>/boot/vmlinuz-*.
    for version in std::fs::read_dir(cache.join("kernel"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let boot = version.path().join("boot");
        for f in std::fs::read_dir(&boot).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with("vmlinuz-") {
                return f.path();
            }
        }
    }
    let dir = cache.join("ocr-test-kernel");
    std::fs::create_dir_all(&dir).unwrap();
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]));
    let pkg = deps
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
        })
        .expect("apt-cache knows linux-image-cloud-amd64's versioned package")
        .to_string();
    run(Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&dir));
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")));
    find_vmlinuz(&dir).expect("the kernel package has /boot/vmlinuz-*")
}

fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s\nmount -t devtmpfs dev /dev\nmount -t proc proc /proc\n\
         sleep 2\nprintf '\\033[H\\033[2J' >/dev/tty1\necho '{SENTENCE}' >/dev/tty1\nwhile :; do sleep 60; done\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    run(Command::new("chmod").arg("+x").arg(root.join("init")));
    let out = dir.join("initrd.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        out.display()
    )));
    out
}

/// QEMU, killed on drop.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal blocking QMP client: enough for `screendump`.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    shot: PathBuf,
}

impl Qmp {
    fn connect(path: &Path, shot: PathBuf, deadline: Instant) -> Qmp {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("QMP socket {} did not come up: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            shot,
        };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        q.execute(r#"{"execute":"qmp_capabilities"}"#).unwrap();
        q
    }

    fn execute(&mut self, cmd: &str) -> Result<String, String> {
        self.writer
            .write_all(cmd.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("QMP closed".into());
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(line);
            }
        }
    }
}

impl ScreenSource for Qmp {
    fn grab(&mut self) -> Result<RgbImage, OcrError> {
        let cmd = format!(
            r#"{{"execute":"screendump","arguments":{{"filename":"{}"}}}}"#,
            self.shot.display()
        );
        self.execute(&cmd).map_err(OcrError::Screenshot)?;
        let bytes = std::fs::read(&self.shot).map_err(|e| OcrError::Screenshot(e.to_string()))?;
        decode_image(&bytes)
    }
}

#[test]
fn vm_wait_for_text_on_guest_console() {
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/machinist-vm-tests.lock")
        .unwrap();
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();

    let ocr = Ocr::new(OcrConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel();
    let initrd = initramfs(dir.path());
    let sock = dir.path().join("qmp.sock");
    let _vm = Vm(Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-vga",
            "std",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=tty0 quiet", "-serial", "null"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed (Debian package qemu-system-x86)"));
    let mut qmp = Qmp::connect(
        &sock,
        dir.path().join("screen.ppm"),
        Instant::now() + Duration::from_secs(20),
    );
    let m = ocr
        .wait_for_text_str(
            &mut qmp,
            r"sentence 4711 is here",
            Duration::from_secs(180),
            &dir.path().join("failures"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "found {:?} via {} after {:?} ({} screenshots, {} OCR attempts)",
        m.matched, m.variant, m.elapsed, m.screenshots, m.attempts
    );
    assert!(m.text.contains(SENTENCE), "{}", m.text);
    assert_eq!(m.boxes.len(), 1);
}
