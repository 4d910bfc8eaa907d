//! A pcap (libpcap classic, µs timestamps, LINKTYPE_ETHERNET) writer with batched writes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Largest captured length per record.
pub(crate) const SNAPLEN: u32 = 65_535;

/// Writes records into a large buffer; the switch flushes it periodically and at shutdown.
pub(crate) struct PcapWriter {
    path: PathBuf,
    out: BufWriter<File>,
    dirty: bool,
    failed: bool,
}

impl PcapWriter {
    /// Create (truncate) `path` and write the global header.
    pub(crate) fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        out.write_all(&global_header())?;
        out.flush()?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            dirty: false,
            failed: false,
        })
    }

    /// Append one frame, timestamped now.
    pub(crate) fn record(&mut self, frame: &[u8]) {
        if self.failed {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let incl = (frame.len() as u32).min(SNAPLEN);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&(ts.as_secs() as u32).to_ne_bytes());
        hdr[4..8].copy_from_slice(&ts.subsec_micros().to_ne_bytes());
        hdr[8..12].copy_from_slice(&incl.to_ne_bytes());
        hdr[12..16].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let res = self
            .out
            .write_all(&hdr)
            .and_then(|()| self.out.write_all(&frame[..incl as usize]));
        self.dirty = true;
        if let Err(e) = res {
            self.fail(e);
        }
    }

    /// Write buffered records to the file.
    pub(crate) fn flush(&mut self) {
        if self.dirty && !self.failed {
            self.dirty = false;
            if let Err(e) = self.out.flush() {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::warn!(path = %self.path.display(), error = %e, "netsim: pcap capture stopped");
        self.failed = true;
    }
}

/// The 24-byte global header in native byte order (the magic tells readers which).
pub(crate) fn global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone, sigfigs = 0
    h[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    h[20..24].copy_from_slice(&1u32.to_ne_bytes());
    h
}
