//! A reader for VGA text-mode screens (what a Linux console without a framebuffer shows under
//! QEMU's std VGA): the screen is a grid of character cells drawn from a bitmap font, so each
//! cell is matched exactly against the font's glyphs. It is exact and takes about a millisecond,
//! and it says when a screen is not such a console (other font, graphics): then the tesseract
//! variants do the work.
//!
//! The glyphs are learned from `fonts/vga-8x16.png`, a real screenshot of our guest's console
//! showing every character of `fonts/vga-8x16.txt` (see `tests/corpus/generate.sh`).

use std::sync::OnceLock;

use image::{Rgb, RgbImage};

use crate::tsv::{WordBox, Words};

const SHEET_PNG: &[u8] = include_bytes!("../fonts/vga-8x16.png");
const SHEET_TXT: &str = include_str!("../fonts/vga-8x16.txt");
const GLYPH_W: u32 = 8;
const GLYPH_H: u32 = 16;

/// Cell layouts tried, as (cell width, cell height, horizontal and vertical glyph scale):
/// 80 columns with 9- or 8-dot cells, 40-column modes (doubled width), and double-height fonts.
const GEOMETRIES: [Geometry; 7] = [
    (9, 16, 1, 1),
    (8, 16, 1, 1),
    (18, 16, 2, 1),
    (16, 16, 2, 1),
    (16, 32, 2, 2),
    (9, 32, 1, 2),
    (8, 32, 1, 2),
];

/// A cell may differ from its glyph only in the bottom three glyph rows, where the text-mode
/// cursor (an underline) is drawn; any other difference means "not this glyph".
const CURSOR_ROWS: u128 = !0u128 << (13 * GLYPH_W);

/// A bitmap font: 8x16 glyph masks (bit `y * 8 + x` set = foreground).
#[derive(Debug, Clone)]
pub struct ConsoleFont {
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
                let mask = cell_mask(sheet, x0, y0, 1, 1).0;
                if mask != 0 && !glyphs.iter().any(|(_, m)| *m == mask) {
                    glyphs.push((ch, mask));
                }
            }
        }
        ConsoleFont { glyphs }
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
        let inv = !mask;
        let mut near = None;
        for &(ch, g) in &self.glyphs {
            if g == mask || g == inv {
                return Some(ch);
            }
            if near.is_none() && ((g ^ mask) & !CURSOR_ROWS == 0 || (g ^ inv) & !CURSOR_ROWS == 0) {
                near = Some(ch);
            }
        }
        near
    }
}

/// The foreground mask of one cell: pixels that differ from the cell's most common colour,
/// sampled at the centre of each (scaled) glyph pixel. Also returns how many colours the cell
/// has (capped at 3; a text-mode cell has at most 2).
fn cell_mask(img: &RgbImage, x0: u32, y0: u32, sx: u32, sy: u32) -> (u128, usize) {
    // The background is the most common of the (at most a few) colours in the cell.
    let mut colors: [(Rgb<u8>, u32); 4] = [(Rgb([0, 0, 0]), 0); 4];
    let mut n = 0;
    for gy in 0..GLYPH_H {
        for gx in 0..GLYPH_W {
            let p = *img.get_pixel(x0 + gx * sx + sx / 2, y0 + gy * sy + sy / 2);
            if let Some(slot) = colors[..n].iter_mut().find(|(c, _)| *c == p) {
                slot.1 += 1;
            } else if n < colors.len() {
                colors[n] = (p, 1);
                n += 1;
            }
        }
    }
    let bg = colors[..n]
        .iter()
        .max_by_key(|(_, k)| *k)
        .map(|(c, _)| *c)
        .unwrap_or(Rgb([0, 0, 0]));
    let mut mask = 0u128;
    for gy in 0..GLYPH_H {
        for gx in 0..GLYPH_W {
            if *img.get_pixel(x0 + gx * sx + sx / 2, y0 + gy * sy + sy / 2) != bg {
                mask |= 1u128 << (gy * GLYPH_W + gx);
            }
        }
    }
    (mask, n.min(3))
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
    for g @ (cw, ch, sx, sy) in GEOMETRIES {
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
                let (mask, colors) = cell_mask(img, c * cw, r * ch, sx, sy);
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
        if best.as_ref().is_none_or(|(b, ..)| bad < *b) {
            best = Some((bad, grid, g));
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
}
