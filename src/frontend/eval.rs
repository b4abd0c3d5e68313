//! Running an evaluation file through the engine (`reel eval`).
//!
//! The items of the shard (see [`crate::eval::shard`]), after `--limit`, minus those already in the
//! results file, run in media-group order. Each item is prepared (media decoded, prompt
//! tokenized), generated greedily and scored, and its [`ResultLine`] is written and flushed as
//! it completes; an item whose media or generation fails is written with its error and the run
//! goes on.
//!
//! Up to `max_batch` items are in the engine at once: each is prepared when a place frees up
//! and submitted to the engine's scheduler, which decodes every running sequence in one batched
//! step; an item's line is written as soon as its sequence finishes. Greedy f32 results do not
//! depend on the batch (the CPU backend's batch-invariant matmuls), so `--max-batch` changes
//! the speed, not the records.

use std::collections::{HashMap, HashSet};

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::sampling::SamplingParams;
use crate::engine::{Engine, Event, Output, Request, RequestId};
use crate::error::{Error, Result};
use crate::eval::data::{Dataset, Entry, EvalItem};
use crate::eval::prompt::{self, PromptOptions};
use crate::eval::report::{unix_now, Generation, ResultLine, Timings};
use crate::eval::resume::{entry_key, ResultWriter};
use crate::eval::shard::{group_order, select, Shard};
use crate::model::inputs::MediaOptions;

/// What a run does besides the protocol's fixed settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub prompt: PromptOptions,
    /// Requests handed to the engine at once (`--max-batch`).
    pub max_batch: usize,
    /// Most generated tokens per item (the protocol's 1024 by default).
    pub max_new_tokens: usize,
    /// Only the first `limit` items of the shard (`--limit`).
    pub limit: Option<usize>,
    pub shard: Shard,
    /// Write each item's prompt token ids (vision pads expanded) into its line.
    pub record_prompt_ids: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            prompt: PromptOptions::default(),
            max_batch: 1,
            max_new_tokens: prompt::MAX_NEW_TOKENS,
            limit: None,
            shard: Shard::ALL,
            record_prompt_ids: false,
        }
    }
}

/// The entries a run works on, in the order it runs them: the shard's entries in file order,
/// the first `limit` of them, without those in `done` (keys of [`ResultLine::key`]), grouped
/// by media.
pub fn plan<'a>(
    ds: &'a Dataset,
    shard: Shard,
    limit: Option<usize>,
    done: &HashSet<(String, String)>,
) -> Vec<&'a Entry> {
    let mut sel = select(&ds.entries, shard);
    if let Some(k) = limit {
        sel.truncate(k);
    }
    sel.retain(|e| !done.contains(&entry_key(&ds.name, e)));
    group_order(&sel)
}

/// The stop ids of the protocol: `<|im_end|>` and the checkpoint's EOS list.
pub fn stop_tokens(engine: &Engine) -> Vec<u32> {
    let mut stops = engine.model.eos_tokens();
    if let Some(id) = engine.tokenizer().try_token_id(prompt::STOP) {
        if !stops.contains(&id) {
            stops.push(id);
        }
    }
    stops
}

/// Counters for the progress bar.
struct Progress {
    bar: ProgressBar,
    scored: f64,
    acc_items: usize,
    tokens: usize,
    t0: std::time::Instant,
}

impl Progress {
    fn new(total: usize, previous: &[ResultLine]) -> Progress {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} items | {msg} | {elapsed_precise} ETA {eta}",
            )
            .expect("a valid template"),
        );
        let mut p = Progress {
            bar,
            scored: 0.0,
            acc_items: 0,
            tokens: 0,
            t0: std::time::Instant::now(),
        };
        for l in previous {
            p.count(l);
        }
        p.tokens = 0;
        p.refresh();
        p
    }

    fn count(&mut self, l: &ResultLine) {
        if l.problem_type.as_deref() != Some("regression") {
            self.scored += l.score;
            self.acc_items += 1;
        }
        self.tokens += l.generated_tokens;
    }

    fn refresh(&self) {
        let acc = if self.acc_items > 0 {
            format!("acc {:.1}%", 100.0 * self.scored / self.acc_items as f64)
        } else {
            "acc -".to_string()
        };
        let rate = self.tokens as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{acc} | {rate:.1} tok/s"));
    }

    fn done(&mut self, l: &ResultLine) {
        self.count(l);
        self.bar.inc(1);
        self.refresh();
    }
}

/// An item in the engine.
struct Ready<'a> {
    item: &'a EvalItem,
    entry: &'a Entry,
    start: f64,
}

/// Runs `entries` (from [`plan`]) and appends a line per entry to `writer`; `previous` are the
/// lines already in the file (for the accuracy shown while running). Returns the new lines.
/// Only a failure to write the results file stops the run.
pub fn run(
    engine: &mut Engine,
    ds: &Dataset,
    entries: &[&Entry],
    opts: &RunOptions,
    writer: &mut ResultWriter,
    previous: &[ResultLine],
) -> Result<Vec<ResultLine>> {
    let media = MediaOptions::default();
    let stops = stop_tokens(engine);
    let mut progress = Progress::new(entries.len(), previous);
    let mut lines = Vec::with_capacity(entries.len());
    let mut next = entries.iter();
    let mut running: HashMap<RequestId, Ready> = HashMap::new();
    let result = (|| -> Result<()> {
        loop {
            // Fill the free places; items that fail before generation are written at once.
            while running.len() < opts.max_batch.max(1) {
                let Some(entry) = next.next() else { break };
                let start = unix_now();
                let failed = |e: String| {
                    let t = Timings {
                        start,
                        end: unix_now(),
                        ..Timings::default()
                    };
                    ResultLine::failed(&ds.name, entry, e, Some(t))
                };
                let it = match entry {
                    Entry::Error(_) => {
                        let l =
                            ResultLine::from_entry_error(&ds.name, entry).expect("an error entry");
                        finish(writer, &mut progress, &mut lines, l)?;
                        continue;
                    }
                    Entry::Item(it) => it,
                };
                let prepared = prompt::build(it, &opts.prompt)
                    .and_then(|msgs| engine.model.prepare(&msgs, None, &media));
                let p = match prepared {
                    Ok(p) => p,
                    Err(e) => {
                        finish(writer, &mut progress, &mut lines, failed(e.to_string()))?;
                        continue;
                    }
                };
                let req = Request {
                    prompt_tokens: p.prompt_tokens,
                    sampling: SamplingParams::default(),
                    max_new_tokens: opts.max_new_tokens,
                    stop_tokens: stops.clone(),
                    record_logits: false,
                    vision: p.vision,
                    media_decode_s: p.decode_s,
                    preprocess_s: p.preprocess_s,
                };
                match engine.submit(req) {
                    Ok(id) => {
                        running.insert(
                            id,
                            Ready {
                                item: it,
                                entry,
                                start,
                            },
                        );
                    }
                    Err(e) => finish(writer, &mut progress, &mut lines, failed(e.to_string()))?,
                }
            }
            if running.is_empty() {
                return Ok(());
            }
            let events = match engine.step() {
                Ok(ev) => ev,
                // A step that fails takes every sequence in it down; the run goes on with the
                // next items.
                Err(e) => {
                    let msg = e.to_string();
                    for (id, r) in std::mem::take(&mut running) {
                        engine.cancel(id);
                        let l = line_of(ds, opts, &r, Err(Error::Other(msg.clone())));
                        finish(writer, &mut progress, &mut lines, l)?;
                    }
                    // Drain the cancelled sequences' events.
                    while engine.has_work() {
                        engine.step()?;
                    }
                    continue;
                }
            };
            for ev in events {
                let ev_id = ev.id();
                let out = match ev {
                    Event::Token { .. } => continue,
                    Event::Finished { output, .. } => Ok(*output),
                    Event::Failed { error, .. } => Err(error),
                };
                if let Some(r) = running.remove(&ev_id) {
                    let l = line_of(ds, opts, &r, out);
                    finish(writer, &mut progress, &mut lines, l)?;
                }
            }
        }
    })();
    if let Err(e) = result {
        progress.bar.abandon();
        return Err(e);
    }
    progress.bar.finish_and_clear();
    Ok(lines)
}

/// The result line of a finished (or failed) generation.
fn line_of(ds: &Dataset, opts: &RunOptions, r: &Ready, out: Result<Output>) -> ResultLine {
    let end = unix_now();
    match out {
        Ok(o) => {
            let t = &o.timings;
            let mut l = ResultLine::scored(
                &ds.name,
                r.item,
                Generation {
                    text: o.text.clone(),
                    prompt_tokens: o.prompt_tokens.len(),
                    generated_tokens: o.generated_tokens.len(),
                    timings: Timings {
                        start: r.start,
                        end,
                        media_s: Some(t.media_decode_s + t.preprocess_s),
                        // The engine's prefill time includes the vision tower.
                        prefill_s: Some(t.prefill_s),
                        decode_s: Some(t.decode_s),
                    },
                },
            );
            if opts.record_prompt_ids {
                l.prompt_ids = Some(o.prompt_tokens);
            }
            l
        }
        Err(e) => {
            let t = Timings {
                start: r.start,
                end,
                ..Timings::default()
            };
            ResultLine::failed(&ds.name, r.entry, e.to_string(), Some(t))
        }
    }
}

fn finish(
    writer: &mut ResultWriter,
    progress: &mut Progress,
    lines: &mut Vec<ResultLine>,
    line: ResultLine,
) -> Result<()> {
    writer.write(&line)?;
    progress.done(&line);
    lines.push(line);
    Ok(())
}
