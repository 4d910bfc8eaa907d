//! Synthetic clients (blocking, std sockets) for tests, benchmarks and tools that want to put
//! frames on a Machinist VLAN without a VM: [`StreamClient`] speaks `-netdev stream` framing to
//! a stream port, [`VdeClient`] does the VDE handshake like libvdeplug (it also works against
//! Debian's `vde_switch`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{check_socket_path, NetsimError};
use crate::sys::{RecvBatch, SendScratch};
use crate::vde;

fn cerr(what: &str, path: &Path, source: std::io::Error) -> NetsimError {
    NetsimError::Client {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

/// A client of a stream port (what QEMU's `-netdev stream,server=off` does).
pub struct StreamClient {
    sock: UnixStream,
    path: PathBuf,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
}

impl StreamClient {
    /// Connect to the port's socket.
    pub fn connect(path: &Path) -> Result<Self, NetsimError> {
        let sock =
            UnixStream::connect(path).map_err(|e| cerr("connecting to stream port", path, e))?;
        Ok(Self {
            sock,
            path: path.to_path_buf(),
            rbuf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(256 * 1024),
        })
    }

    /// Send one frame (length header + frame).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetsimError> {
        self.wbuf.clear();
        crate::framing::encode_into(&mut self.wbuf, frame);
        self.sock
            .write_all(&self.wbuf)
            .map_err(|e| cerr("sending a frame", &self.path, e))
    }

    /// Send several frames with one write.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<(), NetsimError> {
        self.wbuf.clear();
        for f in frames {
            crate::framing::encode_into(&mut self.wbuf, f);
        }
        self.sock
            .write_all(&self.wbuf)
            .map_err(|e| cerr("sending frames", &self.path, e))
    }

    /// Write raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), NetsimError> {
        self.sock
            .write_all(bytes)
            .map_err(|e| cerr("sending raw bytes", &self.path, e))
    }

    /// Receive one frame, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, NetsimError> {
        let mut out = None;
        self.recv_with(timeout, 1, |f| out = Some(f.to_vec()))?;
        Ok(out)
    }

    /// Receive up to `max` frames, calling `f` on each; waits at most `timeout` for the first.
    /// Returns how many frames were handled; a closed connection is an error.
    pub fn recv_with(
        &mut self,
        timeout: Duration,
        max: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, NetsimError> {
        let mut n = 0;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            while n < max {
                let avail = &self.rbuf[self.start..self.end];
                if avail.len() < 4 {
                    break;
                }
                let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
                if avail.len() < 4 + len {
                    break;
                }
                f(&avail[4..4 + len]);
                self.start += 4 + len;
                n += 1;
            }
            if n > 0 {
                return Ok(n);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.rbuf.len() {
                self.rbuf.resize(self.rbuf.len() * 2, 0);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            self.sock
                .set_read_timeout(Some((deadline - now).max(Duration::from_micros(1))))
                .map_err(|e| cerr("setting a read timeout", &self.path, e))?;
            match self.sock.read(&mut self.rbuf[self.end..]) {
                Ok(0) => {
                    return Err(cerr(
                        "receiving",
                        &self.path,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "switch closed the port",
                        ),
                    ))
                }
                Ok(k) => self.end += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(0)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(cerr("receiving", &self.path, e)),
            }
        }
    }

    /// True once the switch has closed the connection (waits at most `timeout`).
    pub fn is_closed_by_switch(&mut self, timeout: Duration) -> bool {
        let _ = self.sock.set_read_timeout(Some(timeout));
        let mut b = [0u8; 4096];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A VDE client (what libvdeplug does for QEMU `-netdev vde` and `vde_plug`).
pub struct VdeClient {
    _ctl: UnixStream,
    data: UnixDatagram,
    dir: PathBuf,
    recv: Option<RecvBatch>,
    send: SendScratch,
    buf: Vec<u8>,
}

impl VdeClient {
    /// Connect to the switch in `dir` (containing `ctl`), asking for `port` (0 = any).
    pub fn connect(dir: &Path, port: u32, description: &str) -> Result<Self, NetsimError> {
        let ctl_path = dir.join("ctl");
        let n = CLIENT_SEQ.fetch_add(1, Ordering::Relaxed);
        let own = dir.join(format!(".{:05}-{:05}", std::process::id(), n));
        check_socket_path(&own)?;
        let _ = std::fs::remove_file(&own);
        let data =
            UnixDatagram::bind(&own).map_err(|e| cerr("binding the VDE data socket", &own, e))?;
        let result = (|| {
            let mut ctl = UnixStream::connect(&ctl_path)
                .map_err(|e| cerr("connecting to VDE control", &ctl_path, e))?;
            ctl.write_all(&vde::encode_request(port, &own, description))
                .map_err(|e| cerr("sending the VDE request", &ctl_path, e))?;
            ctl.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| cerr("setting a timeout", &ctl_path, e))?;
            let mut reply = [0u8; vde::SOCKADDR_UN_LEN];
            ctl.read_exact(&mut reply)
                .map_err(|e| cerr("reading the VDE reply", &ctl_path, e))?;
            let remote = vde::decode_sockaddr_un(&reply).ok_or_else(|| {
                cerr(
                    "decoding the VDE reply",
                    &ctl_path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not a sockaddr_un"),
                )
            })?;
            data.connect(&remote)
                .map_err(|e| cerr("connecting the data socket", &remote, e))?;
            Ok(ctl)
        })();
        let _ = std::fs::remove_file(&own);
        let ctl = result?;
        crate::sys::set_buffers(data.as_raw_fd(), 1 << 20);
        Ok(Self {
            _ctl: ctl,
            data,
            dir: dir.to_path_buf(),
            recv: None,
            send: SendScratch::default(),
            buf: Vec::new(),
        })
    }

    /// Send one frame (blocks while the switch's queue is full).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetsimError> {
        self.data
            .send(frame)
            .map(|_| ())
            .map_err(|e| cerr("sending a frame", &self.dir, e))
    }

    /// Send up to 64 frames with one `sendmmsg` without blocking; returns how many went out
    /// (0 when the switch's queue is full).
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, NetsimError> {
        match self
            .send
            .send(self.data.as_raw_fd(), frames.iter().copied())
        {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(cerr("sending frames", &self.dir, e)),
        }
    }

    /// Receive one frame, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, NetsimError> {
        self.data
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))
            .map_err(|e| cerr("setting a timeout", &self.dir, e))?;
        if self.buf.is_empty() {
            self.buf = vec![0; 65_536];
        }
        match self.data.recv(&mut self.buf) {
            Ok(n) => Ok(Some(self.buf[..n].to_vec())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(cerr("receiving", &self.dir, e)),
        }
    }

    /// Receive up to 32 frames without blocking (one `recvmmsg`), calling `f` on each.
    pub fn recv_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, NetsimError> {
        let batch = self.recv.get_or_insert_with(|| RecvBatch::new(32));
        match batch.recv(self.data.as_raw_fd()) {
            Ok(n) => {
                for i in 0..n {
                    f(batch.get(i).0);
                }
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(cerr("receiving", &self.dir, e)),
        }
    }

    /// The data socket's file descriptor (for `poll`).
    pub fn data_fd(&self) -> std::os::fd::RawFd {
        self.data.as_raw_fd()
    }
}

/// Build an Ethernet frame: `dst`, `src`, ethertype 0x88b5 (local experimental), `payload`
/// padded to the 60-byte minimum.
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len().max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The Machinist MAC of node `node` on VLAN `vlan`: `52:54:00:12:<vlan>:<node>`.
pub fn node_mac(vlan: u8, node: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, vlan, node]
}
