//! Results: one JSON line per item ([`ResultLine`]) and the summary over them ([`Summary`]).
//!
//! The summary has a row per data source (an item without `data_source` is filed under its
//! data file's name) and problem type, a row per data source over all
//! types, and one over everything. Video-R1's columns are `mean_acc` (mean score of the
//! non-regression items) and `mean_mra` (mean score of the regression items). As in the
//! reference, where a failed batch is scored from `<answer>error</answer>`, an item that failed
//! scores 0 and stays in those means; `errors` counts them. The means are computed in f64; the
//! reference prints torch's float32 mean, which can differ from it in the 7th digit. The extra
//! columns are the mean word error rate of the OCR items and the mean ROUGE-L F1 of the
//! free-form items that ran. Wall time is the length of the union of the items' [start, end]
//! intervals (so parallel items, shards run side by side and gaps between resumed runs are
//! counted once or not at all), and tokens/s is generated tokens over that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data::{item_key, Entry, EvalItem};
use super::score::{extract_answer, score_item};
use crate::prompt::video_r1::ProblemType;

/// Timestamps and phase times of one item, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Unix time when work on the item started.
    pub start: f64,
    /// Unix time when its last token was generated.
    pub end: f64,
    #[serde(default)]
    pub media_s: Option<f64>,
    #[serde(default)]
    pub prefill_s: Option<f64>,
    #[serde(default)]
    pub decode_s: Option<f64>,
}

/// The current Unix time in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the engine gives back for one item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub timings: Timings,
}

/// One line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// File name of the evaluation file the item came from.
    pub dataset: String,
    /// Position of the item in that file, from 0.
    pub index: usize,
    /// As in the file (`null` when it had none).
    pub problem_id: Value,
    #[serde(default)]
    pub data_source: Option<String>,
    /// As in the file (`null` when it had none).
    #[serde(default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub data_type: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub generated_tokens: usize,
    /// The generated text.
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub think: String,
    /// The scored answer: the `<answer>` content, else the whole text.
    #[serde(default)]
    pub answer: String,
    #[serde(default)]
    pub ground_truth: String,
    /// Video-R1's reward (0 for a failed item).
    pub score: f64,
    /// `score == 1`, as the reference's `correct`.
    #[serde(default)]
    pub correct: bool,
    #[serde(default)]
    pub wer: Option<f64>,
    #[serde(default)]
    pub rouge_l: Option<f64>,
    /// Why the item failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub timings: Option<Timings>,
    /// The item's fields outside the protocol, copied from the file.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// The prompt's token ids, vision pads expanded (only with `--prompt-ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_ids: Option<Vec<u32>>,
}

impl ResultLine {
    /// The line for an item that ran.
    pub fn scored(dataset: &str, item: &EvalItem, gen: Generation) -> ResultLine {
        let s = score_item(item, &gen.text);
        ResultLine {
            prompt_tokens: gen.prompt_tokens,
            generated_tokens: gen.generated_tokens,
            think: s.think,
            answer: s.prediction,
            ground_truth: s.ground_truth,
            score: s.reward,
            correct: s.reward == 1.0,
            wer: s.wer,
            rouge_l: s.rouge_l,
            timings: Some(gen.timings),
            text: gen.text,
            ..Self::base(dataset, &Entry::Item(item.clone()))
        }
    }

    /// The line for an entry that could not be run: a malformed item, or an item whose media
    /// or generation failed (`timings` then says when).
    pub fn failed(
        dataset: &str,
        entry: &Entry,
        error: impl Into<String>,
        timings: Option<Timings>,
    ) -> ResultLine {
        ResultLine {
            error: Some(error.into()),
            timings,
            ..Self::base(dataset, entry)
        }
    }

    /// The line for a malformed item as loading recorded it.
    pub fn from_entry_error(dataset: &str, entry: &Entry) -> Option<ResultLine> {
        match entry {
            Entry::Error(e) => Some(Self::failed(dataset, entry, e.error.clone(), None)),
            Entry::Item(_) => None,
        }
    }

    fn base(dataset: &str, entry: &Entry) -> ResultLine {
        let mut line = ResultLine {
            dataset: dataset.to_string(),
            index: entry.index(),
            problem_id: entry.problem_id().clone(),
            data_source: None,
            problem_type: None,
            data_type: None,
            path: None,
            prompt_tokens: 0,
            generated_tokens: 0,
            text: String::new(),
            think: String::new(),
            answer: String::new(),
            ground_truth: String::new(),
            score: 0.0,
            correct: false,
            wer: None,
            rouge_l: None,
            error: None,
            timings: None,
            extra: Map::new(),
            prompt_ids: None,
        };
        match entry {
            Entry::Item(it) => {
                line.data_source = it.data_source.clone();
                line.problem_type = Some(it.problem_type.as_str().to_string());
                line.data_type = Some(it.data_type.as_str().to_string());
                line.path = Some(it.path.clone());
                line.ground_truth = extract_answer(&it.solution);
                line.extra = it.extra.clone();
            }
            Entry::Error(e) => {
                line.data_source = e.data_source.clone();
                line.problem_type = e.problem_type.clone();
                line.data_type = e.data_type.clone();
                line.path = e.path.clone();
                line.extra = e.extra.clone();
            }
        }
        line
    }

    /// Identifies the item across results files: (dataset, id within it).
    pub fn key(&self) -> (String, String) {
        (self.dataset.clone(), item_key(&self.problem_id, self.index))
    }

    /// The line as written to a results file, with its newline.
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a result line serializes");
        s.push('\n');
        s
    }

    /// The data source the summary files the line under: `data_source`, else the dataset.
    pub fn source(&self) -> &str {
        self.data_source.as_deref().unwrap_or(&self.dataset)
    }
}

/// Aggregates of one group of result lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub data_source: String,
    /// A problem type, or `"all"`.
    pub problem_type: String,
    pub count: usize,
    /// Mean score over the non-regression items (Video-R1's `mean_acc`).
    pub mean_acc: Option<f64>,
    pub acc_count: usize,
    /// Mean score over the regression items (Video-R1's `mean_mra`).
    pub mean_mra: Option<f64>,
    pub mra_count: usize,
    /// Mean word error rate over the OCR items that ran.
    pub wer: Option<f64>,
    pub wer_count: usize,
    /// Mean ROUGE-L F1 over the free-form items that ran.
    pub rouge_l: Option<f64>,
    pub rouge_l_count: usize,
    pub errors: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: Option<f64>,
}

impl Stats {
    fn of(data_source: &str, problem_type: &str, lines: &[&ResultLine]) -> Stats {
        let mean = |v: Vec<f64>| -> (Option<f64>, usize) {
            let n = v.len();
            ((n > 0).then(|| v.iter().sum::<f64>() / n as f64), n)
        };
        let is_regression = |l: &&&ResultLine| l.problem_type.as_deref() == Some("regression");
        let (mean_acc, acc_count) = mean(
            lines
                .iter()
                .filter(|l| !is_regression(l))
                .map(|l| l.score)
                .collect(),
        );
        let (mean_mra, mra_count) = mean(
            lines
                .iter()
                .filter(is_regression)
                .map(|l| l.score)
                .collect(),
        );
        let (wer, wer_count) = mean(lines.iter().filter_map(|l| l.wer).collect());
        let (rouge_l, rouge_l_count) = mean(lines.iter().filter_map(|l| l.rouge_l).collect());
        let generated_tokens = lines.iter().map(|l| l.generated_tokens).sum();
        let wall_s = union_length(
            lines
                .iter()
                .filter_map(|l| l.timings)
                .map(|t| (t.start, t.end)),
        );
        Stats {
            data_source: data_source.to_string(),
            problem_type: problem_type.to_string(),
            count: lines.len(),
            mean_acc,
            acc_count,
            mean_mra,
            mra_count,
            wer,
            wer_count,
            rouge_l,
            rouge_l_count,
            errors: lines.iter().filter(|l| l.error.is_some()).count(),
            prompt_tokens: lines.iter().map(|l| l.prompt_tokens).sum(),
            generated_tokens,
            wall_s,
            tokens_per_s: (wall_s > 0.0).then(|| generated_tokens as f64 / wall_s),
        }
    }
}

/// Total length of the union of `[start, end]` intervals (reversed ones count as empty).
pub fn union_length(intervals: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut v: Vec<(f64, f64)> = intervals.filter(|(s, e)| e > s).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (s, e) in v {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// The summary of a set of result lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// One row per (data source, problem type).
    pub groups: Vec<Stats>,
    /// One row per data source, over all its types.
    pub sources: Vec<Stats>,
    pub total: Stats,
}

/// Problem types in the protocol's order, then any other names alphabetically.
fn type_rank(t: &str) -> (usize, String) {
    let pos = ProblemType::ALL
        .iter()
        .position(|p| p.as_str() == t)
        .unwrap_or(ProblemType::ALL.len());
    (pos, t.to_string())
}

impl Summary {
    pub fn from_lines(lines: &[ResultLine]) -> Summary {
        let mut by_source: BTreeMap<&str, Vec<&ResultLine>> = BTreeMap::new();
        for l in lines {
            by_source.entry(l.source()).or_default().push(l);
        }
        let mut groups = Vec::new();
        let mut sources = Vec::new();
        for (source, ls) in &by_source {
            let mut by_type: BTreeMap<(usize, String), Vec<&ResultLine>> = BTreeMap::new();
            for l in ls {
                by_type
                    .entry(type_rank(l.problem_type.as_deref().unwrap_or("?")))
                    .or_default()
                    .push(l);
            }
            for ((_, t), tl) in &by_type {
                groups.push(Stats::of(source, t, tl));
            }
            sources.push(Stats::of(source, "all", ls));
        }
        let all: Vec<&ResultLine> = lines.iter().collect();
        Summary {
            groups,
            sources,
            total: Stats::of("all", "all", &all),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a summary serializes")
    }

    /// A plain-text table: the rows of each source, then its total, then the grand total.
    /// Scores are percentages.
    pub fn render_table(&self) -> String {
        let header = [
            "data source",
            "problem type",
            "n",
            "acc %",
            "mra %",
            "wer %",
            "rouge-l %",
            "errors",
            "gen tokens",
            "tok/s",
            "wall s",
        ];
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}", x * 100.0));
        let row = |s: &Stats| -> Vec<String> {
            vec![
                s.data_source.clone(),
                s.problem_type.clone(),
                s.count.to_string(),
                pct(s.mean_acc),
                pct(s.mean_mra),
                pct(s.wer),
                pct(s.rouge_l),
                s.errors.to_string(),
                s.generated_tokens.to_string(),
                s.tokens_per_s
                    .map_or("-".to_string(), |x| format!("{x:.1}")),
                format!("{:.1}", s.wall_s),
            ]
        };
        let mut rows: Vec<Option<Vec<String>>> = Vec::new();
        for src in &self.sources {
            for g in self
                .groups
                .iter()
                .filter(|g| g.data_source == src.data_source)
            {
                rows.push(Some(row(g)));
            }
            rows.push(Some(row(src)));
            rows.push(None);
        }
        rows.push(Some(row(&self.total)));
        let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in rows.iter().flatten() {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let fmt = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                let pad = w - c.chars().count();
                if i < 2 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                s.push_str(if i + 1 < cells.len() { "  " } else { "\n" });
            }
            s
        };
        let rule: String = width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
            + "\n";
        let mut out = fmt(&header.map(String::from));
        out.push_str(&rule);
        for r in &rows {
            match r {
                Some(cells) => out.push_str(&fmt(cells)),
                None => out.push_str(&rule),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        source: Option<&str>,
        ptype: &str,
        score: f64,
        wer: Option<f64>,
        err: bool,
    ) -> ResultLine {
        ResultLine {
            dataset: "d.json".into(),
            index: 0,
            problem_id: Value::from(1),
            data_source: source.map(String::from),
            problem_type: Some(ptype.into()),
            data_type: None,
            path: None,
            prompt_tokens: 5,
            generated_tokens: 3,
            text: String::new(),
            think: String::new(),
            answer: String::new(),
            ground_truth: String::new(),
            score,
            correct: score == 1.0,
            wer,
            rouge_l: None,
            error: err.then(|| "boom".to_string()),
            timings: None,
            extra: Map::new(),
            prompt_ids: None,
        }
    }

    #[test]
    fn errors_count_as_zero_in_the_means_but_not_in_wer() {
        let lines = [
            line(Some("s"), "multiple choice", 1.0, None, false),
            line(Some("s"), "multiple choice", 0.0, None, true),
            line(Some("s"), "regression", 0.5, None, false),
            line(Some("s"), "OCR", 0.0, Some(0.25), false),
            line(Some("s"), "OCR", 0.0, None, true),
            line(None, "free-form", 0.0, None, false),
        ];
        let s = Summary::from_lines(&lines);
        let names: Vec<(&str, &str)> = s
            .groups
            .iter()
            .map(|g| (g.data_source.as_str(), g.problem_type.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("d.json", "free-form"),
                ("s", "multiple choice"),
                ("s", "regression"),
                ("s", "OCR")
            ]
        );
        let src = &s.sources[1];
        assert_eq!(
            (src.count, src.errors, src.acc_count, src.mra_count),
            (5, 2, 4, 1)
        );
        assert_eq!(src.mean_acc, Some(0.25));
        assert_eq!(src.mean_mra, Some(0.5));
        assert_eq!((src.wer, src.wer_count), (Some(0.25), 1));
        assert_eq!(s.total.generated_tokens, 18);
        assert_eq!((s.total.wall_s, s.total.tokens_per_s), (0.0, None));
        let table = s.render_table();
        let rows: Vec<&str> = table.lines().collect();
        // header, rule, 1 + 1 rows and a rule for d.json, 3 + 1 rows and a rule for s, total.
        assert_eq!(rows.len(), 2 + 3 + 5 + 1, "{table}");
        assert!(rows[0].starts_with("data source") && rows[0].ends_with("wall s"));
        assert!(rows.last().unwrap().starts_with("all"), "{table}");
        assert!(table.contains("25.0"), "{table}");
    }
}
