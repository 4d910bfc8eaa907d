//! The switch thread: one epoll loop over every socket (listeners, clients, a command eventfd).
//!
//! Deliberately not a tokio runtime: measured on this project's hardware, a current-thread
//! runtime with a `LocalSet` adds about 5 µs per wake-up to the forwarding path (15.5 µs vs
//! 10.8 µs per hop in an isolated ping-pong), which is the whole margin against `vde_switch`.
//! The loop is level-triggered with a read budget per event, so one busy port cannot starve the
//! others; EPOLLOUT is requested only while a port's queue is stuck.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::{Conn, Core, RegEntry};
use crate::framing::{next_frame, HEADER};
use crate::stats::{DropReason, PortKind, PortStats};
use crate::sys::RecvBatch;
use crate::vde;

/// Requests from the handle.
pub(crate) enum Command {
    /// Start accepting a stream port's client.
    AddStream {
        name: String,
        listener: UnixListener,
        stats: Arc<PortStats>,
    },
    /// Attach a TAP device to the port `name` (made if new; an earlier connection is replaced).
    AddTap {
        name: String,
        fd: OwnedFd,
        iface: String,
        stats: Arc<PortStats>,
    },
    /// Make port `name` (no device yet) unless it exists.
    AddSlot { name: String, stats: Arc<PortStats> },
    /// Close port `name`'s connection if it is the TAP device `iface`, then acknowledge.
    DetachTap {
        name: String,
        iface: String,
        ack: std::sync::mpsc::Sender<()>,
    },
    /// Flush the pcap buffer, then acknowledge.
    FlushPcap(std::sync::mpsc::Sender<()>),
    /// Stop the switch.
    Shutdown,
}

/// The handle's side of the command channel: a queue plus an eventfd that wakes the loop.
pub(crate) struct Commands {
    queue: Mutex<VecDeque<Command>>,
    event: OwnedFd,
    stopped: AtomicBool,
}

impl Commands {
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: Mutex::new(VecDeque::new()),
            event,
            stopped: AtomicBool::new(false),
        })
    }

    /// Queue a command; false when the switch has stopped.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        if self.stopped.load(Ordering::Acquire) {
            return false;
        }
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(cmd);
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), 8) };
        true
    }

    fn take(&self) -> VecDeque<Command> {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes from our eventfd (non-blocking).
        unsafe { libc::read(self.event.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

// Event tokens: kind (8 bits) | index (24 bits) | generation (32 bits).
/// The highest port number a VDE client may ask for (each number is a slot that stays).
const MAX_VDE_PORT: u32 = 1024;

const K_CMD: u64 = 1;
const K_LISTEN: u64 = 2;
const K_VDE_LISTEN: u64 = 3;
const K_HANDSHAKE: u64 = 4;
const K_STREAM: u64 = 5;
const K_VDE_DATA: u64 = 6;
const K_VDE_CTL: u64 = 7;
const K_TAP: u64 = 8;

fn token(kind: u64, idx: u32, gen: u64) -> u64 {
    (kind << 56) | (u64::from(idx) & 0xff_ffff) << 32 | (gen & 0xffff_ffff)
}

fn split(t: u64) -> (u64, u32, u64) {
    (t >> 56, ((t >> 32) & 0xff_ffff) as u32, t & 0xffff_ffff)
}

/// The token of a connection's data socket.
pub(crate) fn token_data(idx: u32, gen: u64, conn: &Conn) -> u64 {
    match conn {
        Conn::Stream { .. } => token(K_STREAM, idx, gen),
        Conn::Dgram { .. } => token(K_VDE_DATA, idx, gen),
        Conn::Tap { .. } => token(K_TAP, idx, gen),
    }
}

fn epoll_ctl(
    epfd: RawFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    tok: u64,
) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: tok };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn add(epfd: RawFd, fd: RawFd, tok: u64) -> std::io::Result<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, tok)
}

/// Ask for (or stop asking for) writability of a connection's data socket.
pub(crate) fn set_interest(epfd: RawFd, fd: RawFd, tok: u64, write: bool) {
    let mut events = libc::EPOLLIN as u32;
    if write {
        events |= libc::EPOLLOUT as u32;
    }
    if let Err(e) = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events, tok) {
        tracing::warn!(error = %e, "netsim: epoll_ctl MOD failed");
    }
}

/// Create the epoll instance (owned by the switch thread).
pub(crate) fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Minimum size of the shared stream read buffer.
const STREAM_BUF: usize = 128 * 1024;
/// Reads per readiness event before moving on to other ports.
const READS_PER_TURN: usize = 16;
/// A VDE client must send its request within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Housekeeping period: pcap flush, MAC table publication, handshake deadlines.
const TICK: Duration = Duration::from_millis(200);

struct Handshake {
    sock: UnixStream,
    buf: [u8; vde::MAX_REQUEST],
    got: usize,
    deadline: Instant,
}

/// The event loop and what it owns besides the core.
pub(crate) struct Engine {
    core: Core,
    epfd: OwnedFd,
    cmds: Arc<Commands>,
    listeners: Vec<(u32, UnixListener)>,
    vde_listener: UnixListener,
    vde_dir: PathBuf,
    vde_seq: u64,
    handshakes: Vec<Option<Handshake>>,
    batch: Option<RecvBatch>,
    /// Read buffer shared by all stream ports.
    stream_buf: Vec<u8>,
    stop: bool,
}

impl Engine {
    pub(crate) fn new(
        core: Core,
        epfd: OwnedFd,
        cmds: Arc<Commands>,
        vde_listener: UnixListener,
        vde_dir: PathBuf,
    ) -> std::io::Result<Self> {
        add(epfd.as_raw_fd(), cmds.event.as_raw_fd(), token(K_CMD, 0, 0))?;
        add(
            epfd.as_raw_fd(),
            vde_listener.as_raw_fd(),
            token(K_VDE_LISTEN, 0, 0),
        )?;
        Ok(Self {
            core,
            epfd,
            cmds,
            listeners: Vec::new(),
            vde_listener,
            vde_dir,
            vde_seq: 0,
            handshakes: Vec::new(),
            batch: Some(RecvBatch::new(32)),
            stream_buf: Vec::new(),
            stop: false,
        })
    }

    /// Run until `Shutdown`.
    pub(crate) fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut next_tick = Instant::now() + TICK;
        while !self.stop {
            let now = Instant::now();
            let mut wake = next_tick;
            if let Some(d) = self.core.next_due() {
                wake = wake.min(d);
            }
            // Round up: waking early only costs a loop turn; waking late delays frames.
            let timeout = wake.saturating_duration_since(now);
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `events` is a valid buffer of the given length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    ms,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "netsim: epoll_wait failed; switch stopping");
                    break;
                }
                continue;
            }
            for ev in &events[..n as usize] {
                let (flags, tok) = (ev.events, ev.u64);
                self.dispatch(tok, flags);
            }
            let now = Instant::now();
            if self.core.next_due().is_some_and(|d| d <= now) {
                self.core.release_due(now);
            }
            self.core.flush_dirty();
            if now >= next_tick {
                next_tick = now + TICK;
                self.core.flush_pcap();
                self.core.publish_macs();
                self.expire_handshakes(now);
            }
        }
        self.cmds.stopped.store(true, Ordering::Release);
        // Answer commands that raced with the shutdown.
        for cmd in self.cmds.take() {
            match cmd {
                Command::FlushPcap(ack) | Command::DetachTap { ack, .. } => {
                    let _ = ack.send(());
                }
                _ => {}
            }
        }
        self.core.shutdown();
    }

    fn dispatch(&mut self, tok: u64, flags: u32) {
        let (kind, idx, gen) = split(tok);
        let readable = flags
            & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32
            != 0;
        let writable = flags & libc::EPOLLOUT as u32 != 0;
        match kind {
            K_CMD => self.commands(),
            K_LISTEN => self.accept_stream(idx),
            K_VDE_LISTEN => self.accept_vde(),
            K_HANDSHAKE => self.handshake(idx as usize),
            K_STREAM | K_VDE_DATA | K_VDE_CTL | K_TAP => {
                if (self.core.gen_of(idx) & 0xffff_ffff) != gen || !self.core.is_connected(idx) {
                    return; // stale event of a closed connection
                }
                let gen = self.core.gen_of(idx);
                if writable && kind != K_VDE_CTL {
                    self.core.flush_port(idx);
                }
                if readable {
                    match kind {
                        K_STREAM => self.read_stream(idx, gen),
                        K_VDE_DATA => self.read_dgrams(idx),
                        K_TAP => self.read_tap(idx, gen),
                        _ => self.read_vde_ctl(idx, gen),
                    }
                }
            }
            _ => {}
        }
    }

    fn commands(&mut self) {
        for cmd in self.cmds.take() {
            match cmd {
                Command::AddStream {
                    name,
                    listener,
                    stats,
                } => {
                    let idx = self.core.add_port(name.clone(), stats);
                    if let Err(e) = add(
                        self.epfd.as_raw_fd(),
                        listener.as_raw_fd(),
                        token(K_LISTEN, idx, 0),
                    ) {
                        tracing::warn!(port = %name, error = %e, "netsim: cannot watch listener");
                    }
                    self.listeners.push((idx, listener));
                }
                Command::AddTap {
                    name,
                    fd,
                    iface,
                    stats,
                } => self.attach_tap(name, fd, iface, stats),
                Command::AddSlot { name, stats } => {
                    if self.core.port_by_name(&name).is_none() {
                        self.core.add_port(name, stats);
                    }
                }
                Command::DetachTap { name, iface, ack } => {
                    if let Some(i) = self.core.port_by_name(&name) {
                        let ours = matches!(
                            &self.core.port(i).conn,
                            Some(Conn::Tap { iface: f, .. }) if *f == iface
                        );
                        if ours {
                            let gen = self.core.gen_of(i);
                            self.core.close(i, gen, "TAP device detached", false);
                        }
                    }
                    let _ = ack.send(());
                }
                Command::FlushPcap(ack) => {
                    self.core.flush_pcap();
                    let _ = ack.send(());
                }
                Command::Shutdown => self.stop = true,
            }
        }
    }

    /// Accept clients of one stream port; a second client while one is connected is refused.
    fn accept_stream(&mut self, idx: u32) {
        let Some((_, listener)) = self.listeners.iter().find(|(i, _)| *i == idx) else {
            return;
        };
        loop {
            let sock = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "netsim: accept failed");
                    return;
                }
            };
            if self.core.is_connected(idx) {
                let name = self.core.port(idx).name.clone();
                tracing::warn!(
                    port = %name,
                    "netsim: refusing a second client on a stream port (one client per port)"
                );
                continue;
            }
            if let Err(e) = sock.set_nonblocking(true) {
                tracing::warn!(error = %e, "netsim: cannot make client socket non-blocking");
                continue;
            }
            let fd = sock.as_raw_fd();
            let conn = Conn::Stream {
                sock,
                out: Vec::new(),
                pos: 0,
                carry: Vec::new(),
            };
            let gen = self.core.connect(idx, conn);
            if let Err(e) = add(self.epfd.as_raw_fd(), fd, token(K_STREAM, idx, gen)) {
                self.core
                    .close(idx, gen, &format!("cannot watch the connection: {e}"), true);
            }
        }
    }

    /// Read what a stream client sent (bounded turn) and forward every whole frame.
    ///
    /// Reads land in one buffer shared by all stream ports (the loop is single-threaded); only
    /// an incomplete frame is kept per port, so an idle port costs no read buffer.
    fn read_stream(&mut self, idx: u32, gen: u64) {
        let max_frame = self.core.limits().max_frame;
        let Some(Conn::Stream { carry, sock, .. }) = &mut self.core.port(idx).conn else {
            return;
        };
        let fd = sock.as_raw_fd();
        let mut carry = std::mem::take(carry);
        let mut buf = std::mem::take(&mut self.stream_buf);
        let want = (2 * (max_frame + HEADER)).max(STREAM_BUF);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let (mut start, mut end) = (0usize, carry.len());
        buf[..end].copy_from_slice(&carry);
        let mut closed: Option<(String, bool)> = None;
        for _ in 0..READS_PER_TURN {
            // Keep room for at least one whole frame after the pending bytes.
            if start == end {
                start = 0;
                end = 0;
            } else if buf.len() - end < max_frame + HEADER {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            let spare = &mut buf[end..];
            // SAFETY: `spare` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                closed = Some(if end > start {
                    (
                        format!(
                            "truncated frame at end of stream ({} bytes pending)",
                            end - start
                        ),
                        true,
                    )
                } else {
                    ("client disconnected".into(), false)
                });
                break;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        closed = Some((format!("read failed: {e}"), true));
                        break;
                    }
                }
            }
            end += n as usize;
            let now = Instant::now();
            loop {
                match next_frame(&buf[start..end], max_frame) {
                    Ok(Some(len)) => {
                        let f = start + HEADER;
                        self.core.ingress(idx, &buf[f..f + len], now);
                        start = f + len;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        closed = Some((format!("bad frame: {e}"), true));
                        break;
                    }
                }
            }
            if closed.is_some() {
                break;
            }
        }
        self.core.flush_dirty();
        carry.clear();
        carry.extend_from_slice(&buf[start..end]);
        if carry.capacity() > 16 * 1024 && carry.len() < 4 * 1024 {
            carry.shrink_to(4 * 1024);
        }
        self.stream_buf = buf;
        if let Some((reason, error)) = closed {
            self.core.close(idx, gen, &reason, error);
            return;
        }
        if let Some(Conn::Stream { carry: c, .. }) = &mut self.core.port(idx).conn {
            *c = carry;
        }
    }

    /// Receive and forward a turn's worth of datagrams, flushing after each batch.
    fn read_dgrams(&mut self, idx: u32) {
        let Some(mut b) = self.batch.take() else {
            return;
        };
        let fd = match &self.core.port(idx).conn {
            Some(Conn::Dgram { sock, .. }) => sock.as_raw_fd(),
            _ => {
                self.batch = Some(b);
                return;
            }
        };
        for _ in 0..READS_PER_TURN {
            let Ok(n) = b.recv(fd) else { break };
            let now = Instant::now();
            for i in 0..n {
                let (frame, truncated) = b.get(i);
                if truncated {
                    self.core.port(idx).stats.count_drop(DropReason::Malformed);
                    continue;
                }
                self.core.ingress(idx, frame, now);
            }
            self.core.flush_dirty();
            if n < 32 {
                break;
            }
        }
        self.batch = Some(b);
    }

    /// Connects a TAP device to port `name`, replacing an earlier one.
    fn attach_tap(&mut self, name: String, fd: OwnedFd, iface: String, stats: Arc<PortStats>) {
        let idx = match self.core.port_by_name(&name) {
            Some(i) => {
                if self.core.is_connected(i) {
                    let gen = self.core.gen_of(i);
                    self.core
                        .close(i, gen, "replaced by a new TAP device", false);
                }
                i
            }
            None => self.core.add_port(name, stats),
        };
        let raw = fd.as_raw_fd();
        let conn = Conn::Tap {
            fd,
            iface,
            arena: Vec::new(),
            q: VecDeque::new(),
        };
        let gen = self.core.connect(idx, conn);
        if let Err(e) = add(self.epfd.as_raw_fd(), raw, token(K_TAP, idx, gen)) {
            self.core
                .close(idx, gen, &format!("cannot watch the TAP device: {e}"), true);
        }
    }

    /// Read a turn's worth of frames from a TAP device (one frame per read) and forward them.
    /// A read error (the interface was deleted, e.g. with its container's network namespace)
    /// closes the port.
    fn read_tap(&mut self, idx: u32, gen: u64) {
        let max_frame = self.core.limits().max_frame;
        let Some(Conn::Tap { fd, .. }) = &self.core.port(idx).conn else {
            return;
        };
        let fd = fd.as_raw_fd();
        let mut buf = std::mem::take(&mut self.stream_buf);
        let want = (max_frame + 1).max(STREAM_BUF);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut closed = None;
        for _ in 0..READS_PER_TURN {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        closed = Some(format!("TAP device gone: {e}"));
                        break;
                    }
                }
            }
            let n = n as usize;
            if n == 0 {
                closed = Some("TAP device gone".to_string());
                break;
            }
            if n > max_frame {
                self.core.port(idx).stats.count_drop(DropReason::Malformed);
                continue;
            }
            self.core.ingress(idx, &buf[..n], Instant::now());
        }
        self.core.flush_dirty();
        self.stream_buf = buf;
        if let Some(reason) = closed {
            self.core.close(idx, gen, &reason, false);
        }
    }

    /// The VDE control stream carries nothing after the handshake; EOF closes the port.
    fn read_vde_ctl(&mut self, idx: u32, gen: u64) {
        let Some(Conn::Dgram { ctl, .. }) = &mut self.core.port(idx).conn else {
            return;
        };
        let mut scratch = [0u8; 256];
        let reason = match ctl.read(&mut scratch) {
            Ok(0) => Some("client closed its VDE control connection".to_string()),
            Ok(_) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => Some(format!("control connection failed: {e}")),
        };
        if let Some(r) = reason {
            self.core.close(idx, gen, &r, false);
        }
    }

    fn accept_vde(&mut self) {
        loop {
            let sock = match self.vde_listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "netsim: VDE accept failed");
                    return;
                }
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let slot = match self.handshakes.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    self.handshakes.push(None);
                    self.handshakes.len() - 1
                }
            };
            if add(
                self.epfd.as_raw_fd(),
                sock.as_raw_fd(),
                token(K_HANDSHAKE, slot as u32, 0),
            )
            .is_err()
            {
                continue;
            }
            self.handshakes[slot] = Some(Handshake {
                sock,
                buf: [0; vde::MAX_REQUEST],
                got: 0,
                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            });
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        for h in self.handshakes.iter_mut() {
            if h.as_ref().is_some_and(|h| h.deadline <= now) {
                tracing::warn!(
                    vlan = self.core.shared.vlan,
                    "netsim: VDE client sent no request within 5 s"
                );
                *h = None;
            }
        }
    }

    fn handshake(&mut self, slot: usize) {
        let vlan = self.core.shared.vlan;
        let Some(Some(h)) = self.handshakes.get_mut(slot) else {
            return;
        };
        match h.sock.read(&mut h.buf[h.got..]) {
            Ok(0) => {
                tracing::warn!(
                    vlan,
                    got = h.got,
                    "netsim: VDE client closed before its request"
                );
                self.handshakes[slot] = None;
                return;
            }
            Ok(n) => h.got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => {
                tracing::warn!(vlan, error = %e, "netsim: VDE request read failed");
                self.handshakes[slot] = None;
                return;
            }
        }
        let request = match vde::parse_request(&h.buf[..h.got]) {
            Ok(r) => r,
            Err(e) if e.contains("too short") && h.got < vde::FIXED_LEN => return,
            Err(e) => {
                tracing::warn!(vlan, reason = %e, "netsim: rejecting VDE client");
                self.handshakes[slot] = None;
                return;
            }
        };
        let Some(h) = self.handshakes[slot].take() else {
            return;
        };
        if let Err(e) = self.attach_vde(h.sock, request) {
            tracing::warn!(vlan, reason = %e, "netsim: VDE client not attached");
        }
    }

    fn attach_vde(&mut self, mut ctl: UnixStream, request: vde::VdeRequest) -> Result<(), String> {
        if request.port > MAX_VDE_PORT {
            return Err(format!(
                "port {} requested by a VDE client is above the highest VDE port {MAX_VDE_PORT}",
                request.port
            ));
        }
        let c = &mut self.core;
        let number = if request.port != 0 {
            request.port
        } else {
            (1u32..)
                .find(|n| {
                    c.port_by_name(&format!("vde{n}"))
                        .is_none_or(|i| !c.is_connected(i))
                })
                .unwrap_or(1)
        };
        let name = format!("vde{number}");
        let idx = match c.port_by_name(&name) {
            Some(i) if c.is_connected(i) => {
                return Err(format!("port {name} requested by a client is in use"))
            }
            Some(i) => {
                if let Ok(mut reg) = c.shared.registry.lock() {
                    if let Some(e) = reg.iter_mut().find(|e| e.name == name) {
                        e.kind = PortKind::Vde {
                            description: request.description.clone(),
                        };
                    }
                }
                i
            }
            None => {
                let stats = Arc::new(PortStats::default());
                if let Ok(mut reg) = c.shared.registry.lock() {
                    reg.push(RegEntry {
                        name: name.clone(),
                        kind: PortKind::Vde {
                            description: request.description.clone(),
                        },
                        stats: stats.clone(),
                    });
                }
                c.add_port(name.clone(), stats)
            }
        };
        let n = self.vde_seq;
        self.vde_seq += 1;
        let path = self.vde_dir.join(format!("{idx:03}.{n}"));
        let data = open_data_socket(&path, &request.client_path).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!("data socket {}: {e}", path.display())
        })?;
        // The reply is 110 bytes on a fresh socket: it fits the send buffer at once.
        ctl.write_all(&vde::encode_sockaddr_un(&path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                format!("reply failed: {e}")
            })?;
        let (ctl_fd, data_fd) = (ctl.as_raw_fd(), data.as_raw_fd());
        let conn = Conn::Dgram {
            ctl,
            sock: data,
            arena: Vec::new(),
            q: VecDeque::new(),
            path,
        };
        let gen = self.core.connect(idx, conn);
        let epfd = self.epfd.as_raw_fd();
        // The ctl socket is already in epoll (as a handshake): retarget it.
        let r = epoll_ctl(
            epfd,
            libc::EPOLL_CTL_MOD,
            ctl_fd,
            libc::EPOLLIN as u32,
            token(K_VDE_CTL, idx, gen),
        )
        .and_then(|()| add(epfd, data_fd, token(K_VDE_DATA, idx, gen)));
        if let Err(e) = r {
            self.core
                .close(idx, gen, &format!("cannot watch the connection: {e}"), true);
        }
        Ok(())
    }
}

fn open_data_socket(path: &Path, client: &Path) -> std::io::Result<UnixDatagram> {
    let _ = std::fs::remove_file(path);
    let s = UnixDatagram::bind(path)?;
    s.connect(client)?;
    s.set_nonblocking(true)?;
    crate::sys::set_buffers(s.as_raw_fd(), 1 << 20);
    Ok(s)
}
