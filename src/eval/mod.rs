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
//! [`resume::ResultWriter`], then print [`report::Summary::from_lines`].

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

/// The lines of several results files (the shards of a run), ordered by dataset and item
/// index. A cut-off last line (a killed shard) is left out. The same item in two places is an
/// error naming both.
pub fn merge<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<ResultLine>> {
    if paths.is_empty() {
        return Err(Error::flag("--merge", "no results files given"));
    }
    let mut seen: HashMap<(String, String), (PathBuf, usize)> = HashMap::new();
    let mut all = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let existing = resume::read_results(p)?;
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
    Ok(all)
}
