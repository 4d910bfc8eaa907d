//! Accuracy metrics: word recall of OCR output against the true text of a screen.

use std::collections::HashMap;

/// The words of a text for scoring: whitespace-separated tokens with surrounding punctuation
/// stripped; tokens without a letter or digit (box drawing, `[`, `-`) are dropped.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .map(str::to_string)
        .collect()
}

/// Word recall: the fraction of the true words (as a multiset) that appear in the OCR output,
/// exact and case-sensitive. Returns `(found, total)`.
pub fn word_recall(truth: &str, ocr: &str) -> (usize, usize) {
    let mut have: HashMap<String, usize> = HashMap::new();
    for w in words(ocr) {
        *have.entry(w).or_default() += 1;
    }
    let truth = words(truth);
    let mut found = 0;
    for w in &truth {
        if let Some(n) = have.get_mut(w) {
            if *n > 0 {
                *n -= 1;
                found += 1;
            }
        }
    }
    (found, truth.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_strip_punctuation_and_drop_symbols() {
        assert_eq!(
            words("[  OK  ] Started foo.service. ─── │"),
            ["OK", "Started", "foo.service"]
        );
    }

    #[test]
    fn recall_counts_multiset_matches() {
        assert_eq!(word_recall("a b b c", "b a x"), (2, 4));
        assert_eq!(word_recall("", "x"), (0, 0));
        assert_eq!(word_recall("testvm login:", "testum login"), (1, 2));
    }
}
