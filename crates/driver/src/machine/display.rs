//! Screen, keyboard, OCR, virtual terminals and X11 methods.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Machine;
use crate::ctx::Deadline;
use crate::error::{Error, Result};
use crate::timeouts::{IntoTimeout, Pace, Wait, DEFAULT_TIMEOUT};

/// NixOS' `CHAR_TO_KEY`: characters to HMP `sendkey` names.
pub(crate) fn char_to_key(c: char) -> Option<String> {
    let k = match c {
        'A'..='Z' => return Some(format!("shift-{}", c.to_ascii_lowercase())),
        'a'..='z' | '0'..='9' => return Some(c.to_string()),
        '!' => "shift-0x02",
        '@' => "shift-0x03",
        '#' => "shift-0x04",
        '$' => "shift-0x05",
        '%' => "shift-0x06",
        '^' => "shift-0x07",
        '&' => "shift-0x08",
        '*' => "shift-0x09",
        '(' => "shift-0x0A",
        ')' => "shift-0x0B",
        '-' => "0x0C",
        '_' => "shift-0x0C",
        '=' => "0x0D",
        '+' => "shift-0x0D",
        '[' => "0x1A",
        '{' => "shift-0x1A",
        ']' => "0x1B",
        '}' => "shift-0x1B",
        ';' => "0x27",
        ':' => "shift-0x27",
        '\'' => "0x28",
        '"' => "shift-0x28",
        '`' => "0x29",
        '~' => "shift-0x29",
        '\\' => "0x2B",
        '|' => "shift-0x2B",
        ',' => "0x33",
        '<' => "shift-0x33",
        '.' => "0x34",
        '>' => "shift-0x34",
        '/' => "0x35",
        '?' => "shift-0x35",
        ' ' => "spc",
        '\n' => "ret",
        '\t' => "tab",
        _ => return None,
    };
    Some(k.to_string())
}

/// Exit 0 when the guest has an X server binary or a live X socket. (`/tmp/.X11-unix` alone says
/// nothing: systemd's tmpfiles create it on every guest.)
const X_PROBE: &str = "for x in Xorg X Xvfb Xwayland; do command -v \"$x\" >/dev/null && exit 0; done; ls /tmp/.X11-unix/X* >/dev/null 2>&1";

impl Machine {
    /// Presses `key` (an HMP `sendkey` name like `ctrl-alt-delete`, `ret`, or one character)
    /// (NixOS `send_key`, delay 0.01 s).
    pub fn send_key(&self, key: &str) -> Result<()> {
        self.send_key_with(key, Pace::KeyDelay.get(), true)
    }

    /// [`Machine::send_key`] with a delay after the key and optional logging.
    pub fn send_key_with(&self, key: &str, delay: Duration, log: bool) -> Result<()> {
        let mut chars = key.chars();
        let key = match (chars.next(), chars.next()) {
            (Some(c), None) => char_to_key(c).unwrap_or_else(|| key.to_string()),
            _ => key.to_string(),
        };
        let send = || {
            let out = self.send_monitor_command(&format!("sendkey {key}"))?;
            if !out.trim().is_empty() {
                return Err(Error::Assertion {
                    machine: self.name().to_string(),
                    message: format!("sendkey {key}: {}", out.trim()),
                });
            }
            self.ctx.sleep(delay)
        };
        if log {
            self.nested(&format!("sending key {key:?}"), send)
        } else {
            send()
        }
    }

    /// Types `chars` one key at a time (NixOS `send_chars`, 0.01 s between keys).
    pub fn send_chars(&self, chars: &str) -> Result<()> {
        self.send_chars_with(chars, Pace::KeyDelay.get())
    }

    /// [`Machine::send_chars`] with another delay between keys.
    pub fn send_chars_with(&self, chars: &str, delay: Duration) -> Result<()> {
        self.nested(&format!("sending keys {chars:?}"), || {
            for c in chars.chars() {
                self.send_key_with(&c.to_string(), delay, false)?;
            }
            Ok(())
        })
    }

    pub(crate) fn screenshot_raw(&self, path: &Path) -> Result<PathBuf> {
        let run = self.require_running("take a screenshot")?;
        let name = self.name().to_string();
        let p = path.to_path_buf();
        let format = if path.extension().is_some_and(|e| e == "ppm") {
            machinist_qemu::ScreendumpFormat::Ppm
        } else {
            machinist_qemu::ScreendumpFormat::Png
        };
        let qmp = self.monitor(&run, "screenshot")?;
        self.ctx.block_on(false, async move {
            qmp.screendump(&p, format).await.map_err(|e| {
                Error::backend(Some(&name), format!("screendump to {}", p.display()), e)
            })
        })
    }

    /// Saves a PNG screenshot (NixOS `screenshot`): `.png` is added if the name has no
    /// extension; a relative name goes to the output directory. Returns the path.
    pub fn screenshot(&self, filename: &str) -> Result<PathBuf> {
        let mut p = PathBuf::from(filename);
        if p.extension().is_none() {
            p.set_extension("png");
        }
        if p.is_relative() {
            p = self.ctx.out_dir.join(p);
        }
        self.nested(&format!("making screenshot {}", p.display()), || {
            self.screenshot_raw(&p)
        })
    }

    /// The OCR engine, checked once per process (`tesseract --version` and its languages).
    fn ocr(&self) -> Result<&'static machinist_ocr::Ocr> {
        static OCR: std::sync::OnceLock<machinist_ocr::Ocr> = std::sync::OnceLock::new();
        if let Some(o) = OCR.get() {
            return Ok(o);
        }
        let o = machinist_ocr::Ocr::new(machinist_ocr::OcrConfig::default())
            .map_err(|e| Error::backend(Some(self.name()), "starting OCR", e))?;
        Ok(OCR.get_or_init(|| o))
    }

    fn grab_file(&self) -> PathBuf {
        self.ctx.run_dir.join(format!("{}-screen.ppm", self.name()))
    }

    /// The text on the screen, by OCR (NixOS `get_screen_text`).
    pub fn get_screen_text(&self) -> Result<String> {
        self.nested("performing optical character recognition", || {
            let ocr = self.ocr()?;
            let img = self.grab_image()?;
            ocr.get_screen_text(&img)
                .map_err(|e| Error::backend(Some(self.name()), "OCR", e))
        })
    }

    /// OCR of several preprocessing variants of one screenshot (NixOS
    /// `get_screen_text_variants`).
    pub fn get_screen_text_variants(&self) -> Result<Vec<String>> {
        self.nested("performing optical character recognition", || {
            let ocr = self.ocr()?;
            let img = self.grab_image()?;
            ocr.get_screen_text_variants(&img)
                .map_err(|e| Error::backend(Some(self.name()), "OCR", e))
        })
    }

    /// Where text matching `regex` is on the screen, by OCR: the matched words with their boxes
    /// in screenshot pixels (empty when nothing matches). The NixOS driver has no equivalent.
    pub fn find_text(&self, regex: &str) -> Result<Vec<machinist_ocr::WordBox>> {
        let re = regex::Regex::new(regex).map_err(|e| {
            Error::bad_argument(Some(self.name()), format!("bad regex `{regex}`: {e}"))
        })?;
        self.nested(&format!("finding {regex} on screen"), || {
            let ocr = self.ocr()?;
            let img = self.grab_image()?;
            ocr.find_text(&img, &re)
                .map_err(|e| Error::backend(Some(self.name()), "OCR", e))
        })
    }

    fn grab_image(&self) -> Result<image::RgbImage> {
        let f = self.grab_file();
        self.screenshot_raw(&f)?;
        machinist_ocr::load_image(&f)
            .map_err(|e| Error::backend(Some(self.name()), "reading the screenshot", e))
    }

    /// Waits until `regex` matches the OCR text of the screen (NixOS `wait_for_text`, default
    /// 900 s): fresh screenshots with backoff, variants raced, the last screenshot saved to the
    /// output directory on failure. Returns the matched text.
    pub fn wait_for_text(&self, regex: &str, timeout: impl IntoTimeout) -> Result<String> {
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        self.nested(&format!("waiting for {regex} to appear on screen"), || {
            let ocr = self.ocr()?;
            let mut source = || {
                self.grab_image()
                    .map_err(|e| machinist_ocr::OcrError::Screenshot(e.to_string()))
            };
            let m = ocr
                .wait_for_text_str(&mut source, regex, t, &self.ctx.out_dir)
                .map_err(|e| {
                    Error::backend(
                        Some(self.name()),
                        format!("waiting for {regex} on screen"),
                        e,
                    )
                })?;
            Ok(m.matched)
        })
    }

    /// The text of virtual terminal `tty` (NixOS `get_tty_text`: `/dev/vcs<tty>` folded at the
    /// terminal width).
    pub fn get_tty_text(&self, tty: u32) -> Result<String> {
        self.require_virtual_terminals("get_tty_text")?;
        self.succeed(format!(
            "fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}"
        ))
    }

    /// Waits until `regex` matches the text of terminal `tty` (NixOS `wait_until_tty_matches`).
    pub fn wait_until_tty_matches(
        &self,
        tty: u32,
        regex: &str,
        timeout: impl IntoTimeout,
    ) -> Result<()> {
        let re = regex::Regex::new(regex).map_err(|e| {
            Error::bad_argument(Some(self.name()), format!("bad regex `{regex}`: {e}"))
        })?;
        self.require_virtual_terminals("wait_until_tty_matches")?;
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        self.nested(&format!("waiting for {regex} to appear on tty {tty}"), || {
            let deadline = Deadline::new(t);
            let mut last = String::new();
            loop {
                last = self.get_tty_text(tty).unwrap_or(last);
                if re.is_match(&last) {
                    return Ok(());
                }
                if deadline.expired() {
                    self.log_line(&format!("Last chance to match {regex} on TTY{tty}, which currently contains: {last}"));
                    return Err(Error::Timeout {
                        machine: Some(self.name().to_string()),
                        what: format!("{regex} on tty {tty}"),
                        timeout: t,
                        elapsed: deadline.elapsed(),
                        last_output: last,
                    });
                }
                self.ctx.sleep(Pace::ScreenPoll.get().min(deadline.remaining()))?;
            }
        })
    }

    /// Logs the contents of `tty` into the guest journal (NixOS `dump_tty_contents`).
    pub fn dump_tty_contents(&self, tty: u32) -> Result<()> {
        self.require_virtual_terminals("dump_tty_contents")?;
        self.succeed(format!("fold -w 80 /dev/vcs{tty} | systemd-cat"))
            .map(drop)
    }

    /// Fails with [`Error::NotSupported`] on a node without virtual terminals (`/dev/vcsN`): a
    /// container has none, so the tty methods would only fail on a missing device.
    fn require_virtual_terminals(&self, what: &str) -> Result<()> {
        if self.backend() == crate::backend::BackendKind::Container {
            return Err(Error::NotSupported {
                machine: self.name().to_string(),
                what: what.to_string(),
                why: "the container backend has no virtual terminals (/dev/vcsN); read the \
                      console log (get_console_log) or run the node as a VM"
                    .into(),
            });
        }
        Ok(())
    }

    /// Fails with [`Error::NotSupported`] when the guest cannot serve the X11 method `what`: no
    /// X server binary and no `/tmp/.X11-unix`, or (`need_xwininfo`) no `xwininfo`. One cheap
    /// command; waiting for an X server that can never start would take the whole timeout.
    fn require_x(&self, what: &str, need_xwininfo: bool) -> Result<()> {
        let (code, _) = self.execute_with(X_PROBE, Wait::XProbe.base())?;
        let why = match code {
            0 if !need_xwininfo => return Ok(()),
            0 => {
                let (code, _) =
                    self.execute_with("command -v xwininfo >/dev/null", Wait::XProbe.base())?;
                if code == 0 {
                    return Ok(());
                }
                "the guest has no `xwininfo`, which lists the windows: add the Debian package \
                 x11-utils to the node (NodeConfig::package(\"x11-utils\"))"
            }
            _ => {
                "the guest has no X server (none of Xorg, X, Xvfb, Xwayland is installed and \
                 no socket is in /tmp/.X11-unix): install one in the node (e.g. the Debian \
                 package xvfb) and start it, or check the console with get_tty_text / \
                 wait_for_console_text instead"
            }
        };
        Err(Error::NotSupported {
            machine: self.name().to_string(),
            what: what.to_string(),
            why: why.to_string(),
        })
    }

    /// Waits for the X server (NixOS `wait_for_x`): the graphical target was reached and
    /// `/tmp/.X11-unix/X0` exists. Needs a graphical guest: on a guest with no X server
    /// installed it fails at once with [`Error::NotSupported`].
    pub fn wait_for_x(&self, timeout: impl IntoTimeout) -> Result<()> {
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        self.require_x("wait_for_x", false)?;
        self.nested("waiting for the X11 server", || {
            self.wait_until_succeeds(
                "journalctl -b SYSLOG_IDENTIFIER=systemd | grep 'Reached target Current graphical' && [ -e /tmp/.X11-unix/X0 ]",
                t,
            )
            .map(drop)
        })
    }

    /// Names of the X11 windows (NixOS `get_window_names`; needs an X server and `xwininfo` in
    /// the guest, else [`Error::NotSupported`]).
    pub fn get_window_names(&self) -> Result<Vec<String>> {
        self.require_x("get_window_names", true)?;
        self.window_names()
    }

    fn window_names(&self) -> Result<Vec<String>> {
        let out = self.succeed(
            r#"xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\([^\"]*\)\".*/\1/; t; d'"#,
        )?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Waits until a window whose name matches `regex` exists (NixOS `wait_for_window`);
    /// [`Error::NotSupported`] at once on a guest without an X server or `xwininfo`.
    pub fn wait_for_window(&self, regex: &str, timeout: impl IntoTimeout) -> Result<()> {
        let re = regex::Regex::new(regex).map_err(|e| {
            Error::bad_argument(Some(self.name()), format!("bad regex `{regex}`: {e}"))
        })?;
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_TIMEOUT);
        self.require_x("wait_for_window", true)?;
        self.nested("waiting for a window to appear", || {
            let deadline = Deadline::new(t);
            loop {
                let names = self.window_names()?;
                if names.iter().any(|n| re.is_match(n)) {
                    return Ok(());
                }
                if deadline.expired() {
                    self.log_line(&format!("Last chance to match {regex} on the window list, which currently contains: {}", names.join(", ")));
                    return Err(Error::Timeout {
                        machine: Some(self.name().to_string()),
                        what: format!("a window matching {regex}"),
                        timeout: t,
                        elapsed: deadline.elapsed(),
                        last_output: names.join("\n"),
                    });
                }
                self.ctx.sleep(Pace::RetryPause.get().min(deadline.remaining()))?;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(char_to_key('A').unwrap(), "shift-a");
        assert_eq!(char_to_key('-').unwrap(), "0x0C");
        assert_eq!(char_to_key('\n').unwrap(), "ret");
        assert_eq!(char_to_key(' ').unwrap(), "spc");
        assert_eq!(char_to_key('!').unwrap(), "shift-0x02");
    }
}
