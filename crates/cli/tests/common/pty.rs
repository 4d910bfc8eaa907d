//! A tiny expect-style driver for a program in a real pseudo-terminal: spawn it as the session
//! leader with the pty as its controlling terminal (so Ctrl-C and Ctrl-D behave as on a real
//! terminal), type into it, wait for text with deadlines, and keep the whole transcript.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};

/// A program running in a pseudo-terminal.
pub struct Pty {
    master: File,
    /// The child process.
    pub child: Child,
    /// Everything the program wrote (and the terminal echoed).
    pub transcript: Vec<u8>,
    /// How far `expect` has consumed the transcript.
    pos: usize,
    eof: bool,
}

impl Pty {
    /// Starts `cmd` with stdin, stdout and stderr on a new pty (200 columns, so lines do not wrap).
    pub fn spawn(mut cmd: Command) -> Pty {
        let ws = Winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&ws), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        cmd.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn in pty");
        drop(slave);
        Pty {
            master: File::from(pty.master),
            child,
            transcript: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// Types `s`.
    pub fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).expect("write to pty");
    }

    /// Types `line` and Enter.
    pub fn send_line(&mut self, line: &str) {
        self.send(line);
        self.send("\r");
    }

    /// Reads what is available within `wait`; false at end of file.
    fn fill(&mut self, wait: Duration) -> bool {
        if self.eof {
            return false;
        }
        let ms = wait.as_millis().min(60_000) as u16;
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => true,
            Ok(_) => {
                let mut buf = [0u8; 8192];
                match self.master.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        // EIO: every slave end is closed (the program exited).
                        self.eof = true;
                        false
                    }
                    Ok(n) => {
                        self.transcript.extend_from_slice(&buf[..n]);
                        true
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => true,
            Err(e) => panic!("poll on the pty: {e}"),
        }
    }

    /// Waits until `needle` appears after what was already matched; returns the text up to and
    /// including it. Panics with the transcript when `timeout` passes or the program exits.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let n = needle.as_bytes();
        loop {
            let hay = &self.transcript[self.pos..];
            if let Some(i) = hay.windows(n.len()).position(|w| w == n) {
                let end = self.pos + i + n.len();
                let got = String::from_utf8_lossy(&self.transcript[self.pos..end]).into_owned();
                self.pos = end;
                return got;
            }
            let now = Instant::now();
            if now >= deadline || !self.fill(deadline - now) {
                panic!(
                    "expected {needle:?} within {timeout:?}{}; transcript so far:\n{}",
                    if self.eof {
                        " (the program exited)"
                    } else {
                        ""
                    },
                    String::from_utf8_lossy(&self.transcript)
                );
            }
        }
    }

    /// Reads until the program closes the terminal (or `timeout`); true if it did.
    pub fn expect_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.fill(deadline - Instant::now()) {
                return true;
            }
        }
        false
    }

    /// The raw fd of the master side (for tests that need it).
    #[allow(dead_code)]
    pub fn master_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
