//! A reader for VGA text-mode screens (what a Linux console without a framebuffer shows under
//! QEMU's std VGA): the screen is a grid of character cells drawn from a bitmap font, so each
//! cell is matched exactly against the font's glyphs. It is exact and takes about a millisecond,
//! and it says when a screen is not such a console (other font, graphics): then the tesseract
//! variants do the work.
//!
//! The glyphs are learned from `fonts/vga-8x16.png`, a real screenshot of our guest's console
//! showing every character of `fonts/vga-8x16.txt` (see `tests/corpus/generate.sh`).

use std::sync::OnceLock;

use image::RgbImage;

use crate::tsv::{WordBox, Words};
use crate::OcrError;

fn psf1_table(t: &[u8], count: usize) -> Vec<Vec<char>> {
    let mut out = vec![Vec::new(); count];
    let (mut g, mut in_seq) = (0, false);
    for pair in t.chunks_exact(2) {
        if g >= count {
            break;
        }
        match u16::from_le_bytes([pair[0], pair[1]]) {
            0xffff => {
                g += 1;
                in_seq = false;
            }
            0xfffe => in_seq = true,
            u if !in_seq => out[g].extend(char::from_u32(u32::from(u))),
            _ => {}
        }
    }
    out
}

fn psf2_table(t: &[u8], count: usize) -> Vec<Vec<char>> {
    let mut out = vec![Vec::new(); count];
    for (g, entry) in t.split(|&b| b == 0xff).take(count).enumerate() {
        // Single code points come first; 0xfe starts combining sequences (ignored).
        let singles = entry.split(|&b| b == 0xfe).next().unwrap_or_default();
        out[g].extend(
            String::from_utf8_lossy(singles)
                .chars()
                .filter(|c| *c != '\u{fffd}'),
        );
    }
    out
}

const SHEET_PNG: &[u8] = include_bytes!("../fonts/vga-8x16.png");
const SHEET_TXT: &str = include_str!("../fonts/vga-8x16.txt");
const GLYPH_W: u32 = 8;
/// Height of the learned VGA font; PSF fonts may be 1..=16 rows tall.
const GLYPH_H: u32 = 16;

/// Cell layouts tried for a font `h` rows tall, as (cell width, cell height, horizontal and
/// vertical glyph scale): 80 columns with 9- or 8-dot cells, 40-column modes (doubled width),
/// and double-height fonts.
fn geometries(h: u32) -> [Geometry; 7] {
    [
        (9, h, 1, 1),
        (8, h, 1, 1),
        (18, h, 2, 1),
        (16, h, 2, 1),
        (16, 2 * h, 2, 2),
        (9, 2 * h, 1, 2),
        (8, 2 * h, 1, 2),
    ]
}

/// The bits of a glyph `h` rows tall.
fn area(h: u32) -> u128 {
    if h * GLYPH_W >= 128 {
        !0
    } else {
        (1u128 << (h * GLYPH_W)) - 1
    }
}

/// A cell may differ from its glyph only in the bottom three glyph rows, where the text-mode
/// cursor (an underline) is drawn; any other difference means "not this glyph".
fn cursor_rows(h: u32) -> u128 {
    area(h) & !area(h.saturating_sub(3))
}

/// A bitmap font: 8-pixel-wide glyph masks up to 16 rows (bit `y * 8 + x` set = foreground).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleFont {
    height: u32,
    glyphs: Vec<(char, u128)>,
}

impl ConsoleFont {
    /// The VGA font of our guests (QEMU's VGA BIOS font), learned from the committed sheet.
    pub fn vga() -> &'static ConsoleFont {
        static FONT: OnceLock<ConsoleFont> = OnceLock::new();
        FONT.get_or_init(|| {
            let sheet = image::load_from_memory(SHEET_PNG)
                .expect("fonts/vga-8x16.png is a valid PNG")
                .into_rgb8();
            ConsoleFont::learn(&sheet, SHEET_TXT, 9)
        })
    }

    /// Learns glyphs from a screenshot whose text is known: the character at row `r`, column `c`
    /// of `text` is in the cell at (`c * cell_w`, `r * 16`). Spaces are skipped; the first
    /// character seen for a bitmap wins.
    pub fn learn(sheet: &RgbImage, text: &str, cell_w: u32) -> ConsoleFont {
        let mut glyphs: Vec<(char, u128)> = vec![(' ', 0)];
        for (r, line) in text.lines().enumerate() {
            for (c, ch) in line.chars().enumerate() {
                if ch == ' ' {
                    continue;
                }
                let (x0, y0) = (c as u32 * cell_w, r as u32 * GLYPH_H);
                if x0 + cell_w > sheet.width() || y0 + GLYPH_H > sheet.height() {
                    continue;
                }
                let mask = cell_mask(sheet, x0, y0, 1, 1, GLYPH_H).0;
                if mask != 0 && !glyphs.iter().any(|(_, m)| *m == mask) {
                    glyphs.push((ch, mask));
                }
            }
        }
        ConsoleFont {
            height: GLYPH_H,
            glyphs,
        }
    }

    /// Loads a Linux console font (PSF1 or PSF2, uncompressed: `gunzip` Debian's `.psf.gz`
    /// first) with its Unicode table, e.g. the font a guest sets with `setfont`. Glyphs must be
    /// 8 pixels wide (what VGA text mode can show) and at most 16 rows tall.
    pub fn from_psf(bytes: &[u8]) -> Result<ConsoleFont, OcrError> {
        let bad = |detail: String| OcrError::BadFont { detail };
        let u32_at = |o: usize| -> Result<u32, OcrError> {
            bytes
                .get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad(format!("truncated header at byte {o}")))
        };
        // (glyph count, height, width, bytes per glyph, glyph data offset, unicode table)
        let (count, height, width, charsize, offset, table): (
            usize,
            u32,
            u32,
            usize,
            usize,
            Vec<Vec<char>>,
        );
        if bytes.starts_with(&[0x36, 0x04]) && bytes.len() >= 4 {
            let mode = bytes[2];
            height = u32::from(bytes[3]);
            width = 8;
            count = if mode & 1 != 0 { 512 } else { 256 };
            charsize = height as usize;
            offset = 4;
            let end = offset + count * charsize;
            table = if mode & 0x06 != 0 {
                psf1_table(
                    bytes
                        .get(end..)
                        .ok_or_else(|| bad("truncated glyphs".into()))?,
                    count,
                )
            } else {
                Vec::new()
            };
        } else if bytes.starts_with(&[0x72, 0xb5, 0x4a, 0x86]) {
            let header = u32_at(8)? as usize;
            let flags = u32_at(12)?;
            count = u32_at(16)? as usize;
            charsize = u32_at(20)? as usize;
            height = u32_at(24)?;
            width = u32_at(28)?;
            offset = header;
            let end = offset + count * charsize;
            table = if flags & 1 != 0 {
                psf2_table(
                    bytes
                        .get(end..)
                        .ok_or_else(|| bad("truncated glyphs".into()))?,
                    count,
                )
            } else {
                Vec::new()
            };
        } else {
            return Err(bad(
                "not a PSF1 or PSF2 font (gunzip .psf.gz files first)".into()
            ));
        }
        if width != 8 || height == 0 || height > GLYPH_H {
            return Err(bad(format!(
                "{width}x{height} glyphs; only 8-pixel-wide fonts up to 16 rows are supported                  (VGA text mode shows 8-wide glyphs)"
            )));
        }
        let stride = (width as usize).div_ceil(8);
        let mut glyphs: Vec<(char, u128)> = vec![(' ', 0)];
        for g in 0..count {
            let data = bytes
                .get(offset + g * charsize..offset + (g + 1) * charsize)
                .ok_or_else(|| bad(format!("truncated at glyph {g}")))?;
            let mut mask = 0u128;
            for y in 0..height as usize {
                let row = data[y * stride];
                for x in 0..8 {
                    if row & (0x80 >> x) != 0 {
                        mask |= 1u128 << (y * 8 + x);
                    }
                }
            }
            let chars = table.get(g).cloned().unwrap_or_default();
            // Without a table, glyph positions are Latin-1/ASCII-compatible.
            let ch = chars
                .iter()
                .copied()
                .find(char::is_ascii)
                .or_else(|| chars.first().copied())
                .or_else(|| {
                    if table.is_empty() {
                        char::from_u32(g as u32)
                    } else {
                        None
                    }
                });
            if let Some(ch) = ch {
                if mask != 0 && !ch.is_control() && !glyphs.iter().any(|(_, m)| *m == mask) {
                    glyphs.push((ch, mask));
                }
            }
        }
        Ok(ConsoleFont { height, glyphs })
    }

    /// Glyph height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// How many glyphs the font knows.
    pub fn len(&self) -> usize {
        self.glyphs.len()
    }

    /// Whether the font is empty.
    pub fn is_empty(&self) -> bool {
        self.glyphs.is_empty()
    }

    /// The glyph that matches the cell exactly, or up to a cursor in its bottom rows.
    fn best(&self, mask: u128) -> Option<char> {
        let inv = !mask & area(self.height);
        let not_cursor = !cursor_rows(self.height);
        let mut near = None;
        for &(ch, g) in &self.glyphs {
            if g == mask || g == inv {
                return Some(ch);
            }
            if near.is_none() && ((g ^ mask) & not_cursor == 0 || (g ^ inv) & not_cursor == 0) {
                near = Some(ch);
            }
        }
        near
    }
}

/// The foreground mask of one cell: pixels that differ from the cell's most common colour,
/// sampled at the centre of each (scaled) glyph pixel. Also returns how many colours the cell
/// has (capped at 3; a text-mode cell has at most 2).
fn cell_mask(img: &RgbImage, x0: u32, y0: u32, sx: u32, sy: u32, h: u32) -> (u128, usize) {
    let raw = img.as_raw();
    let stride = img.width() as usize * 3;
    let mut px = [[0u8; 3]; (GLYPH_W * GLYPH_H) as usize];
    for gy in 0..h as usize {
        let row = (y0 as usize + gy * sy as usize + sy as usize / 2) * stride;
        for gx in 0..GLYPH_W as usize {
            let i = row + (x0 as usize + gx * sx as usize + sx as usize / 2) * 3;
            px[gy * GLYPH_W as usize + gx] = [raw[i], raw[i + 1], raw[i + 2]];
        }
    }
    let px = &px[..(h * GLYPH_W) as usize];
    // The background is the most common of the (at most a few) colours in the cell.
    let mut colors: [([u8; 3], u32); 3] = [([0; 3], 0); 3];
    let mut n = 0;
    for p in px {
        if let Some(slot) = colors[..n].iter_mut().find(|(c, _)| c == p) {
            slot.1 += 1;
        } else if n < colors.len() {
            colors[n] = (*p, 1);
            n += 1;
        }
    }
    let bg = colors[..n]
        .iter()
        .max_by_key(|(_, k)| *k)
        .map_or([0; 3], |(c, _)| *c);
    let mut mask = 0u128;
    for (i, p) in px.iter().enumerate() {
        if *p != bg {
            mask |= 1u128 << i;
        }
    }
    (mask, n)
}

/// Per row, per cell: the character and whether it matched a glyph.
type Grid = Vec<Vec<(char, bool)>>;
/// (cell width, cell height, horizontal scale, vertical scale).
type Geometry = (u32, u32, u32, u32);

/// What the console reader made of a screen.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleRead {
    /// Words (runs of non-space cells) with exact cell boxes, and the text.
    pub words: Words,
    /// Cells with ink that matched no glyph (read as `?`).
    pub unknown: usize,
    /// Cells with ink.
    pub inked: usize,
    /// (columns, rows) of the grid.
    pub grid: (u32, u32),
}

/// Reads a text-mode screen with `font`. `None` when no cell layout fits well enough (more
/// than `max_unknown` of the inked cells match no glyph): not a text console in this font.
pub fn read_console(img: &RgbImage, font: &ConsoleFont, max_unknown: f32) -> Option<ConsoleRead> {
    let mut best: Option<(f32, Grid, Geometry)> = None;
    for g @ (cw, ch, sx, sy) in geometries(font.height) {
        if img.width() % cw != 0 || img.height() % ch != 0 || img.width() < cw || img.height() < ch
        {
            continue;
        }
        let (cols, rows) = (img.width() / cw, img.height() / ch);
        let (mut inked, mut unknown) = (0usize, 0usize);
        let mut grid = Vec::with_capacity(rows as usize);
        for r in 0..rows {
            let mut line = Vec::with_capacity(cols as usize);
            for c in 0..cols {
                let (mask, colors) = cell_mask(img, c * cw, r * ch, sx, sy, font.height);
                if colors < 2 || mask == 0 {
                    line.push((' ', true));
                    continue;
                }
                inked += 1;
                if colors > 2 {
                    unknown += 1;
                    line.push(('?', false));
                    continue;
                }
                if let Some(chr) = font.best(mask) {
                    line.push((chr, true));
                } else {
                    unknown += 1;
                    line.push(('?', false));
                }
            }
            grid.push(line);
        }
        let bad = if inked == 0 {
            0.0
        } else {
            unknown as f32 / inked as f32
        };
        let perfect = bad == 0.0 && inked > 0;
        if best.as_ref().is_none_or(|(b, ..)| bad < *b) {
            best = Some((bad, grid, g));
        }
        if perfect {
            break; // every inked cell is a glyph: this is the layout
        }
    }
    let (bad, grid, (cw, ch, ..)) = best?;
    if bad > max_unknown {
        return None;
    }
    let (words, unknown, inked) = to_words(&grid, cw, ch);
    Some(ConsoleRead {
        words,
        unknown,
        inked,
        grid: (img.width() / cw, img.height() / ch),
    })
}

/// Box-drawing and block characters are layout, not text: they become spaces.
fn is_text(c: char) -> bool {
    !matches!(c, '\u{2500}'..='\u{259f}' | '\u{25a0}')
}

fn to_words(grid: &[Vec<(char, bool)>], cw: u32, ch: u32) -> (Words, usize, usize) {
    let mut out = Words::default();
    let (mut unknown, mut inked) = (0, 0);
    for (r, line) in grid.iter().enumerate() {
        let mut c = 0;
        let mut row_started = false;
        while c < line.len() {
            if line[c].0 == ' ' || !is_text(line[c].0) {
                c += 1;
                continue;
            }
            let start = c;
            let mut word = String::new();
            let mut all_known = true;
            while c < line.len() && line[c].0 != ' ' && is_text(line[c].0) {
                word.push(line[c].0);
                all_known &= line[c].1;
                inked += 1;
                unknown += usize::from(!line[c].1);
                c += 1;
            }
            if row_started {
                out.text.push(' ');
            }
            row_started = true;
            let s = out.text.len();
            out.text.push_str(&word);
            out.spans.push(s..out.text.len());
            out.words.push(WordBox {
                text: word,
                left: start as u32 * cw,
                top: r as u32 * ch,
                width: (c - start) as u32 * cw,
                height: ch,
                confidence: if all_known { 100.0 } else { 50.0 },
            });
        }
        if row_started {
            out.text.push('\n');
        }
    }
    (out, unknown, inked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn the_sheet_teaches_ascii() {
        let font = ConsoleFont::vga();
        assert!(font.len() > 94, "learned {} glyphs", font.len());
        for ch in ['a', 'Z', '0', '1', 'l', 'I', '/', '~', 'v', 'm'] {
            assert!(font.glyphs.iter().any(|(c, _)| *c == ch), "{ch:?} missing");
        }
    }

    #[test]
    fn reads_its_own_sheet_back() {
        let sheet = image::load_from_memory(SHEET_PNG).unwrap().into_rgb8();
        let read = read_console(&sheet, ConsoleFont::vga(), 0.0).unwrap();
        let first = SHEET_TXT.lines().next().unwrap();
        assert_eq!(read.words.text.lines().next().unwrap(), first);
        assert_eq!(read.grid, (80, 25));
    }

    #[test]
    fn a_cursor_under_a_glyph_is_tolerated_a_different_glyph_is_not() {
        let font = ConsoleFont::vga();
        let a = font.glyphs.iter().find(|(c, _)| *c == 'a').unwrap().1;
        assert_eq!(font.best(a | (0xffu128 << (14 * 8))), Some('a'));
        assert_eq!(font.best(a ^ (1u128 << (5 * 8 + 3))), None);
        assert_eq!(font.best(!a), Some('a'), "reverse video");
    }

    #[test]
    fn a_non_console_image_is_refused() {
        // Smooth gradient: no cell matches a glyph.
        let img = RgbImage::from_fn(720, 400, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
        });
        assert!(read_console(&img, ConsoleFont::vga(), 0.1).is_none());
    }

    fn synthetic_psf1() -> Vec<u8> {
        // 256 glyphs of 8x8; glyph 1 = a diagonal, mapped to 'Z'; glyph 2 = a box, mapped to 'o'.
        let mut f = vec![0x36, 0x04, 0x02, 8];
        let mut glyphs = vec![0u8; 256 * 8];
        for y in 0..8 {
            glyphs[8 + y] = 0x80 >> y;
        }
        glyphs[16..24].copy_from_slice(&[0, 0x3c, 0x42, 0x42, 0x42, 0x42, 0x3c, 0]);
        f.extend(glyphs);
        for g in 0..256u16 {
            let cp: u16 = match g {
                1 => 'Z' as u16,
                2 => 'o' as u16,
                _ => 0x2400 + g,
            };
            f.extend(cp.to_le_bytes());
            f.extend(0xffffu16.to_le_bytes());
        }
        f
    }

    #[test]
    fn psf1_font_reads_a_screen_drawn_with_it() {
        let font = ConsoleFont::from_psf(&synthetic_psf1()).unwrap();
        assert_eq!(font.height(), 8);
        // Draw "oZ" in 9x8 cells, light gray on blue.
        let mut img = RgbImage::from_pixel(9 * 80, 8 * 50, Rgb([0, 0, 170]));
        for (col, glyph) in [(0u32, 2usize), (1, 1)] {
            let rows = &synthetic_psf1()[4 + glyph * 8..4 + glyph * 8 + 8];
            for (y, row) in rows.iter().enumerate() {
                for x in 0..8 {
                    if row & (0x80 >> x) != 0 {
                        img.put_pixel(col * 9 + x, y as u32, Rgb([170, 170, 170]));
                    }
                }
            }
        }
        let read = read_console(&img, &font, 0.0).unwrap();
        assert_eq!(read.words.text, "oZ\n");
        assert_eq!(read.grid, (80, 50));
    }

    #[test]
    fn psf2_header_and_table_are_parsed() {
        let mut f = vec![0x72, 0xb5, 0x4a, 0x86];
        for v in [0u32, 32, 1, 2, 16, 16, 8] {
            f.extend(v.to_le_bytes());
        }
        f.extend([0u8; 16]); // glyph 0: blank
        f.extend([0x18u8; 16]); // glyph 1: a vertical bar
        f.extend(b"\xff|\xfe\x41\xcc\x88\xff"); // glyph 1 = '|' (+ a sequence, ignored)
        let font = ConsoleFont::from_psf(&f).unwrap();
        assert_eq!(
            font.best(0x1818_1818_1818_1818_1818_1818_1818_1818),
            Some('|')
        );
        assert!(ConsoleFont::from_psf(b"\x1f\x8b gzip")
            .unwrap_err()
            .to_string()
            .contains("gunzip"));
    }
}
