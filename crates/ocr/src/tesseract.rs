//! Running the `tesseract` CLI: argv, image on stdin, TSV on stdout, and cancellation (a
//! running call can be killed from another thread when a different variant already matched).
//! [`Backend`] chooses between this and libtesseract in process (cargo feature `libtesseract`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::OcrError;

/// Which tesseract does the recognition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The `tesseract` program (Debian package tesseract-ocr), one process per call, image on
    /// stdin and TSV on stdout. A call still running when another variant has matched is killed.
    #[default]
    Cli,
    /// libtesseract linked into this process (cargo feature `libtesseract`; building it needs
    /// the Debian packages libtesseract-dev, libleptonica-dev, clang and libclang-dev). Same
    /// image, language, page segmentation mode, settings and TSV as [`Backend::Cli`], without a
    /// process start and model load per call. A running call cannot be interrupted: a losing
    /// variant runs to its end. `program` does not apply; `omp_threads` caps the OpenMP threads
    /// of each call (through libgomp's per-thread controls, as `OMP_THREAD_LIMIT` is read only
    /// when the process starts).
    #[cfg(feature = "libtesseract")]
    InProcess,
}

/// How tesseract is invoked.
#[derive(Debug, Clone, PartialEq)]
pub struct TesseractConfig {
    /// The CLI (default) or libtesseract in process.
    pub backend: Backend,
    /// The executable (default `tesseract`, looked up on PATH).
    pub program: PathBuf,
    /// Language(s), e.g. `eng` or `eng+deu`.
    pub lang: String,
    /// Page segmentation mode; 11 = sparse text (as NixOS uses), good for screens.
    pub psm: u8,
    /// `OMP_THREAD_LIMIT` for each call; `Some(1)` avoids OpenMP oversubscription when several
    /// calls run at once. `None` leaves the environment alone. (In process: the same cap, set
    /// with `omp_set_dynamic`/`omp_set_num_threads` on the calling thread.)
    pub omp_threads: Option<u32>,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for TesseractConfig {
    fn default() -> Self {
        TesseractConfig {
            backend: Backend::Cli,
            program: PathBuf::from("tesseract"),
            lang: "eng".into(),
            psm: 11,
            omp_threads: Some(1),
            settings: Vec::new(),
        }
    }
}

impl TesseractConfig {
    /// The arguments after the program name: image from stdin, TSV to stdout.
    pub fn args(&self) -> Vec<String> {
        self.args_with_psm(self.psm)
    }

    /// [`TesseractConfig::args`] with another page segmentation mode.
    pub fn args_with_psm(&self, psm: u8) -> Vec<String> {
        let mut a: Vec<String> = ["-", "-", "--psm"].map(String::from).to_vec();
        a.push(psm.to_string());
        a.extend([
            "-l".to_string(),
            self.lang.clone(),
            "-c".into(),
            "debug_file=/dev/null".into(),
        ]);
        for (k, v) in &self.settings {
            a.push("-c".into());
            a.push(format!("{k}={v}"));
        }
        a.push("tsv".into());
        a
    }

    /// The command line as one string (for error messages and logs).
    pub fn command_line(&self) -> String {
        self.command_line_with_psm(self.psm)
    }

    fn command_line_with_psm(&self, psm: u8) -> String {
        let mut s = self.program.display().to_string();
        for a in self.args_with_psm(psm) {
            s.push(' ');
            s.push_str(&a);
        }
        s + " < image"
    }

    /// Checks that the tesseract program can be started (`tesseract --version`) and has the
    /// configured languages; returns its first line. (The CLI backend's check; `Ocr::new` checks
    /// the in-process backend by loading the model.)
    pub fn check(&self) -> Result<String, OcrError> {
        let out = Command::new(&self.program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OcrError::TesseractMissing {
                program: self.program.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(if out.stdout.is_empty() {
            &out.stderr
        } else {
            &out.stdout
        })
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
        if !out.status.success() {
            return Err(OcrError::TesseractFailed {
                variant: "-".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
                command: format!("{} --version", self.program.display()),
            });
        }
        self.check_languages()?;
        Ok(text)
    }

    /// Checks that every language in `lang` is installed (`tesseract --list-langs`).
    fn check_languages(&self) -> Result<(), OcrError> {
        let out = Command::new(&self.program)
            .arg("--list-langs")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OcrError::TesseractMissing {
                program: self.program.clone(),
                source,
            })?;
        let listed = String::from_utf8_lossy(&out.stdout);
        let installed: Vec<&str> = listed.lines().skip(1).map(str::trim).collect();
        for lang in self.lang.split('+') {
            if !installed.contains(&lang) {
                return Err(OcrError::MissingLanguage {
                    lang: lang.to_string(),
                    installed: installed.join(" "),
                });
            }
        }
        Ok(())
    }

    /// Runs tesseract on an encoded image (PGM/PNG/PPM bytes) and returns its TSV output.
    /// `cancel` lets another thread kill the process; a killed call returns `Ok(None)`.
    pub fn run(
        &self,
        image: &[u8],
        variant: &str,
        cancel: &Canceller,
    ) -> Result<Option<String>, OcrError> {
        self.run_with_psm(image, variant, self.psm, cancel)
    }

    /// [`TesseractConfig::run`] with another page segmentation mode.
    pub fn run_with_psm(
        &self,
        image: &[u8],
        variant: &str,
        psm: u8,
        cancel: &Canceller,
    ) -> Result<Option<String>, OcrError> {
        let io_err = |source| OcrError::TesseractIo {
            variant: variant.to_string(),
            source,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args_with_psm(psm))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = self.omp_threads {
            cmd.env("OMP_THREAD_LIMIT", n.to_string());
        }
        let Some(slot) = cancel
            .spawn(&mut cmd)
            .map_err(|source| OcrError::TesseractMissing {
                program: self.program.clone(),
                source,
            })?
        else {
            return Ok(None);
        };
        let (mut stdin, mut stdout, mut stderr) = {
            let mut child = slot.lock().expect("child lock");
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        };
        let (out, err) = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                if let Some(mut w) = stdin.take() {
                    // A broken pipe means tesseract died early; its status tells why.
                    let _ = w.write_all(image);
                }
            });
            let err_reader = s.spawn(move || {
                let mut e = Vec::new();
                if let Some(r) = stderr.as_mut() {
                    let _ = r.read_to_end(&mut e);
                }
                e
            });
            let mut out = Vec::new();
            let res = stdout.as_mut().map_or(Ok(0), |r| r.read_to_end(&mut out));
            let _ = writer.join();
            let err = err_reader.join().unwrap_or_default();
            (res.map(|_| out), err)
        });
        let out = out.map_err(io_err)?;
        let status = slot.lock().expect("child lock").wait().map_err(io_err)?;
        cancel.forget(&slot);
        if cancel.is_cancelled() && !status.success() {
            if status.signal() == Some(KILL_SIGNAL) {
                cancel.inner.lock().expect("cancel lock").killed += 1;
            }
            return Ok(None);
        }
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err);
            let tail: String = stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(OcrError::TesseractFailed {
                variant: variant.to_string(),
                status: status.to_string(),
                stderr: tail,
                command: self.command_line_with_psm(psm),
            });
        }
        String::from_utf8(out)
            .map(Some)
            .map_err(|e| OcrError::BadTsv {
                line: 0,
                detail: format!("not UTF-8: {e}"),
            })
    }
}

/// A set of running tesseract processes that can all be killed at once (first match wins).
#[derive(Debug, Clone, Default)]
pub struct Canceller {
    inner: Arc<Mutex<CancelState>>,
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    children: Vec<Arc<Mutex<Child>>>,
    /// Processes that died of the SIGKILL sent by `cancel` (not ones that had already exited).
    killed: usize,
}

/// SIGKILL, what `Child::kill` sends.
const KILL_SIGNAL: i32 = 9;

impl Canceller {
    /// A fresh, not-cancelled set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.lock().expect("cancel lock").cancelled
    }

    /// How many processes died of [`Canceller::cancel`]'s kill while still running (counted
    /// when their `run` call returns; a process that had already exited is not counted).
    pub fn killed(&self) -> usize {
        self.inner.lock().expect("cancel lock").killed
    }

    /// Kills every running process and refuses new ones.
    pub fn cancel(&self) {
        let mut st = self.inner.lock().expect("cancel lock");
        st.cancelled = true;
        for c in st.children.drain(..) {
            // The child is not reaped before it leaves this list (see `run`), so its pid is
            // still ours; killing an exited-but-unreaped child is harmless.
            let _ = c.lock().expect("child lock").kill();
        }
    }

    fn spawn(&self, cmd: &mut Command) -> std::io::Result<Option<Arc<Mutex<Child>>>> {
        let mut st = self.inner.lock().expect("cancel lock");
        if st.cancelled {
            return Ok(None);
        }
        let child = Arc::new(Mutex::new(cmd.spawn()?));
        st.children.push(child.clone());
        Ok(Some(child))
    }

    fn forget(&self, child: &Arc<Mutex<Child>>) {
        self.inner
            .lock()
            .expect("cancel lock")
            .children
            .retain(|c| !Arc::ptr_eq(c, child));
    }
}

/// The arguments as `OsString`s (for callers building their own `Command`).
pub fn os_args(cfg: &TesseractConfig) -> Vec<OsString> {
    cfg.args().into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_matches_the_documented_call() {
        let mut cfg = TesseractConfig::default();
        assert_eq!(
            cfg.args().join(" "),
            "- - --psm 11 -l eng -c debug_file=/dev/null tsv"
        );
        cfg.settings.push(("tessedit_do_invert".into(), "0".into()));
        assert!(cfg
            .command_line()
            .contains("-c tessedit_do_invert=0 tsv < image"));
    }

    #[test]
    fn missing_binary_names_the_debian_package() {
        let cfg = TesseractConfig {
            program: "/nonexistent/tesseract".into(),
            ..Default::default()
        };
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains("tesseract-ocr"), "{err}");
        let err = cfg
            .run(b"P5\n1 1\n255\n\0", "raw", &Canceller::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tesseract-ocr"), "{err}");
    }

    #[test]
    fn cancelled_set_spawns_nothing() {
        let c = Canceller::new();
        c.cancel();
        let cfg = TesseractConfig::default();
        assert_eq!(cfg.run(b"P5\n1 1\n255\n\0", "raw", &c).unwrap(), None);
        assert_eq!(c.killed(), 0, "nothing ran, so nothing was killed");
    }

    #[test]
    fn cancel_kills_a_running_call_and_counts_it() {
        // A large noisy image keeps tesseract busy for seconds; cancel as soon as it runs.
        let (w, h) = (1600u32, 1200u32);
        let mut pgm = format!("P5\n{w} {h}\n255\n").into_bytes();
        let mut x: u32 = 12345;
        pgm.extend((0..w * h).map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 24) as u8
        }));
        let c = Canceller::new();
        let cfg = TesseractConfig::default();
        std::thread::scope(|s| {
            let call = s.spawn(|| cfg.run(&pgm, "noise", &c));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while c.inner.lock().unwrap().children.is_empty() {
                assert!(!call.is_finished(), "tesseract finished before it was seen");
                assert!(
                    std::time::Instant::now() < deadline,
                    "tesseract never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            c.cancel();
            assert_eq!(call.join().unwrap().unwrap(), None);
        });
        assert_eq!(c.killed(), 1);
    }
}
