//! The host side of the main shell: connect (greeting + preamble), execute one command per round
//! trip, cancel through the control shell, reconnect after a reboot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::control::Control;
use crate::error::ShellError;
use crate::guest::{unit_name, GREETING};
use crate::protocol::{self, find};

/// How long to wait for the end line after killing a command before declaring the shell dead.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// The greeting as the guest prints it.
const GREETING_LINE: &str = "Spawning backdoor root shell...\n";

/// Pauses before re-checking background holders (only when some were found).
const HOLDER_RECHECKS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(250)];

/// Silence after a greeting at the end of the output that means the shell was re-spawned.
const RESPAWN_QUIET: Duration = Duration::from_millis(300);

/// Read chunk size.
const CHUNK: usize = 64 * 1024;

/// Default bound on the output kept per command: the last 16 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// The smallest accepted output limit (smaller values are raised to it).
pub const MIN_OUTPUT_LIMIT: usize = 4096;

/// The environment variable that overrides [`DEFAULT_OUTPUT_LIMIT`] for every new shell: a byte
/// count, optionally with a binary suffix `K`, `M` or `G` (e.g. `64M`).
pub const OUTPUT_LIMIT_ENV: &str = "MACHINIST_OUTPUT_LIMIT";

/// The longest line passed to the `on_line` callback of [`Shell::execute`]; a longer line is cut
/// to this many bytes, followed by a note of its real length. The returned output is not cut.
pub const MAX_LINE: usize = 64 * 1024;

/// Bytes between the first byte of an over-limit output and the first newline searched for, so
/// that the kept tail starts on a line boundary when lines are short.
const ALIGN_WINDOW: usize = 4096;

/// Parse an output limit such as `16777216`, `512K`, `64M` or `1G`.
fn parse_limit(text: &str) -> Option<usize> {
    let t = text.trim();
    let (num, mul) = match t.as_bytes().last()? {
        b'k' | b'K' => (&t[..t.len() - 1], 1usize << 10),
        b'm' | b'M' => (&t[..t.len() - 1], 1 << 20),
        b'g' | b'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mul)
}

/// The output limit for a new shell: [`OUTPUT_LIMIT_ENV`] if set and valid, else the default.
fn limit_from_env() -> usize {
    match std::env::var(OUTPUT_LIMIT_ENV) {
        Err(_) => DEFAULT_OUTPUT_LIMIT,
        Ok(v) => match parse_limit(&v) {
            Some(n) => n.max(MIN_OUTPUT_LIMIT),
            None => {
                tracing::warn!(
                    "ignoring {OUTPUT_LIMIT_ENV}={v:?}: expected a byte count such as 16777216 or 16M; \
                     keeping the default of {DEFAULT_OUTPUT_LIMIT} bytes"
                );
                DEFAULT_OUTPUT_LIMIT
            }
        },
    }
}

/// The line that starts a command's output when `dropped` bytes were dropped from its head.
pub fn dropped_marker(dropped: u64, kept: usize) -> String {
    format!(
        "[machinist: {dropped} bytes of output dropped; only the last {kept} bytes are kept \
         (raise the limit with {OUTPUT_LIMIT_ENV} or Shell::set_output_limit)]\n"
    )
}

/// Passes lines to the caller's `on_line`, cut to [`MAX_LINE`] bytes; remembers the head of a
/// line whose start was dropped from the output buffer.
struct LineSink<'a> {
    on_line: &'a mut (dyn FnMut(&[u8]) + Send),
    /// First bytes of the current line, already dropped from the buffer.
    head: Vec<u8>,
    /// How many bytes of the current line were dropped from the buffer.
    head_total: u64,
}

impl LineSink<'_> {
    /// The current line's bytes `part` are about to leave the buffer (the line goes on).
    fn carry(&mut self, part: &[u8]) {
        self.head_total += part.len() as u64;
        let room = MAX_LINE.saturating_sub(self.head.len()).min(part.len());
        self.head.extend_from_slice(&part[..room]);
    }

    /// The rest of the current line (without its newline): pass the whole line on.
    fn line(&mut self, rest: &[u8]) {
        if self.head_total == 0 && rest.len() <= MAX_LINE {
            (self.on_line)(rest);
            return;
        }
        let total = self.head_total + rest.len() as u64;
        let mut shown = std::mem::take(&mut self.head);
        let room = MAX_LINE.saturating_sub(shown.len()).min(rest.len());
        shown.extend_from_slice(&rest[..room]);
        if total > shown.len() as u64 {
            shown.extend_from_slice(
                format!(" [machinist: line of {total} bytes cut to its first {MAX_LINE}]")
                    .as_bytes(),
            );
        }
        self.head_total = 0;
        (self.on_line)(&shown);
    }
}

/// A bidirectional byte stream to a guest console (in production a `tokio::net::UnixStream`
/// accepted from QEMU's `-chardev socket`).
pub trait ShellStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ShellStream for T {}

/// Options for [`Shell::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name used in logs and errors, e.g. `server` or `server/control`.
    pub name: String,
    /// The guest console device serving this shell (`vport0p1` main, `vport0p2` control; `hvc0`/`hvc1` on a virtconsole); used in hints.
    pub device: String,
    /// Deadline for the greeting and the preamble (the guest's boot time).
    pub timeout: Duration,
    /// While waiting for the greeting, log every this often that the guest said nothing yet.
    pub silence_log_interval: Duration,
}

impl ConnectOptions {
    /// Options for the main shell (`vport0p1`) named `name`, with a 300 s boot deadline.
    pub fn new(name: impl Into<String>) -> Self {
        ConnectOptions {
            name: name.into(),
            device: crate::guest::MAIN_DEVICE.to_owned(),
            timeout: Duration::from_secs(300),
            silence_log_interval: Duration::from_secs(30),
        }
    }

    /// The same options for the control shell (`vport0p2`), named `<name>/control`.
    pub fn control(&self) -> Self {
        ConnectOptions {
            name: format!("{}/control", self.name),
            device: crate::guest::CONTROL_DEVICE.to_owned(),
            ..self.clone()
        }
    }

    /// Replace the boot deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The result of a command that ran to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status (`set -euo pipefail` semantics; 128+N if killed by signal N).
    pub code: i32,
    /// Everything the command wrote to stdout, byte for byte.
    pub stdout: Vec<u8>,
}

impl Output {
    /// stdout as text (invalid UTF-8 replaced, like NixOS's `errors="replace"`).
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Shared between a running `execute` and its [`Canceller`]s.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    running: AtomicBool,
    requested: AtomicBool,
    notify: Notify,
}

/// Cancels the command the shell is running (what Ctrl-C in the REPL calls). Cheap to clone;
/// usable from any thread while `execute` is awaited elsewhere.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<CancelState>);

impl Canceller {
    /// Ask the running command (if any) to be killed through the control shell; the pending
    /// `execute` then returns [`ShellError::Cancelled`]. Does nothing when no command runs.
    pub fn cancel(&self) {
        if self.0.running.load(Ordering::SeqCst) {
            self.0.requested.store(true, Ordering::SeqCst);
            self.0.notify.notify_waiters();
        }
    }
}

/// Why a running command is being killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Timeout(Duration),
    Cancel,
}

/// A connected guest root shell (the main channel, `vport0p1`).
pub struct Shell {
    opts: ConnectOptions,
    stream: Box<dyn ShellStream>,
    /// Received bytes not consumed yet.
    buf: Vec<u8>,
    /// Set once the shell is out of step or gone.
    dead: Option<String>,
    guest_pid: u32,
    control: Option<Control>,
    cancel: Arc<CancelState>,
    /// At most this many bytes of a command's output are kept (the tail).
    output_limit: usize,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("name", &self.opts.name)
            .field("guest_pid", &self.guest_pid)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// Read once from `stream` into the spare capacity of `into`; returns the count (0 = EOF).
async fn read_some(
    stream: &mut Box<dyn ShellStream>,
    into: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if into.capacity() - into.len() < CHUNK / 2 {
        into.reserve(CHUNK.max(into.len() / 4));
    }
    stream.read_buf(into).await
}

/// Stray bytes before a start line that are tolerated before the oldest are dropped.
const STRAY_LIMIT: usize = 1024 * 1024;

/// Stray bytes kept when they are dropped (more than a start or end line).
const STRAY_KEEP: usize = 4096;

/// Drop the head of `out` so that at most `limit` bytes remain, starting after a newline when
/// one is within [`ALIGN_WINDOW`] bytes (and before `search_end`, where an end line may begin).
/// Undelivered bytes of the current line go to `sink` first; `delivered` is adjusted. Returns
/// how many bytes were dropped.
fn trim_head(
    out: &mut Vec<u8>,
    limit: usize,
    search_end: usize,
    delivered: &mut usize,
    sink: &mut LineSink<'_>,
) -> usize {
    let mut cut = out.len().saturating_sub(limit);
    let window_end = (cut + ALIGN_WINDOW).min(search_end);
    if cut < window_end {
        if let Some(n) = out[cut..window_end].iter().position(|&b| b == b'\n') {
            cut += n + 1;
        }
    }
    if *delivered < cut {
        sink.carry(&out[*delivered..cut]);
        *delivered = cut;
    }
    out.drain(..cut);
    *delivered -= cut;
    cut
}

/// Bytes for a log line: printable ASCII as is, the rest escaped, at most 2000 bytes.
pub(crate) fn show(bytes: &[u8]) -> String {
    let cut = bytes.len().min(2000);
    let mut s = bytes[..cut].escape_ascii().to_string();
    if cut < bytes.len() {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

impl Shell {
    /// Wait for the guest's greeting on `stream`, then install the helper functions.
    ///
    /// A greeting split across reads is found; bytes before it are logged, not fatal. While the
    /// guest says nothing, a hint is logged every `opts.silence_log_interval`.
    pub async fn connect<S: ShellStream>(
        stream: S,
        opts: ConnectOptions,
    ) -> Result<Shell, ShellError> {
        let mut shell = Shell {
            opts,
            stream: Box::new(stream),
            buf: Vec::new(),
            dead: None,
            guest_pid: 0,
            control: None,
            cancel: Arc::default(),
            output_limit: limit_from_env(),
        };
        shell.handshake().await?;
        Ok(shell)
    }

    /// Wait for a new greeting on the same stream (after a guest reboot, or a re-spawned shell)
    /// and install the helper functions again. Clears an out-of-step state.
    pub async fn reconnect(&mut self) -> Result<(), ShellError> {
        self.dead = None;
        self.handshake().await
    }

    /// The shell's name (from [`ConnectOptions::name`]).
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The pid of the guest's bash serving this shell.
    pub fn guest_pid(&self) -> u32 {
        self.guest_pid
    }

    /// Whether the shell is usable (connected and in step).
    pub fn is_usable(&self) -> bool {
        self.dead.is_none()
    }

    /// Keep at most the last `bytes` bytes of each command's output (at least
    /// [`MIN_OUTPUT_LIMIT`]); what was dropped is announced by a [`dropped_marker`] line at the
    /// start of the returned output. The default is [`DEFAULT_OUTPUT_LIMIT`], or
    /// [`OUTPUT_LIMIT_ENV`] when set. Lines streamed to `on_line` are all delivered either way.
    pub fn set_output_limit(&mut self, bytes: usize) {
        self.output_limit = bytes.max(MIN_OUTPUT_LIMIT);
    }

    /// The current output limit (see [`Shell::set_output_limit`]).
    pub fn output_limit(&self) -> usize {
        self.output_limit
    }

    /// Attach the control shell used to kill commands on timeout or cancel.
    pub fn set_control(&mut self, control: Control) {
        self.control = Some(control);
    }

    /// The attached control shell, if any.
    pub fn control(&self) -> Option<&Control> {
        self.control.as_ref()
    }

    /// A handle that cancels the running command from elsewhere (e.g. a Ctrl-C handler).
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Give the stream back (e.g. to speak another protocol to the same bash).
    pub fn into_stream(self) -> Box<dyn ShellStream> {
        self.stream
    }

    fn io_err(&self, doing: &'static str, source: std::io::Error) -> ShellError {
        if matches!(
            source.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
        ) {
            return ShellError::Disconnected {
                name: self.opts.name.clone(),
                command: None,
            };
        }
        ShellError::Io {
            name: self.opts.name.clone(),
            doing,
            source,
        }
    }

    pub(crate) fn desync(&self, detail: impl Into<String>) -> ShellError {
        ShellError::Desync {
            name: self.opts.name.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn check_usable(&self) -> Result<(), ShellError> {
        match &self.dead {
            Some(why) => Err(self.desync(format!("unusable since an earlier failure ({why})"))),
            None => Ok(()),
        }
    }

    /// Mark the shell unusable after errors that leave it out of step.
    pub(crate) fn note_failure(&mut self, err: &ShellError) {
        if matches!(
            err,
            ShellError::Disconnected { .. }
                | ShellError::Desync { .. }
                | ShellError::Io { .. }
                | ShellError::NoControl { .. }
        ) && self.dead.is_none()
        {
            self.dead = Some(err.to_string());
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), ShellError> {
        let r = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        }
        .await;
        r.map_err(|e| self.io_err("sending to the guest", e))
    }

    /// Read more bytes into `self.buf` before `deadline`; `Ok(false)` when the deadline passed.
    pub(crate) async fn fill_until(&mut self, deadline: Instant) -> Result<bool, ShellError> {
        match tokio::time::timeout_at(deadline, read_some(&mut self.stream, &mut self.buf)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(ShellError::Disconnected {
                name: self.opts.name.clone(),
                command: None,
            }),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(self.io_err("reading from the guest", e)),
        }
    }

    /// Take the buffered bytes up to `upto` and log them as unexpected.
    fn drop_stray(&mut self, upto: usize, when: &str) {
        if upto > 0 {
            let stray: Vec<u8> = self.buf.drain(..upto).collect();
            tracing::warn!(shell = %self.opts.name, "unexpected output from the guest shell {when}: {}", show(&stray));
        }
    }

    async fn handshake(&mut self) -> Result<(), ShellError> {
        let started = Instant::now();
        let deadline = started + self.opts.timeout;
        let mut next_hint = started + self.opts.silence_log_interval;
        let g = GREETING.as_bytes();
        loop {
            if let Some(i) = find(&self.buf, g, 0) {
                if i > 0 {
                    tracing::info!(shell = %self.opts.name, "guest shell says: {}", show(&self.buf[..i]));
                }
                self.buf.drain(..i + g.len());
                break;
            }
            // Keep a rolling tail so that a greeting split across reads is still found.
            if self.buf.len() > CHUNK {
                let keep = g.len() - 1;
                let cut = self.buf.len() - keep;
                tracing::info!(shell = %self.opts.name, "guest shell says: {}", show(&self.buf[..cut]));
                self.buf.drain(..cut);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ShellError::ConnectTimeout {
                    name: self.opts.name.clone(),
                    unit: unit_name(&self.opts.device),
                    waited: self.opts.timeout,
                });
            }
            if !self.fill_until(next_hint.min(deadline)).await? && Instant::now() >= next_hint {
                tracing::warn!(
                    shell = %self.opts.name,
                    "guest root shell has not greeted yet after {:.0} s; to debug, look at the serial log \
                     or run `systemctl status {}` on the serial console",
                    started.elapsed().as_secs_f64(),
                    unit_name(&self.opts.device)
                );
                next_hint += self.opts.silence_log_interval;
            }
        }
        let marker = protocol::random_marker();
        self.send(protocol::preamble(&marker).as_bytes()).await?;
        let pat = format!("{marker} R ");
        loop {
            if let Some(i) = find(&self.buf, pat.as_bytes(), 0) {
                if let Some(nl) = self.buf[i..].iter().position(|&b| b == b'\n') {
                    let pid = protocol::parse_pid(&self.buf[i + pat.len()..i + nl]);
                    // A newline right after the greeting is expected; anything else is logged.
                    let stray = &self.buf[..i];
                    if !stray.iter().all(|&b| b == b'\n' || b == b'\r') {
                        self.drop_stray(i, "after its greeting");
                        self.buf.drain(..nl + 1);
                    } else {
                        self.buf.drain(..i + nl + 1);
                    }
                    self.guest_pid =
                        pid.ok_or_else(|| self.desync("malformed ready line after the preamble"))?;
                    break;
                }
            }
            if !self.fill_until(deadline).await? {
                return Err(self.desync(format!(
                    "the guest shell greeted but did not answer the preamble within {:?}",
                    self.opts.timeout
                )));
            }
        }
        self.dead = None;
        tracing::info!(shell = %self.opts.name, "connected to guest root shell");
        tracing::info!(shell = %self.opts.name, "(connecting took {:.2} seconds)", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Run `command` as root in the guest and wait for it, in one round trip.
    ///
    /// The command runs in its own subshell with `set -euo pipefail`, stdin `/dev/null` and
    /// stdout a pipe; each complete output line is passed to `on_line` (without its newline) as it
    /// arrives (a line longer than [`MAX_LINE`] is cut, with a note of its length), and the
    /// output is returned: all of it, or when it exceeds the output limit
    /// ([`Shell::set_output_limit`]) a [`dropped_marker`] line followed by its last bytes, so host
    /// memory per command stays below about twice the limit however much the guest writes. `timeout` is enforced on the host: at the
    /// deadline the control shell kills the command's process tree and [`ShellError::Timeout`] is
    /// returned (needs [`Shell::set_control`]). A command that exits while a process it started
    /// still holds its stdout gives [`ShellError::BackgroundHolder`] at once.
    pub async fn execute(
        &mut self,
        command: &str,
        timeout: Option<Duration>,
        on_line: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Output, ShellError> {
        self.check_usable()?;
        if command.contains('\0') {
            return Err(ShellError::InvalidCommand {
                name: self.opts.name.clone(),
                command: command.to_owned(),
                reason: "it contains a NUL byte, which bash cannot read",
            });
        }
        let marker = protocol::random_marker();
        self.cancel.requested.store(false, Ordering::SeqCst);
        self.cancel.running.store(true, Ordering::SeqCst);
        let r = self.run(command, &marker, timeout, on_line).await;
        self.cancel.running.store(false, Ordering::SeqCst);
        self.cancel.requested.store(false, Ordering::SeqCst);
        let r = r.map_err(|e| match e {
            ShellError::Disconnected {
                name,
                command: None,
            } => ShellError::Disconnected {
                name,
                command: Some(command.to_owned()),
            },
            e => e,
        });
        if let Err(e) = &r {
            self.note_failure(e);
        }
        r
    }

    async fn run(
        &mut self,
        command: &str,
        marker: &str,
        timeout: Option<Duration>,
        on_line: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Output, ShellError> {
        self.send(protocol::command_line(marker, command).as_bytes())
            .await?;
        let start_pat = format!("{marker} S ");
        let end_pat = format!("\n{marker} E ");
        let deadline = timeout.map(|t| Instant::now() + t);
        let cancel = self.cancel.clone();
        let mut pid: Option<u32> = None;
        let mut out: Vec<u8> = Vec::new();
        let mut searched = 0;
        let mut delivered = 0;
        let mut line_scan = 0;
        let mut kill: Option<KillReason> = None;
        let mut kill_sent = false;
        let mut grace: Option<Instant> = None;
        let mut last_read = Instant::now();
        let limit = self.output_limit;
        let mut sink = LineSink {
            on_line,
            head: Vec::new(),
            head_total: 0,
        };
        // Bytes dropped from the head of the output (over the limit).
        let mut dropped: u64 = 0;
        // A greeting among the stray bytes before the start line: the shell died and a new one
        // greeted before the old relay copied the start line (the relay is a separate process).
        let mut greeted_before_start = false;
        loop {
            if pid.is_none() {
                // The start line can be lost if the command killed the output relay before it
                // copied the line; the end line (written after the relay is replaced) still comes.
                let start = find(&self.buf, start_pat.as_bytes(), 0);
                if let Some(e) =
                    find(&self.buf, end_pat.as_bytes(), 0).filter(|&e| start.is_none_or(|s| e < s))
                {
                    tracing::warn!(shell = %self.opts.name, "the start line of `{command}` was lost (its output relay died)");
                    out = self.buf.split_off(e);
                    self.drop_stray(e, "before a command started");
                    self.buf.clear();
                    pid = Some(0);
                } else if let Some(i) = start {
                    if let Some(nl) = self.buf[i..].iter().position(|&b| b == b'\n') {
                        let p = protocol::parse_pid(&self.buf[i + start_pat.len()..i + nl])
                            .ok_or_else(|| {
                                self.desync(format!("malformed start line for `{command}`"))
                            })?;
                        out = self.buf.split_off(i + nl + 1);
                        greeted_before_start |=
                            find(&self.buf[..i], GREETING_LINE.as_bytes(), 0).is_some();
                        self.drop_stray(i, "before a command started");
                        self.buf.clear();
                        pid = Some(p);
                    }
                } else if self.buf.len() > STRAY_LIMIT {
                    // Neither line yet and a flood of stray bytes (a background process of an
                    // earlier command): keep only a tail that may hold the start of either line.
                    let cut = self.buf.len() - STRAY_KEEP;
                    greeted_before_start |=
                        find(&self.buf[..cut], GREETING_LINE.as_bytes(), 0).is_some();
                    self.drop_stray(cut, "before a command started");
                }
            }
            if pid.is_some() {
                match find(&out, end_pat.as_bytes(), searched) {
                    Some(p) => {
                        let rest = p + end_pat.len();
                        if let Some(nl) = out[rest..].iter().position(|&b| b == b'\n') {
                            let end =
                                protocol::parse_end(&out[rest..rest + nl]).ok_or_else(|| {
                                    self.desync(format!("malformed end line for `{command}`"))
                                })?;
                            self.buf = out.split_off(rest + nl + 1);
                            out.truncate(p);
                            protocol::deliver_rest(&out, &mut delivered, &mut |l| sink.line(l));
                            if out.len() > limit {
                                let len = out.len();
                                dropped +=
                                    trim_head(&mut out, limit, len, &mut delivered, &mut sink)
                                        as u64;
                            }
                            if dropped > 0 {
                                let mut with_marker =
                                    dropped_marker(dropped, out.len()).into_bytes();
                                with_marker.extend_from_slice(&out);
                                out = with_marker;
                            }
                            let mut end = end;
                            if kill.is_none() && !end.holders.is_empty() {
                                end.holders = self.confirm_holders(end.holders).await?;
                            }
                            return self.finish(command, end, kill, out);
                        }
                        searched = p;
                    }
                    None => {
                        searched = out.len().saturating_sub(end_pat.len() - 1);
                        protocol::deliver_lines(
                            &out,
                            &mut delivered,
                            &mut line_scan,
                            end_pat.as_bytes(),
                            &mut |l| sink.line(l),
                        );
                        // Amortised: trim once the output is half as large again as the limit.
                        if out.len() > limit + limit / 2 {
                            if dropped == 0 {
                                tracing::warn!(shell = %self.opts.name, "the output of `{command}` exceeds {limit} bytes: only its last {limit} bytes are kept");
                            }
                            let cut =
                                trim_head(&mut out, limit, searched, &mut delivered, &mut sink);
                            searched -= cut;
                            line_scan = line_scan.max(cut) - cut;
                            dropped += cut as u64;
                        }
                    }
                }
            }
            if let (Some(_), false) = (kill, kill_sent) {
                let Some(control) = self.control.clone() else {
                    return Err(ShellError::NoControl {
                        name: self.opts.name.clone(),
                        command: command.to_owned(),
                    });
                };
                if let Some(p) = pid.filter(|&p| p > 1) {
                    if let Err(e) = control.cancel(p).await {
                        return Err(self
                            .desync(format!("could not kill command `{command}` (pid {p}): {e}")));
                    }
                    kill_sent = true;
                    grace = Some(Instant::now() + KILL_GRACE);
                }
            }

            let notified = cancel.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if kill.is_none() && cancel.requested.load(Ordering::SeqCst) {
                kill = Some(KillReason::Cancel);
                grace = Some(Instant::now() + KILL_GRACE);
                continue;
            }
            let far = Instant::now() + Duration::from_secs(86400 * 365);
            // A new greeting at the very end (or before the start line), and silence after it:
            // the guest rebooted or the shell was re-spawned (a new shell says nothing after its
            // greeting; output that merely ends with the greeting text is followed by the end
            // line).
            let tail = if pid.is_some() { &out } else { &self.buf };
            let respawn_suspect = (greeted_before_start
                || tail.ends_with(GREETING_LINE.as_bytes()))
            .then_some(last_read + RESPAWN_QUIET);
            let target = if pid.is_some() {
                &mut out
            } else {
                &mut self.buf
            };
            tokio::select! {
                r = read_some(&mut self.stream, target) => match r {
                    Ok(0) => return Err(ShellError::Disconnected { name: self.opts.name.clone(), command: Some(command.to_owned()) }),
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => return Err(self.io_err("reading command output", e)),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && kill.is_none() => {
                    kill = timeout.map(KillReason::Timeout);
                    grace = Some(Instant::now() + KILL_GRACE);
                }
                _ = &mut notified, if kill.is_none() => {}
                _ = tokio::time::sleep_until(respawn_suspect.unwrap_or(far)), if respawn_suspect.is_some() => {
                    // Leave one greeting for `reconnect` to find.
                    self.buf = GREETING_LINE.as_bytes().to_vec();
                    return Err(ShellError::Respawned {
                        name: self.opts.name.clone(),
                        command: command.to_owned(),
                    });
                }
                _ = tokio::time::sleep_until(grace.unwrap_or(far)), if grace.is_some() => {
                    // Keep the tail: a greeting in it lets `reconnect` find the new shell.
                    let keep = out.len().saturating_sub(4096);
                    self.buf.extend_from_slice(&out[keep..]);
                    return Err(self.desync(format!(
                        "command `{command}` was killed but the shell did not report its end within {KILL_GRACE:?}"
                    )));
                }
            }
        }
    }

    /// A process forked just before the command exited may not have applied its own
    /// redirections yet: ask again after short pauses which of `pids` still hold the output.
    async fn confirm_holders(&mut self, mut pids: Vec<u32>) -> Result<Vec<u32>, ShellError> {
        for pause in HOLDER_RECHECKS {
            tokio::time::sleep(pause).await;
            let marker = protocol::random_marker();
            self.send(protocol::check_holders_line(&marker, &pids).as_bytes())
                .await?;
            let pat = format!("{marker} C");
            let deadline = Instant::now() + KILL_GRACE;
            let line = loop {
                if let Some(i) = find(&self.buf, pat.as_bytes(), 0) {
                    if let Some(nl) = self.buf[i..].iter().position(|&b| b == b'\n') {
                        let line = self.buf[i + pat.len()..i + nl].to_vec();
                        self.drop_stray(i, "from a background process");
                        self.buf.drain(..nl + 1);
                        break line;
                    }
                }
                if !self.fill_until(deadline).await? {
                    return Err(self.desync("no answer to the background-process check"));
                }
            };
            pids = String::from_utf8_lossy(&line)
                .split_ascii_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
        }
        Ok(pids)
    }

    fn finish(
        &self,
        command: &str,
        end: protocol::EndLine,
        kill: Option<KillReason>,
        stdout: Vec<u8>,
    ) -> Result<Output, ShellError> {
        let name = self.opts.name.clone();
        let command = command.to_owned();
        match kill {
            Some(KillReason::Timeout(timeout)) => Err(ShellError::Timeout {
                name,
                command,
                timeout,
                stdout,
            }),
            Some(KillReason::Cancel) => Err(ShellError::Cancelled {
                name,
                command,
                stdout,
            }),
            None if !end.holders.is_empty() => Err(ShellError::BackgroundHolder {
                name,
                command,
                pids: end.holders,
                code: end.code,
                stdout,
            }),
            None => Ok(Output {
                code: end.code,
                stdout,
            }),
        }
    }
}

impl Shell {
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn take_buffered(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }
}
