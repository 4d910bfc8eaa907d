//! TAP devices: a host network interface whose frames a file descriptor reads and writes, one
//! frame per `read`/`write`. A TAP port of the switch ([`crate::SwitchHandle::add_tap_port`])
//! forwards them; the interface itself can be moved into another network namespace (a
//! container's), so that the container's NIC is a port of the switch like a VM's.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETCARRIER`: `_IOW('T', 226, int)`.
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_NAME: usize = 15;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the TAP interface `name` (no packet-info header; not persistent: it disappears with
/// the last descriptor, or with the network namespace it was moved to) and returns its
/// descriptor, non-blocking and close-on-exec. Needs `CAP_NET_ADMIN` and `/dev/net/tun`.
pub fn create(name: &str) -> std::io::Result<OwnedFd> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad interface name `{name}` (1 to {MAX_NAME} letters, digits, - or _)"),
        ));
    }
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open(2) with a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("opening /dev/net/tun: {e} (needs root and the tun module)"),
        ));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads an ifreq we own for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("creating TAP interface {name}: {e}"),
        ));
    }
    Ok(fd)
}

/// Sets the carrier of the TAP behind `fd` (what the interface's user sees as link up/down).
pub fn set_carrier(fd: RawFd, up: bool) -> std::io::Result<()> {
    let v: libc::c_int = i32::from(up);
    // SAFETY: TUNSETCARRIER reads an int we own for the duration of the call.
    if unsafe { libc::ioctl(fd, TUNSETCARRIER, &v) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
