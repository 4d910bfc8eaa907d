//! `cargo xtask bench switch`: our switch against Debian's `vde_switch` (default learning mode),
//! both fed the same traffic through the same transport (the VDE protocol, with our synthetic
//! [`VdeClient`]s), plus our stream transport as its own cases.
//!
//! Prints `bench switch: <case> ours=<v> baseline=<v> ratio=<r> baseline_kind=competitor`
//! (ratio > 1 = ours better: ours/baseline for throughput, baseline/ours for latency and memory;
//! the baseline, vde_switch, is another implementation).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ethernet_frame, VdeClient, BROADCAST};
use crate::{NetsimError, Switch, SwitchConfig, SwitchHandle};

/// One printed comparison.
#[derive(Debug, Clone)]
pub struct BenchLine {
    /// Case name, e.g. `vde_2port_64B_fps` or `vde_2port_64B_p99_us`.
    pub case: String,
    /// Our value.
    pub ours: f64,
    /// vde_switch's value.
    pub baseline: f64,
    /// > 1 = ours better.
    pub ratio: f64,
}

impl std::fmt::Display for BenchLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bench switch: {} ours={:.1} baseline={:.1} ratio={:.2} baseline_kind=competitor",
            self.case, self.ours, self.baseline, self.ratio
        )
    }
}

/// Knobs (defaults keep the whole run well under a minute).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Measured window of each throughput case.
    pub window: Duration,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Latency samples per case.
    pub samples: usize,
    /// Ports connected for the memory measurement.
    pub memory_ports: usize,
    /// Run only the case groups whose name contains this (`vde_2port_64B`, `latency`, `memory`).
    pub filter: Option<String>,
}

impl BenchOptions {
    fn wants(&self, group: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| group.contains(f))
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(1500),
            warmup: Duration::from_millis(300),
            samples: 3000,
            memory_ports: 500,
            filter: std::env::var("NETSIM_BENCH_FILTER")
                .ok()
                .filter(|f| !f.is_empty()),
        }
    }
}

/// Run every case with default options, printing each line as it is measured.
pub fn run() -> Result<Vec<BenchLine>, NetsimError> {
    run_with(&BenchOptions::default())
}

fn berr(what: impl Into<String>, path: &Path, e: std::io::Error) -> NetsimError {
    NetsimError::Client {
        what: what.into(),
        path: path.to_path_buf(),
        source: e,
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, NetsimError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "nsb-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).map_err(|e| berr("creating bench dir", &p, e))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's `vde_switch`, killed (and reaped) on drop; dies with us via PDEATHSIG too.
struct VdeSwitch {
    child: Child,
    dir: PathBuf,
    _tmp: TempDir,
}

impl VdeSwitch {
    fn start(ports: usize) -> Result<Self, NetsimError> {
        let tmp = TempDir::new()?;
        let dir = tmp.0.join("vs");
        let mut cmd = Command::new("vde_switch");
        cmd.arg("--sock")
            .arg(&dir)
            .arg("--numports")
            .arg(ports.to_string());
        // stdin stays open (an EOF on the management console would stop it).
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            berr(
                "starting vde_switch (install the Debian package vde2)",
                Path::new("vde_switch"),
                e,
            )
        })?;
        let mut me = Self {
            child,
            dir,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !me.dir.join("ctl").exists() {
            if Instant::now() > deadline {
                return Err(berr(
                    "waiting for vde_switch's ctl socket",
                    &me.dir,
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ));
            }
            if let Ok(Some(st)) = me.child.try_wait() {
                return Err(berr(
                    format!("vde_switch exited early ({st})"),
                    &me.dir,
                    std::io::Error::other("exited"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(me)
    }

    fn rss_kib(&self) -> f64 {
        rss_kib(&format!("/proc/{}/status", self.child.id()))
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(status: &str) -> f64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0.0)
}

/// CPU time (ns) a thread or process has run, from `schedstat`.
fn schedstat_ns(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Where to read a switch's CPU time.
#[derive(Clone)]
enum Cpu {
    /// Our switch thread, found by name in this process.
    Thread(String),
    /// vde_switch's process.
    Process(u32),
}

impl Cpu {
    fn ns(&self) -> u64 {
        match self {
            Cpu::Process(pid) => schedstat_ns(Path::new(&format!("/proc/{pid}/schedstat"))),
            Cpu::Thread(name) => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .find(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .map_or(0, |t| schedstat_ns(&t.path().join("schedstat"))),
        }
    }
}

/// A benchmark endpoint: non-blocking batched send/receive.
trait Endpoint: Send {
    fn fd(&self) -> RawFd;
    /// Send the prepared batch (or what is left of it); frames sent.
    fn send(&mut self) -> usize;
    /// Receive what is there; calls `f(len, bytes)` per frame; frames received.
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> usize;
}

struct VdeEnd {
    c: VdeClient,
    batch: Vec<Vec<u8>>,
}

impl Endpoint for VdeEnd {
    fn fd(&self) -> RawFd {
        self.c.data_fd()
    }
    fn send(&mut self) -> usize {
        let refs: Vec<&[u8]> = self.batch.iter().map(|f| f.as_slice()).collect();
        self.c.send_batch(&refs).unwrap_or(0)
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        self.c.recv_batch(|b| f(b)).unwrap_or(0)
    }
}

struct StreamEnd {
    s: UnixStream,
    /// Pre-encoded batch and how much of it was written.
    out: Vec<u8>,
    frame_len: usize,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
}

impl StreamEnd {
    fn connect(path: &Path, batch: &[Vec<u8>]) -> Result<Self, NetsimError> {
        let s = UnixStream::connect(path).map_err(|e| berr("connecting", path, e))?;
        s.set_nonblocking(true)
            .map_err(|e| berr("nonblocking", path, e))?;
        let mut out = Vec::new();
        for f in batch {
            crate::framing::encode_into(&mut out, f);
        }
        Ok(Self {
            s,
            out,
            frame_len: batch.first().map_or(0, |f| f.len() + 4),
            wpos: 0,
            rbuf: vec![0; 256 * 1024],
            rstart: 0,
            rend: 0,
        })
    }
}

impl Endpoint for StreamEnd {
    fn fd(&self) -> RawFd {
        self.s.as_raw_fd()
    }
    fn send(&mut self) -> usize {
        if self.out.is_empty() {
            return 0;
        }
        let before = self.wpos / self.frame_len;
        match (&self.s).write(&self.out[self.wpos..]) {
            Ok(n) => self.wpos += n,
            Err(_) => return 0,
        }
        let sent = self.wpos / self.frame_len - before;
        if self.wpos == self.out.len() {
            self.wpos = 0;
        }
        sent
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            match (&self.s).read(&mut self.rbuf[self.rend..]) {
                Ok(0) | Err(_) => return n,
                Ok(k) => self.rend += k,
            }
            while self.rend - self.rstart >= 4 {
                let b = &self.rbuf[self.rstart..self.rend];
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if b.len() < 4 + len {
                    break;
                }
                f(&b[4..4 + len]);
                self.rstart += 4 + len;
                n += 1;
            }
            if n >= 64 {
                return n;
            }
        }
    }
}

fn poll_fds(fds: &[RawFd], events: i16, timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of pollfd for the call.
    unsafe {
        libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms);
    }
}

fn mac_of(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x01, i as u8 + 1]
}

/// Transport under test.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Vde,
    Stream,
}

/// Where to connect.
enum Target<'a> {
    Ours(&'a SwitchHandle),
    Theirs(&'a VdeSwitch),
}

/// Connect `n` endpoints; endpoint i < n/2 sends `frame_size`-byte frames to i + n/2.
/// Every endpoint first announces its MAC so the switch has learned them all.
fn connect(
    target: &Target<'_>,
    transport: Transport,
    n: usize,
    frame_size: usize,
) -> Result<Vec<Box<dyn Endpoint>>, NetsimError> {
    let half = n / 2;
    let mut eps: Vec<Box<dyn Endpoint>> = Vec::new();
    for i in 0..n {
        let batch: Vec<Vec<u8>> = if i < half {
            let mut f = ethernet_frame(mac_of(i + half), mac_of(i), &[]);
            f.resize(frame_size, 0xa5);
            vec![f; 32]
        } else {
            Vec::new()
        };
        let ep: Box<dyn Endpoint> = match (target, transport) {
            (Target::Ours(sw), Transport::Stream) => {
                let name = format!("p{i}");
                let path = sw.add_stream_port(&name)?;
                let e = StreamEnd::connect(&path, &batch)?;
                sw.wait_connected(&name, Duration::from_secs(5))?;
                Box::new(e)
            }
            (Target::Ours(sw), Transport::Vde) => Box::new(VdeEnd {
                c: VdeClient::connect(sw.vde_dir(), 0, "bench")?,
                batch,
            }),
            (Target::Theirs(vs), _) => Box::new(VdeEnd {
                c: VdeClient::connect(&vs.dir, 0, "bench")?,
                batch,
            }),
        };
        eps.push(ep);
    }
    // Announce every MAC, then drain the floods.
    for (i, ep) in eps.iter_mut().enumerate() {
        let hello = ethernet_frame(BROADCAST, mac_of(i), b"hello");
        announce(ep.as_mut(), &hello, transport);
    }
    std::thread::sleep(Duration::from_millis(100));
    for ep in eps.iter_mut() {
        while ep.recv(&mut |_| {}) > 0 {}
    }
    Ok(eps)
}

fn announce(ep: &mut dyn Endpoint, frame: &[u8], transport: Transport) {
    // Write one frame through the endpoint's socket directly.
    let fd = ep.fd();
    let mut buf = Vec::new();
    if transport == Transport::Stream {
        crate::framing::encode_into(&mut buf, frame);
    } else {
        buf.extend_from_slice(frame);
    }
    // SAFETY: fd is a connected socket; buf is valid for its length.
    unsafe {
        libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL);
    }
}

/// Throughput of n/2 senders -> n/2 receivers over one window: (frames, bytes, seconds).
fn throughput_window(
    eps: &mut [Box<dyn Endpoint>],
    cpu: &Cpu,
    warmup: Duration,
    window: Duration,
) -> (u64, u64, f64, u64) {
    let half = eps.len() / 2;
    let (senders, receivers) = eps.split_at_mut(half);
    let stop = AtomicBool::new(false);
    let frames = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let fds: Vec<RawFd> = receivers.iter().map(|r| r.fd()).collect();
            let (mut nf, mut nb) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                poll_fds(&fds, libc::POLLIN, 5);
                for r in receivers.iter_mut() {
                    while r.recv(&mut |f| {
                        nf += 1;
                        nb += f.len() as u64;
                    }) > 0
                    {}
                }
                frames.store(nf, Ordering::Relaxed);
                bytes.store(nb, Ordering::Relaxed);
            }
            // Leave nothing queued for the next window.
            for r in receivers.iter_mut() {
                while r.recv(&mut |_| {}) > 0 {}
            }
        });
        scope.spawn(|| {
            let fds: Vec<RawFd> = senders.iter().map(|s| s.fd()).collect();
            while !stop.load(Ordering::Relaxed) {
                let mut progress = 0;
                for s in senders.iter_mut() {
                    progress += s.send();
                }
                if progress == 0 {
                    poll_fds(&fds, libc::POLLOUT, 5);
                }
            }
        });
        std::thread::sleep(warmup);
        let (f0, b0, t0, c0) = (
            frames.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            Instant::now(),
            cpu.ns(),
        );
        std::thread::sleep(window);
        let (f1, b1, t1, c1) = (
            frames.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            Instant::now(),
            cpu.ns(),
        );
        stop.store(true, Ordering::Relaxed);
        (
            f1 - f0,
            b1 - b0,
            (t1 - t0).as_secs_f64(),
            c1.saturating_sub(c0),
        )
    })
}

/// Measure several endpoint sets in alternating short windows (so a change in host load hits
/// them alike); returns (frames/s, Mbit/s) per set.
/// Returns (frames/s, Mbit/s, switch CPU ns per delivered frame) per set.
fn throughput_interleaved(
    sets: &mut [(Vec<Box<dyn Endpoint>>, Cpu)],
    opts: &BenchOptions,
) -> Vec<(f64, f64, f64)> {
    const ROUNDS: u32 = 3;
    let mut acc = vec![(0u64, 0u64, 0f64, 0u64); sets.len()];
    for _ in 0..ROUNDS {
        for ((set, cpu), a) in sets.iter_mut().zip(acc.iter_mut()) {
            let (f, b, t, c) =
                throughput_window(set, cpu, opts.warmup / ROUNDS, opts.window / ROUNDS);
            a.0 += f;
            a.1 += b;
            a.2 += t;
            a.3 += c;
        }
    }
    acc.iter()
        .map(|(f, b, t, c)| {
            (
                *f as f64 / t,
                *b as f64 * 8.0 / t / 1e6,
                *c as f64 / (*f).max(1) as f64,
            )
        })
        .collect()
}

/// One latency sample (µs): send one frame on `tx`, wait for it on `rx`.
fn latency_sample(tx: &mut dyn Endpoint, rx: &mut dyn Endpoint) -> Option<f64> {
    let rfd = rx.fd();
    let t0 = Instant::now();
    while tx.send() == 0 {
        poll_fds(&[tx.fd()], libc::POLLOUT, 100);
        if t0.elapsed() > Duration::from_secs(1) {
            return None;
        }
    }
    let mut got = 0;
    let deadline = t0 + Duration::from_secs(1);
    while got == 0 && Instant::now() < deadline {
        poll_fds(&[rfd], libc::POLLIN, 100);
        got = rx.recv(&mut |_| {});
    }
    let dt = t0.elapsed();
    (got > 0).then_some(dt.as_secs_f64() * 1e6)
}

/// One-way forwarding latency of single 64-byte frames for several 2-endpoint sets, sampled
/// round-robin (one sample per set in turn, 200 µs apart); returns (p50, p99) per set.
fn latency_interleaved(sets: &mut [Vec<Box<dyn Endpoint>>], samples: usize) -> Vec<(f64, f64)> {
    let mut lat: Vec<Vec<f64>> = vec![Vec::with_capacity(samples); sets.len()];
    for i in 0..samples + 100 {
        for (set, l) in sets.iter_mut().zip(lat.iter_mut()) {
            let (a, b) = set.split_at_mut(1);
            if let Some(us) = latency_sample(a[0].as_mut(), b[0].as_mut()) {
                if i >= 100 {
                    l.push(us);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    lat.into_iter()
        .map(|mut l| {
            l.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                l.get(((l.len() as f64 - 1.0) * p) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            (pct(0.50), pct(0.99))
        })
        .collect()
}

/// Our switch; `vlan` names its thread (`netsim-vlan<N>`), which is how its CPU time is found.
fn ours_switch(tmp: &TempDir, vlan: u8) -> Result<SwitchHandle, NetsimError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = tmp
        .0
        .join(format!("s{}", N.fetch_add(1, Ordering::Relaxed)));
    let mut cfg = SwitchConfig::new(vlan, dir);
    cfg.queue_frames = 4096;
    Switch::start(cfg)
}

fn line(case: String, ours: f64, baseline: f64, higher_is_better: bool) -> BenchLine {
    let ratio = if higher_is_better {
        ours / baseline
    } else {
        baseline / ours
    };
    let l = BenchLine {
        case,
        ours,
        baseline,
        ratio,
    };
    println!("{l}");
    l
}

/// Run every case with `opts`.
pub fn run_with(opts: &BenchOptions) -> Result<Vec<BenchLine>, NetsimError> {
    let tmp = TempDir::new()?;
    let mut lines = Vec::new();
    // Memory first, while this process's heap is fresh (RSS growth is meaningful).
    if opts.wants("memory") {
        let (om, bm) = memory(opts.memory_ports, &tmp)?;
        lines.push(line("memory_per_port_kib".into(), om, bm, false));
    }
    for (n, size) in [(2usize, 64usize), (2, 1500), (8, 64), (8, 1500)] {
        if !opts.wants(&format!("{n}port_{size}B")) {
            continue;
        }
        let ours = ours_switch(&tmp, 1)?;
        let stream = ours_switch(&tmp, 2)?;
        let theirs = VdeSwitch::start(64)?;
        let mut sets = vec![
            (
                connect(&Target::Ours(&ours), Transport::Vde, n, size)?,
                Cpu::Thread("netsim-vlan1".into()),
            ),
            (
                connect(&Target::Theirs(&theirs), Transport::Vde, n, size)?,
                Cpu::Process(theirs.child.id()),
            ),
            (
                connect(&Target::Ours(&stream), Transport::Stream, n, size)?,
                Cpu::Thread("netsim-vlan2".into()),
            ),
        ];
        let r = throughput_interleaved(&mut sets, opts);
        drop(sets);
        let [(o_fps, o_mbps, o_cpu), (b_fps, b_mbps, b_cpu), (s_fps, s_mbps, s_cpu)] =
            [r[0], r[1], r[2]];
        let case = |t: &str, m: &str| format!("{t}_{n}port_{size}B_{m}");
        lines.push(line(case("vde", "fps"), o_fps, b_fps, true));
        lines.push(line(case("vde", "mbps"), o_mbps, b_mbps, true));
        lines.push(line(case("vde", "cpu_ns_per_frame"), o_cpu, b_cpu, false));
        lines.push(line(case("stream", "fps"), s_fps, b_fps, true));
        lines.push(line(case("stream", "mbps"), s_mbps, b_mbps, true));
        lines.push(line(
            case("stream", "cpu_ns_per_frame"),
            s_cpu,
            b_cpu,
            false,
        ));
    }
    // Latency: single frames, the three set-ups sampled in turn.
    if opts.wants("latency") {
        let ours = ours_switch(&tmp, 1)?;
        let stream = ours_switch(&tmp, 2)?;
        let theirs = VdeSwitch::start(64)?;
        let mut sets = vec![
            single(
                connect(&Target::Ours(&ours), Transport::Vde, 2, 64)?,
                Transport::Vde,
            ),
            single(
                connect(&Target::Theirs(&theirs), Transport::Vde, 2, 64)?,
                Transport::Vde,
            ),
            single(
                connect(&Target::Ours(&stream), Transport::Stream, 2, 64)?,
                Transport::Stream,
            ),
        ];
        let r = latency_interleaved(&mut sets, opts.samples);
        drop(sets);
        let [(o50, o99), (b50, b99), (s50, s99)] = [r[0], r[1], r[2]];
        lines.push(line("vde_latency_64B_p50_us".into(), o50, b50, false));
        lines.push(line("vde_latency_64B_p99_us".into(), o99, b99, false));
        lines.push(line("stream_latency_64B_p50_us".into(), s50, b50, false));
        lines.push(line("stream_latency_64B_p99_us".into(), s99, b99, false));
    }
    Ok(lines)
}

/// Rebuild the sender of a 2-endpoint set to send one frame per call.
fn single(eps: Vec<Box<dyn Endpoint>>, _t: Transport) -> Vec<Box<dyn Endpoint>> {
    struct One(Box<dyn Endpoint>, usize);
    impl Endpoint for One {
        fn fd(&self) -> RawFd {
            self.0.fd()
        }
        fn send(&mut self) -> usize {
            // A VDE batch sends min(batch, 64) frames; the wrapper sends exactly one datagram /
            // one framed frame through the socket directly.
            let fd = self.0.fd();
            let _ = self.1;
            let mut f = ethernet_frame(mac_of(1), mac_of(0), b"lat");
            f.resize(64, 0);
            let mut buf = Vec::with_capacity(68);
            if self.1 == 1 {
                crate::framing::encode_into(&mut buf, &f);
            } else {
                buf.extend_from_slice(&f);
            }
            // SAFETY: connected socket fd, valid buffer.
            let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            usize::from(n > 0)
        }
        fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
            self.0.recv(f)
        }
    }
    let stream = usize::from(_t == Transport::Stream);
    eps.into_iter()
        .map(|e| Box::new(One(e, stream)) as Box<dyn Endpoint>)
        .collect()
}

/// RSS growth per connected VDE port, ours (in this process) and vde_switch's.
fn memory(ports: usize, tmp: &TempDir) -> Result<(f64, f64), NetsimError> {
    // Each port sends one frame addressed to itself: learned, not flooded (a flood to
    // clients that never read would measure queued frames, not per-port state).
    let hello = |c: &mut VdeClient, i: usize| {
        let mac = [0x52, 0x54, 0, 0x13, (i >> 8) as u8, i as u8];
        let _ = c.send(&ethernet_frame(mac, mac, b"m"));
    };
    let sw = ours_switch(tmp, 3)?;
    let before = rss_kib("/proc/self/status");
    let mut clients = Vec::new();
    for i in 0..ports {
        let mut c = VdeClient::connect(sw.vde_dir(), 0, "mem")?;
        hello(&mut c, i);
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ours = (rss_kib("/proc/self/status") - before) / ports as f64;
    drop(clients);
    drop(sw);
    let vs = VdeSwitch::start(ports + 8)?;
    let before = vs.rss_kib();
    let self_before = rss_kib("/proc/self/status");
    let mut clients = Vec::new();
    for i in 0..ports {
        let mut c = VdeClient::connect(&vs.dir, 0, "mem")?;
        hello(&mut c, i);
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = (vs.rss_kib() - before) / ports as f64;
    // Our process grew by the clients alone here: take that out of our figure.
    let clients_only = (rss_kib("/proc/self/status") - self_before).max(0.0) / ports as f64;
    let ours = ours - clients_only;
    drop(clients);
    Ok((ours.max(0.1), base.max(0.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_baseline_a_competitor() {
        let line = BenchLine {
            case: "vde_2port_64B_fps".into(),
            ours: 2.0,
            baseline: 1.0,
            ratio: 2.0,
        };
        assert_eq!(
            line.to_string(),
            "bench switch: vde_2port_64B_fps ours=2.0 baseline=1.0 ratio=2.00 baseline_kind=competitor"
        );
    }
}
