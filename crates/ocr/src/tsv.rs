//! Parsing tesseract's TSV output into word boxes, and assembling the words into text in
//! screen reading order (rows top to bottom, words left to right).

use crate::OcrError;

/// A recognised word and where it is on the screenshot (pixel coordinates of the original
/// screenshot, already divided by the variant's upscale factor).
#[derive(Debug, Clone, PartialEq)]
pub struct WordBox {
    /// The word's text (or, for a `find_text` match, the matched words joined by spaces).
    pub text: String,
    /// Left edge in screenshot pixels.
    pub left: u32,
    /// Top edge in screenshot pixels.
    pub top: u32,
    /// Width in screenshot pixels.
    pub width: u32,
    /// Height in screenshot pixels.
    pub height: u32,
    /// tesseract's confidence, 0..100 (for a multi-word match: the lowest).
    pub confidence: f32,
}

impl WordBox {
    /// The centre of the box (e.g. where to click).
    pub fn center(&self) -> (u32, u32) {
        (self.left + self.width / 2, self.top + self.height / 2)
    }

    fn bottom(&self) -> u32 {
        self.top + self.height
    }

    /// The smallest box containing both.
    pub fn union(&self, other: &WordBox) -> WordBox {
        let left = self.left.min(other.left);
        let top = self.top.min(other.top);
        let right = (self.left + self.width).max(other.left + other.width);
        let bottom = self.bottom().max(other.bottom());
        WordBox {
            text: format!("{} {}", self.text, other.text),
            left,
            top,
            width: right - left,
            height: bottom - top,
            confidence: self.confidence.min(other.confidence),
        }
    }
}

/// tesseract's words for one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Words {
    /// Words with boxes, in the order of [`Words::text`].
    pub words: Vec<WordBox>,
    /// For each word, its byte range in `text`.
    pub spans: Vec<std::ops::Range<usize>>,
    /// The words as text: one screen row per line, words separated by single spaces.
    pub text: String,
}

/// Parses `tesseract ... tsv` output. Box coordinates are divided by `scale`.
pub fn parse_tsv(tsv: &str, scale: f32) -> Result<Vec<WordBox>, OcrError> {
    let mut words = Vec::new();
    for (i, line) in tsv.lines().enumerate() {
        if i == 0 {
            if !line.starts_with("level\t") {
                return Err(OcrError::BadTsv {
                    line: 1,
                    detail: format!("header {line:?}"),
                });
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.splitn(12, '\t').collect();
        if cols.len() < 11 {
            return Err(OcrError::BadTsv {
                line: i + 1,
                detail: format!("{} columns in {line:?}", cols.len()),
            });
        }
        if cols[0] != "5" {
            continue; // page/block/paragraph/line rows
        }
        let text = cols.get(11).map_or("", |t| t.trim());
        if text.is_empty() {
            continue;
        }
        let num = |c: usize| -> Result<f32, OcrError> {
            cols[c].parse::<f32>().map_err(|_| OcrError::BadTsv {
                line: i + 1,
                detail: format!("column {} is {:?}, not a number", c + 1, cols[c]),
            })
        };
        let s = if scale > 0.0 { scale } else { 1.0 };
        let (l, t, w, h) = (num(6)?, num(7)?, num(8)?, num(9)?);
        words.push(WordBox {
            text: text.to_string(),
            left: (l / s).round() as u32,
            top: (t / s).round() as u32,
            width: ((w / s).round() as u32).max(1),
            height: ((h / s).round() as u32).max(1),
            confidence: num(10)?,
        });
    }
    Ok(words)
}

/// Orders words into screen rows (by vertical overlap), left to right, and builds the text.
pub fn assemble(mut words: Vec<WordBox>) -> Words {
    words.sort_by_key(|w| (w.top + w.height / 2, w.left));
    let mut rows: Vec<Vec<WordBox>> = Vec::new();
    for w in words {
        let mid = w.top + w.height / 2;
        match rows.last_mut() {
            // Same row when this word's vertical centre lies within the row's first word.
            Some(row) if mid >= row[0].top && mid < row[0].bottom() => row.push(w),
            _ => rows.push(vec![w]),
        }
    }
    let mut out = Words::default();
    for mut row in rows {
        row.sort_by_key(|w| w.left);
        for (i, w) in row.into_iter().enumerate() {
            if i > 0 {
                out.text.push(' ');
            }
            let start = out.text.len();
            out.text.push_str(&w.text);
            out.spans.push(start..out.text.len());
            out.words.push(w);
        }
        out.text.push('\n');
    }
    out
}

impl Words {
    /// For every match of `re` in the text, the union box of the words it touches.
    pub fn find(&self, re: &regex::Regex) -> Vec<WordBox> {
        let mut found = Vec::new();
        for m in re.find_iter(&self.text) {
            let mut hit: Option<WordBox> = None;
            for (w, span) in self.words.iter().zip(&self.spans) {
                let overlaps = span.start < m.end() && m.start() < span.end
                    || (m.start() == m.end() && span.contains(&m.start()));
                if overlaps {
                    hit = Some(match hit {
                        None => w.clone(),
                        Some(h) => h.union(w),
                    });
                }
            }
            if let Some(h) = hit {
                found.push(h);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext
1\t1\t0\t0\t0\t0\t0\t0\t1440\t800\t-1\t
2\t1\t1\t0\t0\t0\t20\t40\t300\t30\t-1\t
5\t1\t1\t1\t1\t1\t200\t40\t100\t30\t91.5\tlogin:
5\t1\t1\t1\t1\t2\t20\t42\t160\t28\t96.0\ttestvm
5\t1\t2\t1\t1\t1\t20\t100\t80\t30\t88.0\tHELLO
5\t1\t2\t1\t1\t2\t120\t100\t20\t30\t0.0\t 
";

    #[test]
    fn parses_words_and_scales_boxes() {
        let w = parse_tsv(TSV, 2.0).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].text, "login:");
        assert_eq!(
            (w[0].left, w[0].top, w[0].width, w[0].height),
            (100, 20, 50, 15)
        );
        assert_eq!(w[0].confidence, 91.5);
    }

    #[test]
    fn assembles_rows_in_reading_order() {
        let words = assemble(parse_tsv(TSV, 1.0).unwrap());
        assert_eq!(words.text, "testvm login:\nHELLO\n");
        assert_eq!(&words.text[words.spans[1].clone()], "login:");
    }

    #[test]
    fn find_returns_union_boxes() {
        let words = assemble(parse_tsv(TSV, 1.0).unwrap());
        let hits = words.find(&regex::Regex::new("vm login").unwrap());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].text, "testvm login:");
        assert_eq!(
            (hits[0].left, hits[0].top, hits[0].width, hits[0].height),
            (20, 40, 280, 30)
        );
        assert_eq!(hits[0].confidence, 91.5);
        assert!(words.find(&regex::Regex::new("absent").unwrap()).is_empty());
    }

    #[test]
    fn rejects_non_tsv() {
        assert!(matches!(
            parse_tsv("hello\n", 1.0),
            Err(OcrError::BadTsv { line: 1, .. })
        ));
        let bad = "level\tx\n5\t1\t1\n";
        assert!(matches!(
            parse_tsv(bad, 1.0),
            Err(OcrError::BadTsv { line: 2, .. })
        ));
    }
}
