//! `-netdev stream` framing: a 4-byte big-endian length, then that many bytes of Ethernet frame.

/// Why a stream port's byte stream is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A length of 0: QEMU never sends one, so the peer is not speaking the protocol.
    ZeroLength,
    /// A length above the configured maximum frame size.
    Oversized { len: usize, max: usize },
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::ZeroLength => write!(f, "zero-length frame header"),
            FramingError::Oversized { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max} bytes")
            }
        }
    }
}

/// Length of the frame header.
pub(crate) const HEADER: usize = 4;

/// Look at the start of `buf`: `Ok(Some(len))` when a whole frame of `len` bytes follows its
/// header, `Ok(None)` when more bytes are needed, an error when the header is bad.
pub(crate) fn next_frame(buf: &[u8], max: usize) -> Result<Option<usize>, FramingError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(FramingError::ZeroLength);
    }
    if len > max {
        return Err(FramingError::Oversized { len, max });
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Append one framed frame to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_and_bad_headers() {
        let mut b = Vec::new();
        encode_into(&mut b, &[1, 2, 3]);
        assert_eq!(b, [0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(next_frame(&b[..2], 100), Ok(None));
        assert_eq!(next_frame(&b[..6], 100), Ok(None));
        assert_eq!(next_frame(&b, 100), Ok(Some(3)));
        assert_eq!(
            next_frame(&[0, 0, 0, 0], 100),
            Err(FramingError::ZeroLength)
        );
        assert_eq!(
            next_frame(&[0, 1, 0, 0], 100),
            Err(FramingError::Oversized {
                len: 65536,
                max: 100
            })
        );
    }
}
