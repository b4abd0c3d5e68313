//! `<think>` / `<answer>` extraction, equivalent to Video-R1's
//! `re.search(r'<answer>\s*(.*?)\s*</answer>', text, re.DOTALL).group(1).strip()`.

/// The text between the first `<answer>` and the first `</answer>` after it, trimmed.
/// `None` when there is no such pair (e.g. an unterminated `<answer>`).
pub fn parse_answer(text: &str) -> Option<String> {
    between(text, "<answer>", "</answer>")
}

/// The text between the first `<think>` and the first `</think>` after it, trimmed.
pub fn parse_think(text: &str) -> Option<String> {
    between(text, "<think>", "</think>")
}

/// The leftmost regex match starts at the first opening tag: if no closing tag follows it,
/// none follows any later opening tag either. The lazy group ends at the first closing tag.
fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(
        text[start..start + len]
            .trim_matches(is_py_space)
            .to_string(),
    )
}

/// Python's `str.isspace()` (what both `\s` in a str regex and `str.strip()` remove): Rust's
/// White_Space plus the information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
