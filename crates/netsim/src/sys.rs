//! Batched datagram I/O (`recvmmsg`/`sendmmsg`): one system call for many frames.

use std::io;
use std::os::fd::RawFd;

/// Slot size for received datagrams: a VDE frame is at most 1518 bytes; anything that fills a
/// slot was truncated and counts as malformed.
pub(crate) const SLOT: usize = 2048;

/// Fixed receive buffers for `recvmmsg`; allocated once and reused.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    got: usize,
}

impl RecvBatch {
    pub(crate) fn new(slots: usize) -> Self {
        let mut bufs = vec![0u8; slots * SLOT];
        let base = bufs.as_mut_ptr();
        let mut iov: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: `i * SLOT` is inside `bufs`, whose heap block never moves (never resized).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            })
            .collect();
        let iov_base = iov.as_mut_ptr();
        let hdrs = (0..slots)
            .map(|i| {
                // SAFETY: an all-zero msghdr is a valid "no name, no control" header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `i` < slots = iov.len(); the Vec is never resized.
                h.msg_hdr.msg_iov = unsafe { iov_base.add(i) };
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self {
            bufs,
            iov,
            hdrs,
            got: 0,
        }
    }

    /// Receive up to the batch size without blocking; `WouldBlock` when nothing is there.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        debug_assert_eq!(self.iov.len(), self.hdrs.len());
        // SAFETY: hdrs/iov point into buffers owned by self that live across the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.got = 0;
            return Err(io::Error::last_os_error());
        }
        self.got = n as usize;
        Ok(self.got)
    }

    /// Datagram `i` of the last receive and whether it was truncated.
    pub(crate) fn get(&self, i: usize) -> (&[u8], bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT);
        let trunc = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || h.msg_len as usize >= SLOT;
        (&self.bufs[i * SLOT..i * SLOT + len], trunc)
    }
}

/// Scratch vectors for `sendmmsg`, rebuilt on each call (capacity is kept).
#[derive(Default)]
pub(crate) struct SendScratch {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

/// Most frames per `sendmmsg`.
pub(crate) const SEND_BATCH: usize = 64;

impl SendScratch {
    /// Send `frames` (slices of one arena) on a connected datagram socket without blocking;
    /// returns how many were sent (the first error only when none were).
    pub(crate) fn send<'a>(
        &mut self,
        fd: RawFd,
        frames: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        self.iov.clear();
        self.hdrs.clear();
        for f in frames.take(SEND_BATCH) {
            self.iov.push(libc::iovec {
                iov_base: f.as_ptr() as *mut _,
                iov_len: f.len(),
            });
        }
        if self.iov.is_empty() {
            return Ok(0);
        }
        let base = self.iov.as_mut_ptr();
        for i in 0..self.iov.len() {
            // SAFETY: all-zero is a valid msghdr; the iovec pointer stays valid for the call.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            // SAFETY: i < iov.len().
            h.msg_hdr.msg_iov = unsafe { base.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: hdrs/iov and the frames they point to outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

// SAFETY: the raw pointers in `RecvBatch` point only into heap blocks it owns (never resized),
// so moving the whole struct to another thread keeps them valid and unshared.
unsafe impl Send for RecvBatch {}
// SAFETY: `SendScratch`'s pointers are rebuilt on every call and never dereferenced in between.
unsafe impl Send for SendScratch {}

/// Ask for `bytes` of socket send and receive buffer (best effort; the kernel caps it).
pub(crate) fn set_buffers(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: valid socket fd; the option value is a c_int of the given size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
