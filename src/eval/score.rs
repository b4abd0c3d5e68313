//! Scoring exactly as Video-R1's `src/eval_bench.py` (`reward_fn`), plus the extra metrics of
//! our own for the types that protocol scores 0 (word error rate for OCR, ROUGE-L F1 for
//! free-form; see [`super::metrics`]).
//!
//! The reference compares strings with Python semantics, so the pieces below reproduce them:
//! `str.strip()` / regex `\s` whitespace, `float()` (including its Unicode digits, underscores,
//! `inf` / `nan`), `round(x, 2)` (correctly rounded, ties to even on the exact binary value) and
//! torch float32 arithmetic for the mean relative accuracy.

use crate::prompt::video_r1::ProblemType;
use crate::prompt::{parse_answer, parse_think};

use super::data::EvalItem;
use super::metrics;

/// Video-R1's `extract_answer`: the first `<answer>\s*(.*?)\s*</answer>` (dot matches
/// newline), stripped; `""` when there is none.
pub fn extract_answer(text: &str) -> String {
    parse_answer(text).unwrap_or_default()
}

/// The same for `<think>…</think>`.
pub fn extract_think(text: &str) -> String {
    parse_think(text).unwrap_or_default()
}

/// The model's answer: the extracted answer, or, when that is empty, the whole output as it is
/// (not stripped).
pub fn prediction(output: &str) -> String {
    match extract_answer(output) {
        a if a.is_empty() => output.to_string(),
        a => a,
    }
}

/// Python's `str.isspace()` for one character (what `str.strip()` removes and `\s` matches).
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Code points of the digit zero of every run of Unicode decimal digits (general category Nd;
/// each run holds 0..9 in order), as Python 3.11's Unicode 14 database lists them. `float()`
/// reads any of these digits as its ASCII counterpart.
const DECIMAL_ZEROS: [u32; 65] = [
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
    0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50,
    0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

fn unicode_decimal(c: char) -> Option<u8> {
    let u = c as u32;
    let i = DECIMAL_ZEROS.partition_point(|&z| z <= u);
    let d = u - *DECIMAL_ZEROS.get(i.checked_sub(1)?)?;
    (d < 10).then_some(d as u8)
}

/// C `isspace` in the "C" locale, which `float()` strips after its Unicode pass.
fn is_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Python's `float(s)` for a str, or `None` where it raises. In order: every non-ASCII
/// character becomes ' ' if it is whitespace or its ASCII digit if it is a decimal digit (any
/// other makes it fail; U+007F counts as non-ASCII here, as in CPython); underscores must each
/// sit between two digits and are removed; ASCII whitespace (not U+001C..U+001F) is stripped;
/// the rest must be `[+-]?(inf|infinity|nan)` (any case) or
/// `[+-]?(D+(.D*)?|.D+)([eE][+-]?D+)?`, read correctly rounded (overflow gives ±inf).
pub fn py_float(s: &str) -> Option<f64> {
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            ascii.push(c);
        } else if c.is_whitespace() {
            ascii.push(' ');
        } else {
            ascii.push(char::from(b'0' + unicode_decimal(c)?));
        }
    }
    if ascii.contains('_') {
        ascii = remove_underscores(&ascii)?;
    }
    let t = ascii.trim_matches(is_ascii_space);
    let (negative, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let sign = if negative { -1.0 } else { 1.0 };
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(sign * f64::INFINITY);
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    decimal_grammar(body).then(|| t.parse::<f64>().ok())?
}

/// `1_000` → `1000`; `None` unless every underscore is between two digits.
fn remove_underscores(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut prev = '\0';
    for c in s.chars() {
        if c == '_' {
            if !prev.is_ascii_digit() {
                return None;
            }
        } else {
            if prev == '_' && !c.is_ascii_digit() {
                return None;
            }
            out.push(c);
        }
        prev = c;
    }
    (prev != '_').then_some(out)
}

/// `(D+(.D*)?|.D+)([eE][+-]?D+)?` over the whole of `s` (the sign is already removed).
fn decimal_grammar(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - start)
    };
    let (mut i, int_digits) = digits(0);
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        (i, frac_digits) = digits(i + 1);
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_digits;
        (i, exp_digits) = digits(i);
        if exp_digits == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Video-R1's `normalize_number`: `float(s.replace(',', ''))`, `None` where that raises.
pub fn normalize_number(s: &str) -> Option<f64> {
    py_float(&s.replace(',', ""))
}

/// Python's `round(x, 2)`: the double nearest to x rounded to 2 decimals, ties to even on x's
/// exact binary value (so 0.125 → 0.12 but 2.675 → 2.67, as 2.675 is stored below the tie);
/// inf and nan are returned as they are.
pub fn py_round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // `{:.2}` is exact decimal rounding with ties to even; parsing is correctly rounded.
    format!("{x:.2}").parse().expect("a formatted float parses")
}

/// `torch.arange(0.5, 0.95 + 0.05/2, 0.05, dtype=torch.float32)`: each value is computed in
/// double as `start + i*step` and then rounded to float32.
pub fn mra_thresholds() -> [f32; 10] {
    std::array::from_fn(|i| (0.5f64 + 0.05f64 * i as f64) as f32)
}

/// Video-R1's `mean_relative_accuracy` in torch float32: both numbers rounded to f32,
/// `|p - g| / (|g| + 1e-8)` in f32, compared with `1 - t` for the ten thresholds, and the
/// mean of the ten booleans as an f32 (returned widened, as `.item()` does: 0.9 is
/// 0.8999999761581421).
pub fn mean_relative_accuracy(pred: f64, target: f64) -> f64 {
    let (p, g) = (pred as f32, target as f32);
    let rel = (p - g).abs() / (g.abs() + 1e-8f64 as f32);
    let hits = mra_thresholds()
        .iter()
        .filter(|&&t| rel < 1.0f32 - t)
        .count();
    (hits as f32 / 10.0f32) as f64
}

/// Video-R1's `reward_fn` for one output.
pub fn reward(kind: ProblemType, solution: &str, output: &str) -> f64 {
    let pred = prediction(output);
    let gt = extract_answer(solution);
    let hit = |b: bool| if b { 1.0 } else { 0.0 };
    match kind {
        ProblemType::MultipleChoice => hit(py_strip(&pred) == py_strip(&gt)),
        ProblemType::Numerical => {
            let decimal = |s: &str| s.contains('.') || s.contains(',');
            if decimal(&gt) != decimal(&pred) {
                return 0.0;
            }
            match (normalize_number(&gt), normalize_number(&pred)) {
                (Some(g), Some(p)) => hit(py_round2(g) == py_round2(p)),
                _ => 0.0,
            }
        }
        ProblemType::Regression => match (normalize_number(&gt), normalize_number(&pred)) {
            (Some(g), Some(p)) => mean_relative_accuracy(p, g),
            _ => 0.0,
        },
        ProblemType::Ocr | ProblemType::FreeForm => 0.0,
    }
}

/// Everything scoring derives from one output.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// `<think>` content, `""` when absent.
    pub think: String,
    /// The answer that was scored (see [`prediction`]).
    pub prediction: String,
    /// The answer extracted from `solution` (`""` when it has no tags).
    pub ground_truth: String,
    /// Video-R1's reward: 0/1 for multiple choice and numerical, the mean relative accuracy
    /// for regression, 0 for OCR and free-form.
    pub reward: f64,
    /// Word error rate of the prediction against the ground truth (OCR only).
    pub wer: Option<f64>,
    /// ROUGE-L F1 of the prediction against the ground truth (free-form only).
    pub rouge_l: Option<f64>,
}

/// Scores `output` for a question of type `kind` whose solution is `solution`.
pub fn score(kind: ProblemType, solution: &str, output: &str) -> Score {
    let prediction = prediction(output);
    let ground_truth = extract_answer(solution);
    Score {
        think: extract_think(output),
        reward: reward(kind, solution, output),
        wer: (kind == ProblemType::Ocr).then(|| metrics::wer(&ground_truth, &prediction)),
        rouge_l: (kind == ProblemType::FreeForm)
            .then(|| metrics::rouge_l_f1(&ground_truth, &prediction)),
        prediction,
        ground_truth,
    }
}

/// [`score`] for an evaluation item.
pub fn score_item(item: &EvalItem, output: &str) -> Score {
    score(item.problem_type, &item.solution, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProblemType::*;

    #[test]
    fn answer_extraction_rules() {
        // (text, extract_answer, prediction)
        let rows = [
            ("<answer>A</answer>", "A", "A"),
            ("<answer> \n A \t</answer>", "A", "A"),
            ("x<answer>B</answer>y<answer>C</answer>", "B", "B"),
            ("<answer>A", "", "<answer>A"),
            ("<answer></answer>", "", "<answer></answer>"),
            ("no tags ", "", "no tags "),
            ("<answer>a\nb</answer>", "a\nb", "a\nb"),
            ("<answer><answer>A</answer>", "<answer>A", "<answer>A"),
        ];
        for (text, ans, pred) in rows {
            assert_eq!(extract_answer(text), ans, "{text:?}");
            assert_eq!(prediction(text), pred, "{text:?}");
        }
        assert_eq!(extract_think("<think> hm </think><answer>1</answer>"), "hm");
        assert_eq!(extract_think("<answer>1</answer>"), "");
    }

    #[test]
    fn python_float_grammar() {
        let ok = [
            ("1", 1.0),
            (" 1 ", 1.0),
            ("\x0b1\x0c", 1.0),
            ("1_000", 1000.0),
            ("1e1_0", 1e10),
            ("+5", 5.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1E-5", 1e-5),
            ("-Infinity", f64::NEG_INFINITY),
            ("1e400", f64::INFINITY),
            ("\u{ff11}\u{ff12}", 12.0),
            ("\u{661}_\u{662}", 12.0),
            ("\u{3000}7\u{a0}", 7.0),
        ];
        for (s, v) in ok {
            assert_eq!(py_float(s), Some(v), "{s:?}");
        }
        assert!(py_float("nan").unwrap().is_nan());
        assert!(py_float("-NaN").unwrap().is_nan());
        let bad = [
            "",
            " ",
            ".",
            "+-5",
            "1_",
            "_1",
            "1__0",
            "1_.5",
            "1._5",
            "1_e5",
            "1e",
            "1e+",
            "e5",
            "infinit",
            "nan(1)",
            "0x10",
            "1,000",
            "\x1c1",
            "1 2",
            "\u{b2}",
            "\u{bd}",
            "\u{7f}1",
            "1.2.3",
            "\u{2212}5",
        ];
        for s in bad {
            assert_eq!(py_float(s), None, "{s:?}");
        }
        assert_eq!(normalize_number("1,000.5"), Some(1000.5));
        assert_eq!(normalize_number(",5"), Some(5.0));
    }

    #[test]
    fn round_half_even_on_the_binary_value() {
        for (x, r) in [
            (0.125, 0.12),
            (0.375, 0.38),
            (2.675, 2.67),
            (0.005, 0.01),
            (-0.125, -0.12),
            (1e300, 1e300),
        ] {
            assert_eq!(py_round2(x), r, "{x}");
        }
        assert!(py_round2(f64::NAN).is_nan());
        assert_eq!(py_round2(f64::INFINITY), f64::INFINITY);
    }

    #[test]
    fn mra_in_float32() {
        // 1 - 0.9f32 = 0.10000002 > 0.1f32, so a 10% error passes 9 of 10 thresholds.
        assert_eq!(mean_relative_accuracy(9.0, 10.0), 0.9f32 as f64);
        // 1 - 0.8f32 = 0.19999999 < 0.2f32: a 20% error passes 6.
        assert_eq!(mean_relative_accuracy(12.0, 10.0), 0.6f32 as f64);
        assert_eq!(mean_relative_accuracy(10.0, 10.0), 1.0);
        assert_eq!(mean_relative_accuracy(5.0, 10.0), 0.0);
        assert_eq!(mean_relative_accuracy(0.0, 0.0), 1.0);
        assert_eq!(mean_relative_accuracy(0.001, 0.0), 0.0);
        assert_eq!(mean_relative_accuracy(1e39, 1e39), 0.0); // f32 inf - inf = nan
        assert_eq!(mean_relative_accuracy(f64::NAN, 1.0), 0.0);
    }

    #[test]
    fn reward_rules() {
        let a = |s: &str| format!("<answer>{s}</answer>");
        let rows: &[(ProblemType, &str, &str, f64)] = &[
            (MultipleChoice, "A", "A", 1.0),
            (MultipleChoice, "A", "a", 0.0),
            (MultipleChoice, "A", " A ", 1.0),
            (Numerical, "3", "3", 1.0),
            (Numerical, "3", "3.0", 0.0),
            (Numerical, "3.00", "3.0", 1.0),
            (Numerical, "1000", "1,000", 0.0),
            (Numerical, "1,000.0", "1,000", 1.0),
            (Numerical, "-2", "-2", 1.0),
            (Numerical, "-2", "2", 0.0),
            (Numerical, "abc", "abc", 0.0),
            (Numerical, "nan", "nan", 0.0),
            (Numerical, "inf", "inf", 1.0),
            (Numerical, "0.12", "0.125", 1.0),
            (Regression, "10", "9", 0.9f32 as f64),
            (Regression, "0", "0", 1.0),
            (Regression, "-10", "-9", 0.9f32 as f64),
            (Regression, "10", "x", 0.0),
            (Ocr, "hello", "hello", 0.0),
            (FreeForm, "hello", "hello", 0.0),
        ];
        for &(kind, gt, out, want) in rows {
            assert_eq!(reward(kind, &a(gt), &a(out)), want, "{kind} {gt:?} {out:?}");
        }
        // A solution without tags has an empty ground truth; an empty output then matches it.
        assert_eq!(reward(MultipleChoice, "A", "<answer>A</answer>"), 0.0);
        assert_eq!(reward(MultipleChoice, "A", ""), 1.0);
    }

    #[test]
    fn score_adds_extra_metrics_by_type() {
        let s = score(
            Ocr,
            "<answer>a b</answer>",
            "<think>t</think><answer>a c</answer>",
        );
        assert_eq!((s.reward, s.wer, s.rouge_l), (0.0, Some(0.5), None));
        assert_eq!(s.think, "t");
        let s = score(FreeForm, "<answer>a b</answer>", "a b");
        assert_eq!((s.wer, s.rouge_l), (None, Some(1.0)));
        let s = score(MultipleChoice, "<answer>A</answer>", "A");
        assert_eq!((s.wer, s.rouge_l, s.reward), (None, None, 1.0));
    }
}
