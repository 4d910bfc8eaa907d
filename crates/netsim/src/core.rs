//! The forwarding engine's state: ports, learning table, compiled policy, queues and timers.
//! Lives on the switch thread only; the handle talks to it via [`Shared`] and commands.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Impairment, REORDER_HOLD};
use crate::mac::{mac_key, Learned, MacTable, NO_MAC};
use crate::pcap::PcapWriter;
use crate::policy::{pair_key, Compiled, Policy};
use crate::rng::SplitMix64;
use crate::stats::{bump, DropReason, PortKind, PortStats};
use crate::sys::SendScratch;

/// A port as the handle sees it.
pub(crate) struct RegEntry {
    pub name: String,
    pub kind: PortKind,
    pub stats: Arc<PortStats>,
}

/// State shared between the handle (any thread) and the switch thread.
pub(crate) struct Shared {
    pub vlan: u8,
    pub policy: Mutex<Policy>,
    /// Bumped on every policy change; the switch recompiles when it sees a new value.
    pub version: AtomicU64,
    pub registry: Mutex<Vec<RegEntry>>,
    /// Signalled when a port connects or disconnects.
    pub cv: Condvar,
    /// Learned MACs (published periodically by the switch thread): (mac, port name).
    pub macs: Mutex<Vec<(u64, String)>>,
}

impl Shared {
    pub(crate) fn new(vlan: u8) -> Self {
        Self {
            vlan,
            policy: Mutex::new(Policy::default()),
            version: AtomicU64::new(1),
            registry: Mutex::new(Vec::new()),
            cv: Condvar::new(),
            macs: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn notify_change(&self) {
        // Take the lock so a waiter between its check and its wait cannot miss the signal.
        let _g = self.registry.lock();
        self.cv.notify_all();
    }
}

/// Queue bounds and frame limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub max_frame: usize,
}

/// A connected client.
pub(crate) enum Conn {
    /// `-netdev stream`: outgoing bytes already framed; `out[pos..]` is unsent; `carry` holds
    /// the start of a frame whose end has not arrived yet (reads go to a shared buffer).
    Stream {
        sock: UnixStream,
        out: Vec<u8>,
        pos: usize,
        carry: Vec<u8>,
    },
    /// VDE: the control stream (EOF = gone) and the data socket; queued frames are
    /// `(offset, len)` into `arena`.
    Dgram {
        ctl: UnixStream,
        sock: UnixDatagram,
        arena: Vec<u8>,
        q: VecDeque<(u32, u32)>,
        path: PathBuf,
    },
    /// A TAP device: one frame per read and per write; queued frames as for VDE.
    Tap {
        fd: OwnedFd,
        /// The device's host name when attached (a detach names the device it means).
        iface: String,
        arena: Vec<u8>,
        q: VecDeque<(u32, u32)>,
    },
}

impl Conn {
    /// The socket frames are written to.
    pub(crate) fn data_fd(&self) -> RawFd {
        match self {
            Conn::Stream { sock, .. } => sock.as_raw_fd(),
            Conn::Dgram { sock, .. } => sock.as_raw_fd(),
            Conn::Tap { fd, .. } => fd.as_raw_fd(),
        }
    }
}

/// One switch port (a slot that outlives its client connections).
pub(crate) struct Port {
    pub name: String,
    pub stats: Arc<PortStats>,
    pub conn: Option<Conn>,
    /// Connection generation: events of an old connection are recognised as stale.
    pub gen: u64,
    in_clock: Instant,
    out_clock: Instant,
    delayed: usize,
    dirty: bool,
    pub write_blocked: bool,
    /// The source MAC this port's last learned frame had (`NO_MAC` = none).
    last_src: u64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    dst: u32,
    buf: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// The engine.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    limits: Limits,
    pub ports: Vec<Option<Port>>,
    macs: MacTable,
    macs_dirty: bool,
    compiled: Compiled,
    seen_version: u64,
    ports_changed: bool,
    rng: SplitMix64,
    pub pcap: Option<PcapWriter>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    pair_clock: HashMap<(u32, u32), Instant>,
    pool: Vec<Vec<u8>>,
    dirty: Vec<u32>,
    seq: u64,
    send: SendScratch,
    /// The event loop's epoll instance (write interest is toggled here).
    epfd: RawFd,
}

/// Largest serialisation backlog a rate limit keeps before dropping.
fn max_backlog(rate_bps: u64) -> Duration {
    let t = Duration::from_secs_f64(64.0 * 1024.0 * 8.0 / rate_bps as f64);
    t.max(Duration::from_millis(100))
}

/// One impairment stage (a cable or a pair): `Err` = dropped, `Ok(dup)` = deliver (twice if dup).
fn stage(
    rng: &mut SplitMix64,
    imp: &Impairment,
    len: usize,
    clock: &mut Instant,
    now: Instant,
    delay: &mut Duration,
) -> Result<bool, DropReason> {
    if rng.chance(imp.loss) {
        return Err(DropReason::Loss);
    }
    let dup = rng.chance(imp.duplicate);
    if let Some(rate) = imp.rate_bps {
        let t0 = now + *delay;
        let start = (*clock).max(t0);
        if start - t0 > max_backlog(rate) {
            return Err(DropReason::Rate);
        }
        let done = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
        *clock = done;
        *delay = done - now;
    }
    let mut d = delay.as_secs_f64() + imp.latency.as_secs_f64();
    if !imp.jitter.is_zero() {
        d += imp.jitter.as_secs_f64() * rng.symmetric();
    }
    if rng.chance(imp.reorder) {
        d += REORDER_HOLD.as_secs_f64();
    }
    *delay = Duration::from_secs_f64(d.max(0.0));
    Ok(dup)
}

impl Core {
    pub(crate) fn new(
        shared: Arc<Shared>,
        limits: Limits,
        seed: u64,
        pcap: Option<PcapWriter>,
        epfd: RawFd,
    ) -> Self {
        Self {
            shared,
            limits,
            ports: Vec::new(),
            macs: MacTable::default(),
            macs_dirty: false,
            compiled: Compiled::default(),
            seen_version: 0,
            ports_changed: true,
            rng: SplitMix64::new(seed),
            pcap,
            delayed: BinaryHeap::new(),
            pair_clock: HashMap::new(),
            pool: Vec::new(),
            dirty: Vec::new(),
            seq: 0,
            send: SendScratch::default(),
            epfd,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Find a port slot by name.
    pub(crate) fn port_by_name(&self, name: &str) -> Option<u32> {
        self.ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.name == name))
            .map(|i| i as u32)
    }

    /// Add a port slot (no client yet).
    pub(crate) fn add_port(&mut self, name: String, stats: Arc<PortStats>) -> u32 {
        let now = Instant::now();
        let port = Port {
            name,
            stats,
            conn: None,
            gen: 0,
            in_clock: now,
            out_clock: now,
            delayed: 0,
            dirty: false,
            write_blocked: false,
            last_src: NO_MAC,
        };
        self.ports.push(Some(port));
        self.ports_changed = true;
        (self.ports.len() - 1) as u32
    }

    pub(crate) fn port(&mut self, i: u32) -> &mut Port {
        self.ports[i as usize]
            .as_mut()
            .expect("port slots are never removed")
    }

    /// Attach a client; returns its generation.
    pub(crate) fn connect(&mut self, i: u32, conn: Conn) -> u64 {
        let vlan = self.shared.vlan;
        let p = self.port(i);
        p.conn = Some(conn);
        p.gen += 1;
        p.write_blocked = false;
        p.stats.connected.store(true, Ordering::Release);
        bump(&p.stats.connections, 1);
        let gen = p.gen;
        tracing::info!(vlan, port = %p.name, "netsim: client connected");
        self.shared.notify_change();
        gen
    }

    pub(crate) fn is_connected(&self, i: u32) -> bool {
        self.ports[i as usize]
            .as_ref()
            .is_some_and(|p| p.conn.is_some())
    }

    pub(crate) fn gen_of(&self, i: u32) -> u64 {
        self.ports[i as usize].as_ref().map_or(0, |p| p.gen)
    }

    /// Close connection `gen` of port `i` (no-op if it is already gone), logging `reason`.
    pub(crate) fn close(&mut self, i: u32, gen: u64, reason: &str, error: bool) {
        let vlan = self.shared.vlan;
        let epfd = self.epfd;
        let p = self.port(i);
        if p.gen != gen || p.conn.is_none() {
            return;
        }
        // Dropping the sockets closes them, which also removes them from epoll.
        match p.conn.take() {
            Some(Conn::Dgram { path, .. }) => {
                let _ = std::fs::remove_file(&path);
            }
            Some(Conn::Tap { fd, .. }) => {
                // Its owner may hold a second descriptor of the device, which would keep the
                // registration (and its error events) alive after this one closes.
                // SAFETY: removing our own registration of a descriptor we still own.
                unsafe {
                    libc::epoll_ctl(
                        epfd,
                        libc::EPOLL_CTL_DEL,
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
            }
            _ => {}
        }
        p.gen += 1;
        p.write_blocked = false;
        p.stats.connected.store(false, Ordering::Release);
        if let Ok(mut g) = p.stats.last_close.lock() {
            *g = Some(reason.to_string());
        }
        if error {
            tracing::warn!(vlan, port = %p.name, reason, "netsim: closing port");
        } else {
            tracing::info!(vlan, port = %p.name, reason, "netsim: port disconnected");
        }
        p.last_src = NO_MAC;
        self.macs.forget_port(i);
        self.macs_dirty = true;
        // Closes are rare: publish now so a summary right after a VM exits is accurate.
        self.publish_macs();
        self.shared.notify_change();
    }

    fn refresh_policy(&mut self) {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.seen_version && !self.ports_changed {
            return;
        }
        let policy = match self.shared.policy.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let names: Vec<Option<&str>> = self
            .ports
            .iter()
            .map(|p| p.as_ref().map(|p| p.name.as_str()))
            .collect();
        self.compiled = Compiled::build(&policy, &names);
        self.seen_version = v;
        self.ports_changed = false;
    }

    /// A frame arrived from port `src`.
    pub(crate) fn ingress(&mut self, src: u32, frame: &[u8], now: Instant) {
        self.refresh_policy();
        let si = src as usize;
        {
            let p = self.ports[si].as_ref().expect("port exists");
            bump(&p.stats.frames_in, 1);
            bump(&p.stats.bytes_in, frame.len() as u64);
        }
        if let Some(pcap) = &mut self.pcap {
            pcap.record(frame);
        }
        let stats = &self.ports[si].as_ref().expect("port exists").stats;
        if frame.len() < 14 {
            stats.count_drop(DropReason::Malformed);
            return;
        }
        if self.compiled.blocked[si] {
            stats.count_drop(DropReason::Blocked);
            return;
        }
        let smac = mac_key(&frame[6..12]);
        // Learning; a port that keeps sending from the MAC it last taught skips the table.
        if frame[6] & 1 == 0 && self.ports[si].as_ref().is_some_and(|p| p.last_src != smac) {
            match self.macs.learn(smac, src) {
                Learned::Known => {}
                Learned::Added => self.macs_dirty = true,
                Learned::Moved(prev) => {
                    self.macs_dirty = true;
                    self.port(prev).last_src = NO_MAC;
                }
                Learned::Reset => {
                    self.macs_dirty = true;
                    for p in self.ports.iter_mut().flatten() {
                        p.last_src = NO_MAC;
                    }
                }
            }
            self.port(src).last_src = smac;
        }
        let mut delay = Duration::ZERO;
        let mut copies = 1;
        if self.compiled.any_imp {
            if let Some(imp) = self.compiled.port_imp[si] {
                let p = self.ports[si].as_mut().expect("port exists");
                match stage(
                    &mut self.rng,
                    &imp,
                    frame.len(),
                    &mut p.in_clock,
                    now,
                    &mut delay,
                ) {
                    Err(r) => {
                        p.stats.count_drop(r);
                        return;
                    }
                    Ok(true) => copies = 2,
                    Ok(false) => {}
                }
            }
        }
        let dst = if frame[0] & 1 == 0 {
            self.macs.get(mac_key(&frame[0..6]))
        } else {
            None
        };
        for _ in 0..copies {
            match dst {
                Some(d) if d == src => {}
                Some(d) => self.deliver(src, d, frame, now, delay),
                None => {
                    for d in 0..self.ports.len() as u32 {
                        if d != src && self.is_connected(d) {
                            self.deliver(src, d, frame, now, delay);
                        }
                    }
                }
            }
        }
    }

    fn deliver(&mut self, src: u32, dst: u32, frame: &[u8], now: Instant, mut delay: Duration) {
        let di = dst as usize;
        if self.compiled.blocked[di] {
            self.port(dst).stats.count_drop(DropReason::Blocked);
            return;
        }
        if self.compiled.group[src as usize] != self.compiled.group[di] {
            self.port(dst).stats.count_drop(DropReason::Partition);
            return;
        }
        let mut copies = 1;
        if self.compiled.any_imp {
            if let Some(imp) = self.compiled.port_imp[di] {
                let p = self.ports[di].as_mut().expect("port exists");
                match stage(
                    &mut self.rng,
                    &imp,
                    frame.len(),
                    &mut p.out_clock,
                    now,
                    &mut delay,
                ) {
                    Err(r) => {
                        p.stats.count_drop(r);
                        return;
                    }
                    Ok(dup) => copies += usize::from(dup),
                }
            }
            let key = pair_key(src, dst);
            if let Some(imp) = self.compiled.pair_imp.get(&key).copied() {
                // One clock per direction of the pair.
                let clock = self.pair_clock.entry((src, dst)).or_insert(now);
                match stage(&mut self.rng, &imp, frame.len(), clock, now, &mut delay) {
                    Err(r) => {
                        self.port(dst).stats.count_drop(r);
                        return;
                    }
                    Ok(dup) => copies += usize::from(dup),
                }
            }
        }
        for _ in 0..copies {
            if delay.is_zero() {
                self.enqueue(dst, frame);
            } else {
                self.schedule(dst, frame, now + delay);
            }
        }
    }

    fn schedule(&mut self, dst: u32, frame: &[u8], due: Instant) {
        let limit = self.limits.queue_frames;
        let p = self.port(dst);
        if p.delayed >= limit {
            p.stats.count_drop(DropReason::QueueFull);
            return;
        }
        p.delayed += 1;
        let mut buf = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
        buf.clear();
        buf.extend_from_slice(frame);
        self.seq += 1;
        self.delayed.push(Reverse(Delayed {
            due,
            seq: self.seq,
            dst,
            buf,
        }));
    }

    /// When the next delayed frame is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse(d)| d.due)
    }

    /// Move every delayed frame due by `now` to its port's queue.
    pub(crate) fn release_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(d)) = self.delayed.pop() else {
                break;
            };
            let p = self.port(d.dst);
            p.delayed = p.delayed.saturating_sub(1);
            self.enqueue(d.dst, &d.buf);
            if self.pool.len() < 1024 {
                self.pool.push(d.buf);
            }
        }
    }

    fn enqueue(&mut self, dst: u32, frame: &[u8]) {
        let limits = self.limits;
        let p = self.ports[dst as usize].as_mut().expect("port exists");
        let ok = match &mut p.conn {
            None => {
                p.stats.count_drop(DropReason::Disconnected);
                return;
            }
            Some(Conn::Stream { out, pos, .. }) => {
                if out.len() - *pos + 4 + frame.len() > limits.queue_bytes {
                    false
                } else {
                    crate::framing::encode_into(out, frame);
                    true
                }
            }
            Some(Conn::Dgram { arena, q, .. } | Conn::Tap { arena, q, .. }) => {
                let start = q.front().map_or(arena.len(), |(o, _)| *o as usize);
                if q.len() >= limits.queue_frames
                    || arena.len() - start + frame.len() > limits.queue_bytes
                {
                    false
                } else {
                    q.push_back((arena.len() as u32, frame.len() as u32));
                    arena.extend_from_slice(frame);
                    true
                }
            }
        };
        if !ok {
            p.stats.count_drop(DropReason::QueueFull);
            return;
        }
        bump(&p.stats.frames_out, 1);
        bump(&p.stats.bytes_out, frame.len() as u64);
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(dst);
        }
    }

    /// Write out every port that got frames since the last flush.
    pub(crate) fn flush_dirty(&mut self) {
        while let Some(i) = self.dirty.pop() {
            self.port(i).dirty = false;
            if !self.port(i).write_blocked {
                self.flush_port(i);
            }
        }
    }

    /// Write as much of port `i`'s queue as the socket takes now.
    pub(crate) fn flush_port(&mut self, i: u32) {
        let p = self.ports[i as usize].as_mut().expect("port exists");
        let gen = p.gen;
        let mut failure: Option<String> = None;
        let mut blocked = false;
        match &mut p.conn {
            None => {}
            Some(Conn::Stream { sock, out, pos, .. }) => {
                while *pos < out.len() {
                    let buf = &out[*pos..];
                    // SAFETY: `buf` is valid for reads of its length for the call.
                    let n = unsafe {
                        libc::send(
                            sock.as_raw_fd(),
                            buf.as_ptr().cast(),
                            buf.len(),
                            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                        )
                    };
                    let r = if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    };
                    match r {
                        Ok(n) => *pos += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            failure = Some(format!("write failed: {e}"));
                            break;
                        }
                    }
                }
                if *pos == out.len() {
                    out.clear();
                    *pos = 0;
                    if out.capacity() > 1 << 20 {
                        out.shrink_to(64 * 1024);
                    }
                } else if *pos > out.len() / 2 {
                    out.drain(..*pos);
                    *pos = 0;
                }
            }
            Some(Conn::Dgram { sock, arena, q, .. }) => {
                let fd = sock.as_raw_fd();
                while !q.is_empty() {
                    let frames = q
                        .iter()
                        .map(|(o, l)| &arena[*o as usize..(*o + *l) as usize]);
                    let r = self.send.send(fd, frames);
                    match r {
                        Ok(n) => {
                            q.drain(..n.min(q.len()));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // The client's socket is gone (its ctl stream decides the port's
                            // life): drop what is queued.
                            tracing::debug!(port = %p.name, error = %e, "netsim: VDE send failed");
                            for _ in 0..q.len() {
                                p.stats.count_drop(DropReason::Disconnected);
                            }
                            q.clear();
                        }
                    }
                }
                match q.front() {
                    None => arena.clear(),
                    Some((o, _)) if *o as usize > arena.len() / 2 => {
                        let o = *o;
                        arena.drain(..o as usize);
                        for e in q.iter_mut() {
                            e.0 -= o;
                        }
                    }
                    Some(_) => {}
                }
            }
            Some(Conn::Tap { fd, arena, q, .. }) => {
                while let Some(&(o, l)) = q.front() {
                    let frame = &arena[o as usize..(o + l) as usize];
                    // SAFETY: `frame` is valid for reads of its length for the call.
                    let n =
                        unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                    if n >= 0 {
                        q.pop_front();
                        continue;
                    }
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        std::io::ErrorKind::Interrupted => {}
                        // The interface is down (not up yet in its container, or set down):
                        // the frame is lost, as on an unplugged cable.
                        _ if e.raw_os_error() == Some(libc::EIO) => {
                            q.pop_front();
                            p.stats.count_drop(DropReason::Disconnected);
                        }
                        _ => {
                            failure = Some(format!("TAP write failed: {e}"));
                            break;
                        }
                    }
                }
                if q.is_empty() {
                    arena.clear();
                } else if let Some(&(o, _)) = q.front() {
                    if o as usize > arena.len() / 2 {
                        arena.drain(..o as usize);
                        for e in q.iter_mut() {
                            e.0 -= o;
                        }
                    }
                }
            }
        }
        if blocked != p.write_blocked {
            p.write_blocked = blocked;
            if let Some(conn) = &p.conn {
                // Wait for room (EPOLLOUT) only while something is stuck.
                crate::engine::set_interest(
                    self.epfd,
                    conn.data_fd(),
                    crate::engine::token_data(i, gen, conn),
                    blocked,
                );
            }
        }
        if let Some(reason) = failure {
            self.close(i, gen, &reason, true);
        }
    }

    /// Publish the learning table for summaries (cheap when unchanged).
    pub(crate) fn publish_macs(&mut self) {
        if !self.macs_dirty {
            return;
        }
        self.macs_dirty = false;
        let list: Vec<(u64, String)> = self
            .macs
            .entries()
            .into_iter()
            .filter_map(|(m, p)| self.ports[p as usize].as_ref().map(|p| (m, p.name.clone())))
            .collect();
        if let Ok(mut g) = self.shared.macs.lock() {
            *g = list;
        }
    }

    pub(crate) fn flush_pcap(&mut self) {
        if let Some(p) = &mut self.pcap {
            p.flush();
        }
    }

    /// Number of learned MACs.
    #[allow(dead_code)]
    pub(crate) fn mac_count(&self) -> usize {
        self.macs.len()
    }

    /// Close everything (switch shutdown).
    pub(crate) fn shutdown(&mut self) {
        for i in 0..self.ports.len() as u32 {
            let gen = self.port(i).gen;
            self.flush_port(i);
            self.close(i, gen, "switch shut down", false);
        }
        self.delayed.clear();
        self.flush_pcap();
    }
}
