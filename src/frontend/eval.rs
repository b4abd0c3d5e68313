//! Running an evaluation file through the engine (`reel eval`).
//!
//! The items of the shard (see [`crate::eval::shard`]), after `--limit`, minus those already in the
//! results file, run in media-group order. Each item is prepared (media decoded, prompt
//! tokenized), generated greedily and scored, and its [`ResultLine`] is written and flushed as
//! it completes; an item whose media or generation fails is written with its error and the run
//! goes on.
//!
//! Generation goes through [`generate_batch`], which takes up to `max_batch` prepared requests
//! and reports each output as it finishes. Today it runs them one at a time through
//! [`Engine::generate`]; an engine that decodes several sequences at once replaces it there
//! without changing the rest.

use std::collections::HashSet;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::sampling::SamplingParams;
use crate::engine::{Engine, Output, Request};
use crate::error::Result;
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

/// Runs prepared requests, calling `done(i, output)` as request `i` finishes. The engine runs
/// them one at a time for now; the outputs may come in any order.
pub fn generate_batch(
    engine: &mut Engine,
    reqs: &[Request],
    done: &mut dyn FnMut(usize, Result<Output>),
) {
    for (i, req) in reqs.iter().enumerate() {
        let out = engine.generate(req, &mut |_| {});
        done(i, out);
    }
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

/// An item ready for the engine.
struct Ready<'a> {
    item: &'a EvalItem,
    entry: &'a Entry,
    req: Request,
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
    for chunk in entries.chunks(opts.max_batch.max(1)) {
        let mut ready = Vec::new();
        for entry in chunk {
            let start = unix_now();
            let prepared = match entry {
                Entry::Error(_) => {
                    let l = ResultLine::from_entry_error(&ds.name, entry).expect("an error entry");
                    finish(writer, &mut progress, &mut lines, l)?;
                    continue;
                }
                Entry::Item(it) => prompt::build(it, &opts.prompt)
                    .and_then(|msgs| engine.model.prepare(&msgs, None, &media))
                    .map(|p| (it, p)),
            };
            match prepared {
                Ok((item, p)) => ready.push(Ready {
                    item,
                    entry,
                    start,
                    req: Request {
                        prompt_tokens: p.prompt_tokens,
                        sampling: SamplingParams::default(),
                        max_new_tokens: opts.max_new_tokens,
                        stop_tokens: stops.clone(),
                        record_logits: false,
                        vision: p.vision,
                        media_decode_s: p.decode_s,
                        preprocess_s: p.preprocess_s,
                    },
                }),
                Err(e) => {
                    let t = Timings {
                        start,
                        end: unix_now(),
                        ..Timings::default()
                    };
                    let l = ResultLine::failed(&ds.name, entry, e.to_string(), Some(t));
                    finish(writer, &mut progress, &mut lines, l)?;
                }
            }
        }
        let reqs: Vec<Request> = ready.iter().map(|r| r.req.clone()).collect();
        let mut write_err = None;
        generate_batch(engine, &reqs, &mut |i, out| {
            if write_err.is_some() {
                return;
            }
            let r = &ready[i];
            let end = unix_now();
            let line = match out {
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
            };
            if let Err(e) = finish(writer, &mut progress, &mut lines, line) {
                write_err = Some(e);
            }
        });
        if let Some(e) = write_err {
            progress.bar.abandon();
            return Err(e);
        }
    }
    progress.bar.finish_and_clear();
    Ok(lines)
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
