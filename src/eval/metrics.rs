//! Text metrics reported beside Video-R1's scores for the types its protocol scores 0.
//!
//! - [`wer`]: word error rate as jiwer 4 computes it with its default transform, except that
//!   words are split on every run of whitespace (jiwer's default keeps a lone tab or newline
//!   inside a word). No normalization: case and punctuation count.
//! - [`rouge_l_f1`]: ROUGE-L F1 as the `rouge_score` package computes it with its default
//!   tokenizer (lowercase, every run of characters other than `a-z0-9` separates tokens, no
//!   stemming).

use super::score::is_py_space;

/// Word-level Levenshtein distance (substitutions, deletions, insertions) divided by the number
/// of reference words; an empty reference gives the number of hypothesis words (jiwer 4 divides
/// by at least 1).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    edit_distance(&r, &h) as f64 / r.len().max(1) as f64
}

fn words(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// rouge_score's default tokens: the text lowercased (full Unicode mapping, as `str.lower()`),
/// split on everything that is not an ASCII lowercase letter or digit.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-L F1 of `prediction` against `target`: LCS over [`rouge_tokens`], precision = LCS /
/// prediction tokens, recall = LCS / target tokens, F1 = 2·p·r / (p + r) evaluated in that
/// order; 0 when either side has no tokens.
pub fn rouge_l_f1(target: &str, prediction: &str) -> f64 {
    let (t, p) = (rouge_tokens(target), rouge_tokens(prediction));
    if t.is_empty() || p.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&t, &p) as f64;
    let precision = lcs / p.len() as f64;
    let recall = lcs / t.len() as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate() {
        assert_eq!(wer("a b c d", "a b c d"), 0.0);
        assert_eq!(wer("a b c d", "a x c d"), 0.25);
        assert_eq!(wer("a b c d", "a c d"), 0.25);
        assert_eq!(wer("a b", "a b c d"), 1.0);
        assert_eq!(wer("a b", ""), 1.0);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "x y"), 2.0);
        assert_eq!(wer("A b.", "a b"), 1.0);
        assert_eq!(wer("a\nb\u{3000}c", " a b c "), 0.0);
    }

    #[test]
    fn rouge_l() {
        assert_eq!(
            rouge_tokens("Hello, World! x_y Caf\u{e9}"),
            ["hello", "world", "x", "y", "caf"]
        );
        assert_eq!(rouge_l_f1("a b c", "a b c"), 1.0);
        assert_eq!(rouge_l_f1("a b c", "x"), 0.0);
        assert_eq!(rouge_l_f1("", "x"), 0.0);
        // LCS("a b c d", "a c e") = 2: p = 2/3, r = 2/4.
        let (p, r) = (2.0f64 / 3.0, 0.5f64);
        assert_eq!(rouge_l_f1("a b c d", "a c e"), 2.0 * p * r / (p + r));
    }
}
