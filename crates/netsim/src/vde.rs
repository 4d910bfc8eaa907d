//! The VDE control handshake (libvdeplug `struct request_v3` and the `sockaddr_un` reply).
//!
//! Layout (host byte order, packed): `u32 magic 0xfeedface`, `u32 version 3`,
//! `u32 type = REQ_NEW_CONTROL(0) | port << 8`, `sockaddr_un` (u16 family + 108-byte path) of the
//! client's data socket, then the description, not NUL-terminated.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `request_v3.magic`.
pub(crate) const MAGIC: u32 = 0xfeed_face;
/// The only protocol version we speak.
pub(crate) const VERSION: u32 = 3;
/// `sizeof(struct sockaddr_un)` on Linux.
pub(crate) const SOCKADDR_UN_LEN: usize = 110;
/// Bytes before the description.
pub(crate) const FIXED_LEN: usize = 12 + SOCKADDR_UN_LEN;
/// vde_switch reads at most this many bytes of request.
pub(crate) const MAX_REQUEST: usize = 256;

/// A parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VdeRequest {
    /// Requested port number (0 = any).
    pub port: u32,
    /// The client's datagram socket.
    pub client_path: PathBuf,
    /// Free-form description, e.g. `QEMU user=root pid=7637`.
    pub description: String,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse a request; the error says what was wrong (it is logged as the port's close reason).
pub(crate) fn parse_request(b: &[u8]) -> Result<VdeRequest, String> {
    if b.len() < 8 {
        return Err(format!("request too short ({} bytes)", b.len()));
    }
    let magic = u32_at(b, 0);
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#x}, expected {MAGIC:#x}"));
    }
    let version = u32_at(b, 4);
    if version != VERSION {
        return Err(format!(
            "unsupported VDE request version {version} (only 3 is supported)"
        ));
    }
    if b.len() < FIXED_LEN {
        return Err(format!(
            "request too short ({} bytes, need {FIXED_LEN})",
            b.len()
        ));
    }
    let typ = u32_at(b, 8);
    if typ & 0xff != 0 {
        return Err(format!(
            "unsupported request type {} (only REQ_NEW_CONTROL)",
            typ & 0xff
        ));
    }
    let family = u16::from_ne_bytes([b[12], b[13]]);
    if family != libc::AF_UNIX as u16 {
        return Err(format!("client address family {family} is not AF_UNIX"));
    }
    let raw = &b[14..14 + 108];
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    if end == 0 {
        return Err("empty client socket path".into());
    }
    let client_path = PathBuf::from(std::ffi::OsStr::from_bytes(&raw[..end]));
    let descr = &b[FIXED_LEN..];
    let dend = descr.iter().position(|c| *c == 0).unwrap_or(descr.len());
    Ok(VdeRequest {
        port: typ >> 8,
        client_path,
        description: String::from_utf8_lossy(&descr[..dend]).into_owned(),
    })
}

/// Encode a `sockaddr_un` naming `path` (the reply to the client).
pub(crate) fn encode_sockaddr_un(path: &Path) -> [u8; SOCKADDR_UN_LEN] {
    let mut out = [0u8; SOCKADDR_UN_LEN];
    out[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    let p = path.as_os_str().as_bytes();
    let n = p.len().min(107);
    out[2..2 + n].copy_from_slice(&p[..n]);
    out
}

/// Encode a request (used by the synthetic client in [`crate::client`]).
pub(crate) fn encode_request(port: u32, client_path: &Path, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + description.len());
    out.extend_from_slice(&MAGIC.to_ne_bytes());
    out.extend_from_slice(&VERSION.to_ne_bytes());
    out.extend_from_slice(&(port << 8).to_ne_bytes());
    out.extend_from_slice(&encode_sockaddr_un(client_path));
    out.extend_from_slice(description.as_bytes());
    out
}

/// Decode a `sockaddr_un` reply.
pub(crate) fn decode_sockaddr_un(b: &[u8]) -> Option<PathBuf> {
    if b.len() < 3 || u16::from_ne_bytes([b[0], b[1]]) != libc::AF_UNIX as u16 {
        return None;
    }
    let raw = &b[2..b.len().min(SOCKADDR_UN_LEN)];
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    (end > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&raw[..end])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let req = encode_request(5, Path::new("/tmp/sw/.01234-00000"), "QEMU user=root pid=1");
        assert_eq!(req.len(), FIXED_LEN + 20);
        let r = parse_request(&req).unwrap();
        assert_eq!(r.port, 5);
        assert_eq!(r.client_path, Path::new("/tmp/sw/.01234-00000"));
        assert_eq!(r.description, "QEMU user=root pid=1");
        assert!(parse_request(&req[..50]).unwrap_err().contains("too short"));
        let mut bad = req.clone();
        bad[0] = 0;
        assert!(parse_request(&bad).unwrap_err().contains("magic"));
        let a = encode_sockaddr_un(Path::new("/x/001.3"));
        assert_eq!(decode_sockaddr_un(&a).unwrap(), Path::new("/x/001.3"));
        assert!(decode_sockaddr_un(&[0; 10]).is_none());
    }
}
