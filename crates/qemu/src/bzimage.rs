//! The uncompressed kernel inside a bzImage, for a PVH boot.
//!
//! A bzImage is a real-mode setup followed by a compressed `vmlinux` and a decompressor.
//! Under TCG the decompression and the firmware's real-mode path cost about 0.6 s of every cold
//! boot. QEMU boots an uncompressed ELF `vmlinux` directly at its PVH entry point when the kernel
//! has one (Debian's kernels are built with `CONFIG_PVH=y`), skipping both.
//!
//! [`pvh_elf`] reads the boot protocol header (`payload_offset`, `payload_length`), decompresses
//! an LZ4 payload (the format Debian 12 uses; the legacy LZ4 frame format the kernel's build
//! writes) and returns the ELF if it carries the PVH entry note. Any other compression, or a
//! kernel without the note, gives `None`: keep booting the bzImage.

/// Why a bzImage could not be unpacked although it claims a format we read.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// The header or the payload is inconsistent.
    #[error("malformed bzImage: {0} (boot the bzImage itself, or report the kernel package)")]
    Malformed(String),
}

/// The boot protocol's magic, at offset 0x202 of a bzImage.
const HDRS: &[u8; 4] = b"HdrS";
/// The magic of LZ4's legacy frame format (little-endian 0x184C2102).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// The largest block of the legacy frame format, uncompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note naming the PVH entry point.
const PVH_NOTE_TYPE: u32 = 18;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The compressed payload of a bzImage (boot protocol 2.08 or later), if `image` is one.
pub fn payload(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206)? != HDRS || u16_at(image, 0x206)? < 0x0208 {
        return None;
    }
    let setup_sects = match image.get(0x1f1)? {
        0 => 4,
        n => usize::from(*n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(u32_at(image, 0x248)?).ok()?;
    let len = usize::try_from(u32_at(image, 0x24c)?).ok()?;
    image.get(start..start.checked_add(len)?)
}

/// Decompresses LZ4's legacy frame format: the magic, then blocks each preceded by its
/// compressed length; the kernel's build appends the uncompressed size (4 bytes), which ends it.
fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let bad = |m: String| BzImageError::Malformed(m);
    let mut at = LZ4_LEGACY_MAGIC.len();
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while data.len() - at > 4 {
        let n = u32_at(data, at).ok_or_else(|| bad("truncated LZ4 block length".into()))?;
        if n.to_le_bytes() == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let n = n as usize;
        at += 4;
        let input = data
            .get(at..at + n)
            .ok_or_else(|| bad(format!("LZ4 block of {n} bytes runs past the payload")))?;
        let got = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|e| bad(format!("LZ4 block at byte {at}: {e}")))?;
        out.extend_from_slice(&block[..got]);
        at += n;
    }
    if let Some(size) = data.get(at..).and_then(|t| u32_at(t, 0)) {
        if size as usize != out.len() {
            return Err(bad(format!(
                "LZ4 payload decompressed to {} bytes, its trailer says {size}",
                out.len()
            )));
        }
    }
    Ok(out)
}

/// Whether `elf` is a 64-bit little-endian ELF with the PVH entry note.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    // ELF64 header: class 2, data 1; program headers at e_phoff, e_phentsize, e_phnum.
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) =
        (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38))
    else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        let ph = phoff as usize + i * usize::from(entsize);
        // PT_NOTE = 4; p_offset at +8, p_filesz at +32.
        if u32_at(elf, ph) != Some(4) {
            return false;
        }
        let (Some(off), Some(size)) = (u64_at(elf, ph + 8), u64_at(elf, ph + 32)) else {
            return false;
        };
        let Some(notes) = elf.get(off as usize..(off + size) as usize) else {
            return false;
        };
        note_types(notes).any(|(name, ty)| name == b"Xen\0" && ty == PVH_NOTE_TYPE)
    })
}

/// The (name, type) of each note in a note segment (4-byte aligned fields).
fn note_types(notes: &[u8]) -> impl Iterator<Item = (&[u8], u32)> {
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    std::iter::from_fn(move || {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let ty = u32_at(notes, at + 8)?;
        let name = notes.get(at + 12..at + 12 + namesz)?;
        at += 12 + align(namesz) + align(descsz);
        Some((name, ty))
    })
}

/// The uncompressed ELF kernel inside `bzimage`, if its payload is LZ4 (as Debian 12's kernels)
/// and the ELF has the PVH entry note; `None` for any other kernel (boot the bzImage then).
pub fn pvh_elf(bzimage: &[u8]) -> Result<Option<Vec<u8>>, BzImageError> {
    let Some(payload) = payload(bzimage) else {
        return Ok(None);
    };
    if !payload.starts_with(&LZ4_LEGACY_MAGIC) {
        return Ok(None);
    }
    let elf = lz4_legacy(payload)?;
    Ok(has_pvh_note(&elf).then_some(elf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header fields and a payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4;
        b[0x202..0x206].copy_from_slice(HDRS);
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(payload);
        b.extend_from_slice(b"trailing decompressor code");
        b
    }

    /// An ELF64 with one PT_NOTE segment holding `notes` of (name, type).
    fn elf(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut seg = Vec::new();
        for (name, ty) in notes {
            seg.extend_from_slice(&(name.len() as u32).to_le_bytes());
            seg.extend_from_slice(&4u32.to_le_bytes());
            seg.extend_from_slice(&ty.to_le_bytes());
            seg.extend_from_slice(name);
            seg.resize(seg.len().div_ceil(4) * 4, 0);
            seg.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        }
        let mut e = vec![0u8; 64 + 56];
        e[0..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes());
        e[72..80].copy_from_slice(&120u64.to_le_bytes());
        e[96..104].copy_from_slice(&(seg.len() as u64).to_le_bytes());
        e.extend_from_slice(&seg);
        e
    }

    /// LZ4 legacy frame of `data` in blocks of `block` bytes, with the size trailer.
    fn lz4_frame(data: &[u8], block: usize) -> Vec<u8> {
        let mut f = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            f.extend_from_slice(&(c.len() as u32).to_le_bytes());
            f.extend_from_slice(&c);
        }
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f
    }

    #[test]
    fn finds_the_pvh_elf_in_an_lz4_bzimage() {
        let mut kernel = elf(&[(b"GNU\0", 3), (b"Xen\0", PVH_NOTE_TYPE)]);
        kernel.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let got = pvh_elf(&bzimage(&lz4_frame(&kernel, 30_000))).unwrap();
        assert_eq!(got.as_deref(), Some(&kernel[..]));
    }

    #[test]
    fn a_kernel_without_the_note_or_lz4_is_left_alone() {
        let kernel = elf(&[(b"Xen\0", 5)]);
        assert!(!has_pvh_note(&kernel));
        assert_eq!(
            pvh_elf(&bzimage(&lz4_frame(&kernel, 1 << 20))).unwrap(),
            None
        );
        let gzip = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
        assert_eq!(pvh_elf(&bzimage(&gzip)).unwrap(), None);
        assert_eq!(pvh_elf(b"not a kernel at all").unwrap(), None);
    }

    #[test]
    fn a_corrupt_payload_is_an_error_not_a_kernel() {
        let kernel = elf(&[(b"Xen\0", PVH_NOTE_TYPE)]);
        let mut frame = lz4_frame(&kernel, 1 << 20);
        let n = frame.len();
        frame[n - 1] ^= 0xff; // the size trailer no longer matches
        let err = pvh_elf(&bzimage(&frame)).unwrap_err();
        assert!(err.to_string().contains("trailer"), "{err}");
        let mut cut = lz4_frame(&kernel, 1 << 20);
        cut.truncate(12);
        cut.extend_from_slice(&[0, 0, 0, 0]);
        assert!(pvh_elf(&bzimage(&cut)).is_err());
    }
}
