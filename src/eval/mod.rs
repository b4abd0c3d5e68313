//! Benchmark evaluation in Video-R1's protocol, independent of the engine that generates.
//!
//! - [`data`]: evaluation files (JSON array or JSON lines), per-item validation.
//! - [`prompt`]: the conversation and media settings for one item; decoding constants.
//! - [`score`]: Video-R1's `reward_fn`, bit for bit; [`metrics`]: WER and ROUGE-L.
//! - [`shard`]: `--shard I/N`, keeping questions about one video together.
//! - [`report`]: result lines and the summary table; [`resume`]: writing and reading results
//!   files (`--resume`), and [`merge`] for shards.
//!
//! A run: [`data::load`] the file, [`shard::select`] its share, skip
//! [`resume::done_ids`], write [`report::ResultLine::from_entry_error`] for malformed items,
//! generate from [`prompt::build`] for the others and write
//! [`report::ResultLine::scored`] (or [`report::ResultLine::failed`]) as each completes with a
//! [`resume::ResultWriter`], then print [`report::Summary::from_lines`]. `frontend::eval` does this
//! with the engine.

pub mod data;
pub mod metrics;
pub mod prompt;
pub mod report;
pub mod resume;
pub mod score;
pub mod shard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use data::{load, Dataset, Entry, EvalItem, ItemError, LoadOptions};
pub use report::{Generation, ResultLine, Summary, Timings};
pub use score::{score, Score};
pub use shard::Shard;

/// Several results files read as one.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Ordered by dataset and item index.
    pub lines: Vec<ResultLine>,
    /// Files whose cut-off last line (a killed run) was left out.
    pub cut_off: Vec<PathBuf>,
}

/// Reads the results files of the shards of a run. The same item in two places is an error
/// naming both.
pub fn merge<P: AsRef<Path>>(paths: &[P]) -> Result<Merged> {
    if paths.is_empty() {
        return Err(Error::flag("--merge", "no results files given"));
    }
    let mut seen: HashMap<(String, String), (PathBuf, usize)> = HashMap::new();
    let mut all = Vec::new();
    let mut cut_off = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let existing = resume::read_results(p)?;
        if existing.dropped_partial {
            cut_off.push(p.to_path_buf());
        }
        for (i, line) in existing.lines.into_iter().enumerate() {
            if let Some((first, j)) = seen.insert(line.key(), (p.to_path_buf(), i + 1)) {
                return Err(Error::file(
                    p,
                    format!(
                        "result {} repeats item {} of {} (already in {}, result {j})",
                        i + 1,
                        line.key().1,
                        line.dataset,
                        first.display()
                    ),
                ));
            }
            all.push(line);
        }
    }
    all.sort_by(|a, b| (&a.dataset, a.index).cmp(&(&b.dataset, b.index)));
    Ok(Merged {
        lines: all,
        cut_off,
    })
}
