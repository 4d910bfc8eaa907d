//! The switch thread: a single-threaded tokio runtime running the listeners, one task per
//! connected client, the delay timer and the housekeeping tick.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixDatagram, UnixListener, UnixStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::{Conn, Core, RegEntry};
use crate::framing::{next_frame, HEADER};
use crate::stats::{PortKind, PortStats};
use crate::sys::RecvBatch;
use crate::vde;

/// Requests from the handle.
pub(crate) enum Command {
    /// Start accepting a stream port's client.
    AddStream { name: String, listener: StdUnixListener, stats: Arc<PortStats> },
    /// Flush the pcap buffer, then acknowledge.
    FlushPcap(std::sync::mpsc::Sender<()>),
    /// Stop the switch.
    Shutdown,
}

type CoreRef = Rc<RefCell<Core>>;

/// Frames per `recvmmsg`.
const RECV_BATCH: usize = 32;
/// Reads per readiness event before yielding to other ports.
const READS_PER_TURN: usize = 16;
/// A VDE client must send its request within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the switch until `Shutdown` (or the handle is dropped).
pub(crate) async fn run(
    core: Core,
    mut rx: UnboundedReceiver<Command>,
    vde_ctl: StdUnixListener,
    vde_dir: PathBuf,
) {
    let core = Rc::new(RefCell::new(core));
    let batch = Rc::new(RefCell::new(RecvBatch::new(RECV_BATCH)));
    match UnixListener::from_std(vde_ctl) {
        Ok(l) => {
            tokio::task::spawn_local(vde_listener(core.clone(), batch.clone(), l, vde_dir));
        }
        Err(e) => tracing::warn!(error = %e, "netsim: VDE control socket unusable"),
    }
    tokio::task::spawn_local(timer(core.clone()));
    tokio::task::spawn_local(housekeeping(core.clone()));
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::AddStream { name, listener, stats } => {
                let idx = core.borrow_mut().add_port(name.clone(), stats);
                match UnixListener::from_std(listener) {
                    Ok(l) => {
                        tokio::task::spawn_local(stream_listener(core.clone(), idx, l));
                    }
                    Err(e) => tracing::warn!(port = %name, error = %e, "netsim: listener unusable"),
                }
            }
            Command::FlushPcap(ack) => {
                core.borrow_mut().flush_pcap();
                let _ = ack.send(());
            }
            Command::Shutdown => break,
        }
    }
    core.borrow_mut().shutdown();
}

async fn timer(core: CoreRef) {
    let wake = core.borrow().timer_wake.clone();
    loop {
        let next = core.borrow().next_due();
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
        let mut c = core.borrow_mut();
        c.release_due(Instant::now());
        c.flush_dirty();
    }
}

async fn housekeeping(core: CoreRef) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let mut c = core.borrow_mut();
        c.flush_pcap();
        c.publish_macs();
    }
}

/// Accept clients of one stream port, one at a time; the listener lives as long as the switch
/// (QEMU 7.2 cannot reconnect, but a restarted QEMU connects anew).
async fn stream_listener(core: CoreRef, idx: u32, listener: UnixListener) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "netsim: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if core.borrow().is_connected(idx) {
            let name = core.borrow().ports[idx as usize].as_ref().map(|p| p.name.clone());
            tracing::warn!(
                port = name.as_deref().unwrap_or("?"),
                "netsim: refusing a second client on a stream port (one client per port)"
            );
            drop(sock);
            continue;
        }
        let sock = Rc::new(sock);
        let conn = Conn::Stream { sock: sock.clone(), out: Vec::new(), pos: 0 };
        let gen = core.borrow_mut().connect(idx, conn);
        tokio::task::spawn_local(stream_conn(core.clone(), idx, gen, sock));
    }
}

/// What a read turn ended with.
enum ReadEnd {
    Idle,
    Closed(String, bool),
}

async fn stream_conn(core: CoreRef, idx: u32, gen: u64, sock: Rc<UnixStream>) {
    let wake = core.borrow().wake_of(idx);
    let max_frame = core.borrow().limits().max_frame;
    let mut buf = vec![0u8; 64 * 1024];
    let mut start = 0usize;
    let mut end = 0usize;
    loop {
        let want_write = {
            let c = core.borrow();
            if !c.is_current(idx, gen) {
                return;
            }
            c.write_blocked(idx)
        };
        tokio::select! {
            r = sock.readable() => {
                if let Err(e) = r {
                    core.borrow_mut().close(idx, gen, &format!("read failed: {e}"), true);
                    return;
                }
                let outcome = read_stream(&core, idx, &sock, &mut buf, &mut start, &mut end, max_frame);
                if let ReadEnd::Closed(reason, error) = outcome {
                    core.borrow_mut().close(idx, gen, &reason, error);
                    return;
                }
                tokio::task::yield_now().await;
            }
            r = sock.writable(), if want_write => {
                if r.is_ok() {
                    core.borrow_mut().flush_port(idx);
                }
            }
            _ = wake.notified() => {}
        }
    }
}

/// Read what is available (bounded turn), forward every whole frame, flush.
fn read_stream(
    core: &CoreRef,
    idx: u32,
    sock: &UnixStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
    max_frame: usize,
) -> ReadEnd {
    let mut c = core.borrow_mut();
    let mut result = ReadEnd::Idle;
    for _ in 0..READS_PER_TURN {
        // Make room: move a partial frame to the front, grow for a large frame.
        if *start > 0 && (*end == buf.len() || *start == *end) {
            buf.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        }
        if *end == buf.len() {
            let need = match next_frame(&buf[*start..*end], max_frame) {
                Ok(None) if *end - *start >= HEADER => {
                    let b = &buf[*start..];
                    HEADER + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                _ => buf.len() * 2,
            };
            buf.resize(need.max(buf.len()), 0);
        }
        let r = sock.try_read(&mut buf[*end..]);
        match r {
            Ok(0) => {
                result = if *end > *start {
                    ReadEnd::Closed(
                        format!("truncated frame at end of stream ({} bytes pending)", *end - *start),
                        true,
                    )
                } else {
                    ReadEnd::Closed("client disconnected".into(), false)
                };
                break;
            }
            Ok(n) => *end += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                result = ReadEnd::Closed(format!("read failed: {e}"), true);
                break;
            }
        }
        let now = Instant::now();
        loop {
            match next_frame(&buf[*start..*end], max_frame) {
                Ok(Some(len)) => {
                    let f = *start + HEADER;
                    c.ingress(idx, &buf[f..f + len], now);
                    *start = f + len;
                }
                Ok(None) => break,
                Err(e) => {
                    c.flush_dirty();
                    return ReadEnd::Closed(format!("bad frame: {e}"), true);
                }
            }
        }
        if *start == *end {
            *start = 0;
            *end = 0;
            if buf.len() > 256 * 1024 {
                buf.truncate(64 * 1024);
                buf.shrink_to_fit();
            }
        }
    }
    c.flush_dirty();
    result
}

/// Accept VDE clients on `<vde_dir>/ctl`.
async fn vde_listener(
    core: CoreRef,
    batch: Rc<RefCell<RecvBatch>>,
    listener: UnixListener,
    vde_dir: PathBuf,
) {
    let seq = Rc::new(std::cell::Cell::new(0u64));
    loop {
        let ctl = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "netsim: VDE accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::task::spawn_local(vde_client(
            core.clone(),
            batch.clone(),
            ctl,
            vde_dir.clone(),
            seq.clone(),
        ));
    }
}

async fn vde_client(
    core: CoreRef,
    batch: Rc<RefCell<RecvBatch>>,
    mut ctl: UnixStream,
    vde_dir: PathBuf,
    seq: Rc<std::cell::Cell<u64>>,
) {
    let vlan = core.borrow().shared.vlan;
    let mut req = [0u8; vde::MAX_REQUEST];
    let mut got = 0usize;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    // Read until the fixed part is in, then take whatever description came with it.
    while got < vde::FIXED_LEN {
        match tokio::time::timeout_at(deadline, ctl.read(&mut req[got..])).await {
            Ok(Ok(0)) => {
                tracing::warn!(vlan, got, "netsim: VDE client closed before its request");
                return;
            }
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => {
                tracing::warn!(vlan, error = %e, "netsim: VDE request read failed");
                return;
            }
            Err(_) => {
                tracing::warn!(vlan, got, "netsim: VDE client sent no request within 5 s");
                return;
            }
        }
        if got >= 8 {
            if let Err(e) = vde::parse_request(&req[..got]) {
                if !e.contains("too short") {
                    tracing::warn!(vlan, reason = %e, "netsim: rejecting VDE client");
                    return;
                }
            }
        }
    }
    let request = match vde::parse_request(&req[..got]) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(vlan, reason = %e, "netsim: rejecting VDE client");
            return;
        }
    };
    // Pick the port: the requested number, or the lowest free `vde<N>`.
    let idx = {
        let mut c = core.borrow_mut();
        let number = if request.port != 0 {
            request.port
        } else {
            (1..).find(|n| c.port_by_name(&format!("vde{n}")).is_none_or(|i| !c.is_connected(i))).unwrap_or(1)
        };
        let name = format!("vde{number}");
        match c.port_by_name(&name) {
            Some(i) if c.is_connected(i) => {
                tracing::warn!(vlan, port = %name, "netsim: VDE port requested by a client is in use");
                return;
            }
            Some(i) => i,
            None => {
                let stats = Arc::new(PortStats::default());
                if let Ok(mut reg) = c.shared.registry.lock() {
                    reg.push(RegEntry {
                        name: name.clone(),
                        kind: PortKind::Vde { description: request.description.clone() },
                        stats: stats.clone(),
                    });
                }
                c.add_port(name, stats)
            }
        }
    };
    let n = seq.get();
    seq.set(n + 1);
    let data_path = vde_dir.join(format!("{:03}.{n}", idx));
    let data = match open_data_socket(&data_path, &request.client_path) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(vlan, path = %data_path.display(), error = %e, "netsim: VDE data socket failed");
            let _ = std::fs::remove_file(&data_path);
            return;
        }
    };
    if let Err(e) = ctl.write_all(&vde::encode_sockaddr_un(&data_path)).await {
        tracing::warn!(vlan, error = %e, "netsim: VDE reply failed");
        let _ = std::fs::remove_file(&data_path);
        return;
    }
    let data = Rc::new(data);
    let conn = Conn::Dgram {
        sock: data.clone(),
        arena: Vec::new(),
        q: Default::default(),
        path: data_path,
    };
    let gen = {
        let mut c = core.borrow_mut();
        // Keep the latest description in the registry.
        if let Some(name) = c.ports[idx as usize].as_ref().map(|p| p.name.clone()) {
            if let Ok(mut reg) = c.shared.registry.lock() {
                if let Some(e) = reg.iter_mut().find(|e| e.name == name) {
                    e.kind = PortKind::Vde { description: request.description.clone() };
                }
            }
        }
        c.connect(idx, conn)
    };
    vde_conn(core, batch, idx, gen, ctl, data).await;
}

fn open_data_socket(path: &Path, client: &Path) -> std::io::Result<UnixDatagram> {
    let _ = std::fs::remove_file(path);
    let s = std::os::unix::net::UnixDatagram::bind(path)?;
    s.connect(client)?;
    s.set_nonblocking(true)?;
    // Room for bursts in both directions.
    let fd = s.as_raw_fd();
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        let v: libc::c_int = 1 << 20;
        // SAFETY: fd is a valid socket; the option value is a c_int of the given size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    UnixDatagram::from_std(s)
}

async fn vde_conn(
    core: CoreRef,
    batch: Rc<RefCell<RecvBatch>>,
    idx: u32,
    gen: u64,
    ctl: UnixStream,
    data: Rc<UnixDatagram>,
) {
    let wake: Rc<Notify> = core.borrow().wake_of(idx);
    let mut scratch = [0u8; 256];
    loop {
        let want_write = {
            let c = core.borrow();
            if !c.is_current(idx, gen) {
                return;
            }
            c.write_blocked(idx)
        };
        tokio::select! {
            r = ctl.readable() => {
                // The control stream carries nothing after the handshake; EOF closes the port.
                let closed = match r.and_then(|()| ctl.try_read(&mut scratch)) {
                    Ok(0) => Some("client closed its VDE control connection".to_string()),
                    Ok(_) => None,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(e) => Some(format!("control connection failed: {e}")),
                };
                if let Some(reason) = closed {
                    core.borrow_mut().close(idx, gen, &reason, false);
                    return;
                }
            }
            r = data.readable() => {
                if r.is_ok() {
                    read_dgrams(&core, &batch, idx, &data);
                    tokio::task::yield_now().await;
                }
            }
            r = data.writable(), if want_write => {
                if r.is_ok() {
                    core.borrow_mut().flush_port(idx);
                }
            }
            _ = wake.notified() => {}
        }
    }
}

fn read_dgrams(core: &CoreRef, batch: &Rc<RefCell<RecvBatch>>, idx: u32, data: &UnixDatagram) {
    let mut c = core.borrow_mut();
    let mut b = batch.borrow_mut();
    let fd = data.as_raw_fd();
    for _ in 0..READS_PER_TURN {
        match data.try_io(Interest::READABLE, || b.recv(fd)) {
            Ok(n) => {
                let now = Instant::now();
                for i in 0..n {
                    let (frame, truncated) = b.get(i);
                    if truncated {
                        c.ports[idx as usize]
                            .as_ref()
                            .map(|p| p.stats.count_drop(crate::stats::DropReason::Malformed));
                        continue;
                    }
                    c.ingress(idx, frame, now);
                }
                if n < RECV_BATCH {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    c.flush_dirty();
}
