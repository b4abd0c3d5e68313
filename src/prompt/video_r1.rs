//! Video-R1's evaluation prompt (`src/eval_bench.py`): the question, then the reasoning
//! instruction, then a per-problem-type answer-format instruction.

use std::str::FromStr;

use super::messages::{ContentItem, Message};
use crate::error::{Error, Result};

/// `{Question}` is replaced by the question. The missing period after "expressions" is in the
/// original and the checkpoints were evaluated with it.
pub const QUESTION_TEMPLATE: &str = "{Question}\nPlease think about this question as if you were a human pondering deeply. Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought expressions It's encouraged to include self-reflection or verification in the reasoning process. Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer between the <answer> and </answer> tags.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    MultipleChoice,
    Numerical,
    Regression,
    Ocr,
    FreeForm,
}

impl ProblemType {
    pub const ALL: [ProblemType; 5] = [
        ProblemType::MultipleChoice,
        ProblemType::Numerical,
        ProblemType::Regression,
        ProblemType::Ocr,
        ProblemType::FreeForm,
    ];

    /// The key Video-R1's data files use in `problem_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::MultipleChoice => "multiple choice",
            ProblemType::Numerical => "numerical",
            ProblemType::Regression => "regression",
            ProblemType::Ocr => "OCR",
            ProblemType::FreeForm => "free-form",
        }
    }

    /// The answer-format instruction appended after the question template (note the leading
    /// space).
    pub fn type_template(self) -> &'static str {
        match self {
            ProblemType::MultipleChoice => " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
            ProblemType::Numerical | ProblemType::Regression => " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
            ProblemType::Ocr => " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
            ProblemType::FreeForm => " Please provide your text answer within the <answer> </answer> tags.",
        }
    }
}

impl FromStr for ProblemType {
    type Err = Error;

    /// Accepts Video-R1's keys ("multiple choice", "OCR", "free-form", ...) case-insensitively,
    /// with spaces, hyphens or underscores, plus the short forms "mc" and "mcq".
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| {
                if c == '-' || c == '_' {
                    ' '
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Ok(match norm.as_str() {
            "multiple choice" | "mc" | "mcq" => ProblemType::MultipleChoice,
            "numerical" | "numeric" => ProblemType::Numerical,
            "regression" => ProblemType::Regression,
            "ocr" => ProblemType::Ocr,
            "free form" | "freeform" => ProblemType::FreeForm,
            _ => {
                return Err(Error::Prompt(format!(
                    "unknown problem type {s:?} (expected multiple-choice, numerical, regression, ocr or free-form)"
                )))
            }
        })
    }
}

impl std::fmt::Display for ProblemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user text for one Video-R1 question. Multiple choice appends
/// `"Options:\n"` and each option followed by a newline directly to the problem (no separator,
/// as in the original); other types use the problem alone.
pub fn render_question(problem: &str, kind: ProblemType, options: &[String]) -> Result<String> {
    let question = match kind {
        ProblemType::MultipleChoice => {
            if options.is_empty() {
                return Err(Error::Prompt(
                    "a multiple-choice question needs options".into(),
                ));
            }
            let mut q = format!("{problem}Options:\n");
            for opt in options {
                q.push_str(opt);
                q.push('\n');
            }
            q
        }
        _ if !options.is_empty() => {
            return Err(Error::Prompt(format!(
                "options were given for a {kind} question; only multiple choice takes options"
            )))
        }
        _ => problem.to_string(),
    };
    Ok(QUESTION_TEMPLATE.replace("{Question}", &question) + kind.type_template())
}

/// The evaluation conversation: one user message with the vision item first, then the text.
/// No system message: the chat template adds the default one.
pub fn eval_messages(vision: ContentItem, text: String) -> Vec<Message> {
    vec![Message::new("user", vec![vision, ContentItem::Text(text)])]
}
