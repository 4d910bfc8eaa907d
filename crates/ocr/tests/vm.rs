//! A real guest: boots Debian's cloud kernel with a busybox initramfs that writes a known
//! sentence to its VGA console, and waits for it with `wait_for_text` over QMP `screendump`.
//! Takes the host VM lock. Needs qemu-system-x86, busybox-static, cpio, apt-get (first run
//! downloads the kernel into machinist-qemu's kernel cache, `<cache>/kernel`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use machinist_ocr::{decode_image, Ocr, OcrConfig, OcrError, ScreenSource};
use machinist_qemu::shell_quote;

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

/// Debian's cloud kernel: machinist-qemu's cached test kernel (downloaded once with apt-get).
fn kernel() -> PathBuf {
    machinist_qemu::kernel::test_kernel()
        .expect("the test kernel (apt-get download linux-image-cloud-amd64)")
        .vmlinuz
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
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        shell_quote(&root.to_string_lossy()),
        shell_quote(&out.to_string_lossy())
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
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM lock");

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
