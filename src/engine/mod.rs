//! The engine: many sequences over one paged KV pool, each with its own prompt, media,
//! sampling, seed, stop rule and token stream.
//!
//! Library use: [`Engine::submit`] queues a [`Request`] and returns its id; each
//! [`Engine::step`] runs one batched forward pass and returns the [`Event`]s it produced (a
//! sampled token, a finished output, a failure), so a caller streams tokens by driving `step`
//! until [`Engine::has_work`] is false; [`Engine::cancel`] ends a request early.
//! [`Engine::generate`] is the batch of one that `reel run` uses: submit, then step until it
//! finishes.
//!
//! A step (see [`Engine::step`]):
//! 1. admits waiting requests in order while fewer than `max_batch` run and the pool has room
//!    for each one's prompt and token budget (pages a prefix-cache hit shares are not counted
//!    again; cached pages nobody uses are evicted when needed); media are encoded here (or come
//!    from the vision-embedding cache);
//! 2. builds one forward pass: a row for every decoding sequence, and a chunk of up to
//!    `prefill_chunk` prompt rows of the oldest sequence still in prefill, so a long prompt is
//!    interleaved with the decoding sequences instead of stalling them;
//! 3. computes logits for the rows that need a token, samples them on the device with each
//!    row's own arguments (on the host for rows that need the logits: a repetition penalty,
//!    recorded logits), and reads the token ids back;
//! 4. emits the tokens, retires sequences at a stop id, their budget or a cancel, and gives
//!    their full pages to the prefix cache.
//!
//! Executors (planned graphs with their arenas) are kept per shape (rows, logit rows); a
//! decode-only step of B sequences always has the shape (B, B), so on CUDA it is captured once
//! as a graph per batch size and replayed (the page tables and sequence lengths live in
//! device buffers the kernels read).
//!
//! Exactness: every op's result for a row depends only on that row (the CPU matmul gives the
//! same bits for a row whatever M is, attention reads only the row's own sequence), so on the
//! CPU a sequence's tokens and logits do not depend on the batch it runs in, on when it joined,
//! on the prefill chunking, or on whether its prefix came from the cache.

pub mod bench;
pub mod prefix;
pub mod sampling;

use crate::backend::{Backend, BufId, PagedKv, PendingToken, SampleArgs, TRef};
use crate::error::{Error, Result};
use crate::graph::Executor;
use crate::kv::{pages_for_ctx, KvCache, KvPool, DEFAULT_PAGE_SIZE};
use crate::model::config::{Config, GenerationConfig};
use crate::model::inputs::VisionInput;
use crate::model::text::{self, TextPass};
use crate::model::{Model, PromptLayout, TextModel, VisionModel};
use crate::prompt::Tokenizer;
use crate::tensor::{DType, Shape};
use prefix::{Key, PrefixCache, VisionCache};
use sampling::{token_or_error, Sampler, SamplingParams};
use std::collections::VecDeque;
use std::time::Instant;

pub use crate::backend::Device;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: Device,
    /// Activation (and KV cache) type: BF16 follows the reference's bf16 run, F32 its f32 run.
    pub act: DType,
    /// KV pool capacity in tokens, shared by every sequence in flight.
    pub ctx: usize,
    pub page_size: usize,
    /// Most sequences in one step.
    pub max_batch: usize,
    /// Most prompt tokens one step prefills (0: the whole prompt at once).
    pub prefill_chunk: usize,
    /// Reuse KV pages of equal prompt prefixes and cache vision embeddings.
    pub prefix_cache: bool,
    /// Byte budget of the vision-embedding cache.
    pub vision_cache_bytes: usize,
}

impl EngineOptions {
    /// Each option's rule, in one place (the CLI reports a violation under its flag).
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.act, DType::F32 | DType::BF16) {
            return Err(Error::setting(
                "act",
                format!("activations must be f32 or bf16, not {}", self.act),
            ));
        }
        if self.ctx == 0 {
            return Err(Error::setting("ctx", "the KV cache needs at least 1 token"));
        }
        if self.page_size == 0 {
            return Err(Error::setting("page_size", "must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(Error::setting("max_batch", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: Device::Auto,
            act: DType::BF16,
            ctx: 8192,
            page_size: DEFAULT_PAGE_SIZE,
            max_batch: 8,
            prefill_chunk: 2048,
            prefix_cache: true,
            vision_cache_bytes: 1 << 30,
        }
    }
}

/// Wall-clock time of each stage, in seconds, and what the caches saved.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub load_s: f64,
    /// Reading/decoding images and videos, frame sampling and resizing.
    pub media_decode_s: f64,
    /// Normalizing, patchifying, prompt rendering and tokenization.
    pub preprocess_s: f64,
    /// Waiting for room in the batch and the KV pool.
    pub queue_s: f64,
    /// The vision tower (0 when every item came from a cache).
    pub vision_s: f64,
    /// From admission to the end of the prompt's last prefill chunk (vision included).
    pub prefill_s: f64,
    /// From admission to the first sampled token.
    pub ttft_s: f64,
    pub decode_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Prompt tokens whose KV came from the prefix cache, and those computed.
    pub cached_tokens: usize,
    pub prefilled_tokens: usize,
    /// Media items whose embeddings came from the vision cache or were not needed (covered
    /// by the prefix hit), of all items.
    pub media_reused: usize,
    pub media_items: usize,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

/// One generation's inputs, once the prompt is tokenized.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Stop ids (the checkpoint's EOS list).
    pub stop_tokens: Vec<u32>,
    /// Keep every step's logits (for --logits-out).
    pub record_logits: bool,
    /// Images and videos in prompt order; their pads in `prompt_tokens` are already expanded.
    pub vision: Vec<VisionInput>,
    /// Media decode and preprocess times, reported in the timings.
    pub media_decode_s: f64,
    pub preprocess_s: f64,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub prompt_tokens: Vec<u32>,
    pub generated_tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Logits at the last prompt position.
    pub logits_last: Vec<f32>,
    /// Logits that chose each generated token ([n_generated][vocab]); empty unless recorded.
    pub step_logits: Vec<Vec<f32>>,
    pub timings: Timings,
}

/// A request's id, unique within its engine.
pub type RequestId = u64;

/// What a step produced for a request.
#[derive(Debug)]
pub enum Event {
    /// A sampled token (stop tokens included), in order.
    Token { id: RequestId, token: u32 },
    /// The request is done; no more events for it.
    Finished { id: RequestId, output: Box<Output> },
    /// The request failed (the others go on); no more events for it.
    Failed { id: RequestId, error: Error },
}

impl Event {
    pub fn id(&self) -> RequestId {
        match self {
            Event::Token { id, .. } | Event::Finished { id, .. } | Event::Failed { id, .. } => *id,
        }
    }
}

/// Layout of the small device buffer of on-device sampling: the arguments the sampler reads,
/// the sampled token, and a zero index (the gather that copies the token into the next step's
/// input ids).
const DEV_ARGS: usize = 0;
const DEV_TOKEN: usize = 32;
const DEV_ZERO: usize = 48;
const DEV_BYTES: usize = 64;

/// The language model on a backend with a KV cache of its own for one sequence: the direct
/// interface to single passes (layer taps for the golden tests, the benchmarks). The engine's
/// many-sequence scheduling uses the model through [`TextRunner::model`] and its own pool.
pub struct TextRunner {
    pub act: DType,
    model: Box<dyn TextModel>,
    /// The single-sequence cache, allocated on first use when the runner was made lazy.
    kv: Option<KvCache>,
    ctx: usize,
    page_size: usize,
    decode: Option<Executor>,
    /// The on-device sampling buffer (DEV_*), allocated on first use.
    dev: Option<BufId>,
}

impl TextRunner {
    pub fn new(
        be: &mut dyn Backend,
        model: Box<dyn TextModel>,
        act: DType,
        ctx: usize,
        page_size: usize,
    ) -> Result<TextRunner> {
        let mut r = TextRunner::lazy(model, act, ctx, page_size);
        r.cache(be)?;
        Ok(r)
    }

    /// A runner whose KV cache is allocated on first use.
    pub fn lazy(model: Box<dyn TextModel>, act: DType, ctx: usize, page_size: usize) -> TextRunner {
        TextRunner {
            act,
            model,
            kv: None,
            ctx,
            page_size,
            decode: None,
            dev: None,
        }
    }

    /// The language model.
    pub fn model(&self) -> &dyn TextModel {
        self.model.as_ref()
    }

    fn cache(&mut self, be: &mut dyn Backend) -> Result<&mut KvCache> {
        if self.kv.is_none() {
            let spec = self.model.kv_spec(self.act);
            self.kv = Some(KvCache::new(be, spec, self.ctx, self.page_size)?);
        }
        Ok(self.kv.as_mut().expect("allocated above"))
    }

    /// Drops cached tokens past `len`.
    pub fn truncate(&mut self, be: &mut dyn Backend, len: usize) -> Result<()> {
        self.cache(be)?.truncate(be, len)
    }

    /// The decode-step executor (one token, one logit row), built on first use.
    pub fn decode_executor(&mut self, be: &mut dyn Backend) -> Result<&mut Executor> {
        if self.decode.is_none() {
            let pass = TextPass {
                tokens: 1,
                logit_rows: 1,
                vision: None,
                taps: false,
            };
            let g = self.model.build(&pass, self.act);
            self.decode = Some(Executor::new(be, g)?);
        }
        Ok(self.decode.as_mut().expect("built above"))
    }

    /// Starts one decode step that samples on the device: appends a token to the cache, runs
    /// the step (replaying its captured graph where the backend has one), samples with `args`
    /// into a device buffer, copies that token into the step's input ids for the next step,
    /// and starts the 4-byte copy of the token to the host, without waiting for any of it.
    /// `tok` is the input token, or `None` when the previous call's sample is the input.
    pub fn decode_start(
        &mut self,
        be: &mut dyn Backend,
        tok: Option<u32>,
        pos: &[i32],
        args: &SampleArgs,
    ) -> Result<PendingToken> {
        self.decode_executor(be)?;
        if self.dev.is_none() {
            // alloc zeroes it, which is the zero index at DEV_ZERO.
            self.dev = Some(be.alloc(DEV_BYTES)?);
        }
        let dev = self.dev.expect("allocated above");
        let paged = self.cache(be)?.begin(be, 1)?;
        let exec = self.decode.as_mut().expect("built above");
        let res = (|| {
            if let Some(t) = tok {
                exec.write_i32(be, text::IN_IDS, &[t as i32])?;
            }
            exec.write_i32(be, text::IN_POS, pos)?;
            exec.write_i32(be, text::IN_LOGIT_ROWS, &[0])?;
            be.write(dev, DEV_ARGS, &args.to_bytes())?;
            let logits = exec.value(text::OUT_LOGITS)?;
            let ids = exec.value(text::IN_IDS)?;
            let i32_at =
                |off: usize, dims: &[usize]| TRef::new(dev, off, DType::I32, Shape::new(dims));
            let a = i32_at(DEV_ARGS, &[SampleArgs::WORDS]);
            let token = i32_at(DEV_TOKEN, &[1, 1]);
            let zero = i32_at(DEV_ZERO, &[1]);
            let ids = TRef::new(ids.buf, ids.offset, DType::I32, Shape::new(&[1, 1]));
            exec.run_step(
                be,
                Some(&paged),
                &[a, token, zero, ids, logits],
                &mut |be| {
                    be.sample(logits, a, token)?;
                    be.gather_rows(token, zero, ids)
                },
            )?;
            be.read_token_start(token)
        })();
        if res.is_err() {
            let kv = self.cache(be)?;
            let len = kv.kv_len() - 1;
            kv.truncate(be, len)?;
        }
        res
    }

    /// Tokens the cache holds.
    pub fn kv_len(&self) -> usize {
        self.kv.as_ref().map_or(0, |k| k.kv_len())
    }

    /// Empties the cache for a new prompt.
    pub fn reset(&mut self, be: &mut dyn Backend) -> Result<()> {
        self.cache(be)?.reset(be)
    }

    /// Benchmark helper only: counts `n` more tokens as cached without computing them (their
    /// K/V entries are whatever the pool holds), so decode at a long context can be timed
    /// without paying for a prefill. Decode cost does not depend on the cached values.
    pub fn advance(&mut self, be: &mut dyn Backend, n: usize) -> Result<()> {
        self.cache(be)?.begin(be, n).map(|_| ())
    }

    /// Bytes of the KV pool (every page, used or not; 0 before it is allocated).
    pub fn kv_pool_bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |k| k.layout().total_bytes())
    }

    /// Runs one pass of `ids` at `pos` ([3][T] flattened row-major), appending to the cache, and
    /// returns the logits of the last row. `vision` holds merged vision embeddings and the
    /// sequence rows they replace.
    pub fn forward(
        &mut self,
        be: &mut dyn Backend,
        ids: &[u32],
        pos: &[i32],
        vision: Option<(TRef, &[i32])>,
    ) -> Result<Vec<f32>> {
        self.forward_taps(be, ids, pos, vision, &[])
            .map(|mut v| v.remove(0))
    }

    /// Like `forward`, also returning the named taps (`llm.layer.{i}`, ...) after the logits.
    pub fn forward_taps(
        &mut self,
        be: &mut dyn Backend,
        ids: &[u32],
        pos: &[i32],
        vision: Option<(TRef, &[i32])>,
        taps: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        let t = ids.len();
        let paged = self.cache(be)?.begin(be, t)?;
        let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let reuse = t == 1 && vision.is_none() && taps.is_empty();
        if reuse {
            self.decode_executor(be)?;
        }
        let fresh = if reuse {
            None
        } else {
            let pass = TextPass {
                tokens: t,
                logit_rows: 1,
                vision: vision.map(|v| v.0),
                taps: !taps.is_empty(),
            };
            let g = self.model.build(&pass, self.act);
            Some(Executor::new(be, g)?)
        };
        let exec = fresh
            .as_ref()
            .or(self.decode.as_ref())
            .expect("an executor");
        let res = (|| {
            exec.write_i32(be, text::IN_IDS, &ids_i32)?;
            exec.write_i32(be, text::IN_POS, pos)?;
            exec.write_i32(be, text::IN_LOGIT_ROWS, &[t as i32 - 1])?;
            if let Some((_, rows)) = vision {
                exec.write_i32(be, text::IN_VISION_ROWS, rows)?;
            }
            exec.run(be, Some(&paged))?;
            let mut outs = vec![exec.read_f32(be, text::OUT_LOGITS)?];
            for name in taps {
                outs.push(exec.read_f32(be, name)?);
            }
            Ok(outs)
        })();
        if let Some(f) = fresh {
            f.free(be);
        }
        if res.is_err() {
            // Forget the failed step so the cache stays consistent.
            let kv = self.cache(be)?;
            let len = kv.kv_len() - t;
            kv.truncate(be, len)?;
        }
        res
    }
}

/// A loaded model on a backend, ready to generate.
pub struct Engine {
    pub be: Box<dyn Backend>,
    pub model: Model,
    pub opts: EngineOptions,
    /// The language model (and a single-sequence cache for direct passes).
    pub text: TextRunner,
    vision: Option<Box<dyn VisionModel>>,
    pub load_s: f64,
    sched: Scheduler,
}

/// Opens the backend a device choice names.
pub fn open_backend(device: Device) -> Result<Box<dyn Backend>> {
    crate::backend::open(device)
}

/// The vision embeddings a sequence's prefill reads.
struct Embeds {
    /// [n, hidden]: the rows of the items not covered by the prefix hit, in prompt order.
    t: TRef,
    /// A buffer of the sequence's own (freed after the prefill); else a cache entry.
    owned: bool,
    /// Vision rows of the prompt before `t`'s first row (items the prefix hit covers).
    skipped: usize,
}

/// A request in the engine.
struct Seq {
    id: RequestId,
    req: Request,
    sampler: Sampler,
    layout: PromptLayout,
    /// Content key of each media item and its token count.
    media: Vec<(Key, usize)>,
    embeds: Option<Embeds>,
    /// Vision-cache entries this sequence reads until its prefill ends.
    pins: Vec<(Key, TRef)>,
    /// Prompt tokens in the cache (prefill progress; equal to the prompt length once decoding).
    done: usize,
    decoding: bool,
    /// Prompt and generated tokens.
    history: Vec<u32>,
    generated: Vec<u32>,
    step_logits: Vec<Vec<f32>>,
    logits_last: Vec<f32>,
    /// Tokens reserved in the pool (prompt + budget, at most the pool).
    target: usize,
    cancelled: bool,
    timings: Timings,
    t_submit: Instant,
    t_admit: Option<Instant>,
    t_first: Option<Instant>,
}

/// The many-sequence state of an engine.
struct Scheduler {
    kv: Option<KvPool>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: RequestId,
    /// Events produced for other requests while `generate` waited for its own.
    parked: VecDeque<Event>,
    /// Text-only executors by (rows, logit rows), in order of last use.
    execs: Vec<((usize, usize), Executor)>,
    /// Per-row sampling arguments [max_batch + 1, WORDS] then token ids [max_batch + 1] I32.
    dev: Option<BufId>,
    prefix: PrefixCache,
    vcache: VisionCache,
}

/// Decode executors are kept for every batch size; other shapes (prefill chunks) for the few
/// most recent.
const KEEP_CHUNK_EXECS: usize = 4;

impl Engine {
    /// Loads a model and puts its language model on the chosen backend.
    pub fn new(model: Model, opts: EngineOptions) -> Result<Engine> {
        let t0 = Instant::now();
        opts.validate()?;
        let mut be = open_backend(opts.device)?;
        let text_model = model.arch.load_text(be.as_mut(), model.store.as_ref())?;
        let text = TextRunner::lazy(text_model, opts.act, opts.ctx, opts.page_size);
        let load_s = t0.elapsed().as_secs_f64();
        let vcache = VisionCache::new(if opts.prefix_cache {
            opts.vision_cache_bytes
        } else {
            0
        });
        Ok(Engine {
            be,
            model,
            opts,
            text,
            vision: None,
            load_s,
            sched: Scheduler {
                kv: None,
                waiting: VecDeque::new(),
                running: Vec::new(),
                next_id: 1,
                parked: VecDeque::new(),
                execs: Vec::new(),
                dev: None,
                prefix: PrefixCache::default(),
                vcache,
            },
        })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.model.generation
    }

    fn pool(&mut self) -> Result<&mut KvPool> {
        if self.sched.kv.is_none() {
            let spec = self.text.model().kv_spec(self.opts.act);
            self.sched.kv = Some(KvPool::new(
                self.be.as_mut(),
                spec,
                self.opts.ctx,
                self.opts.page_size,
                self.opts.max_batch,
            )?);
        }
        Ok(self.sched.kv.as_mut().expect("allocated above"))
    }

    /// Tokens the KV pool holds (every sequence together).
    pub fn capacity_tokens(&self) -> usize {
        pages_for_ctx(self.opts.ctx, self.opts.page_size) * self.opts.page_size
    }

    /// Requests waiting for room and requests in flight.
    pub fn has_work(&self) -> bool {
        !self.sched.waiting.is_empty()
            || !self.sched.running.is_empty()
            || !self.sched.parked.is_empty()
    }

    /// (waiting, running) request counts.
    pub fn load(&self) -> (usize, usize) {
        (self.sched.waiting.len(), self.sched.running.len())
    }

    /// Free pages of the KV pool and pages the prefix cache holds.
    pub fn kv_usage(&self) -> (usize, usize) {
        (
            self.sched.kv.as_ref().map_or(0, |k| k.n_free()),
            self.sched.prefix.len(),
        )
    }

    /// Queues a request; its events come from [`Engine::step`]. Errors that the request alone
    /// causes (an empty prompt, bad sampling parameters, a prompt the pool can never hold,
    /// pads that do not match its media) are returned here and nothing is queued.
    pub fn submit(&mut self, req: Request) -> Result<RequestId> {
        if req.prompt_tokens.is_empty() {
            return Err(Error::Prompt("the prompt is empty".into()));
        }
        let cap = self.capacity_tokens();
        if req.prompt_tokens.len() > self.opts.ctx {
            return Err(Error::Cache(format!(
                "the prompt has {} tokens but the KV cache holds {} (raise --ctx)",
                req.prompt_tokens.len(),
                self.opts.ctx
            )));
        }
        let sampler = Sampler::new(req.sampling)?;
        let layout = self
            .model
            .arch
            .prompt_layout(&req.prompt_tokens, &req.vision)?;
        let n_vis: usize = req.vision.iter().map(|v| v.tokens).sum();
        if layout.vision_rows.len() != n_vis {
            return Err(Error::Prompt(format!(
                "{} vision pad tokens for {n_vis} vision embeddings",
                layout.vision_rows.len()
            )));
        }
        // Content keys only matter to the caches.
        let media = req
            .vision
            .iter()
            .map(|v| {
                let k = if self.opts.prefix_cache {
                    prefix::media_key(v)
                } else {
                    Key::default()
                };
                (k, v.tokens)
            })
            .collect();
        let id = self.sched.next_id;
        self.sched.next_id += 1;
        let target = (req.prompt_tokens.len() + req.max_new_tokens).min(cap);
        let timings = Timings {
            load_s: self.load_s,
            media_decode_s: req.media_decode_s,
            preprocess_s: req.preprocess_s,
            media_items: req.vision.len(),
            ..Timings::default()
        };
        self.sched.waiting.push_back(Seq {
            id,
            history: req.prompt_tokens.clone(),
            req,
            sampler,
            layout,
            media,
            embeds: None,
            pins: Vec::new(),
            done: 0,
            decoding: false,
            generated: Vec::new(),
            step_logits: Vec::new(),
            logits_last: Vec::new(),
            target,
            cancelled: false,
            timings,
            t_submit: Instant::now(),
            t_admit: None,
            t_first: None,
        });
        Ok(id)
    }

    /// Ends a request at the next step (its output so far comes as `Finished` with
    /// [`StopReason::Cancelled`]); its pages go back to the pool. Unknown ids are ignored.
    pub fn cancel(&mut self, id: RequestId) {
        for s in self
            .sched
            .waiting
            .iter_mut()
            .chain(self.sched.running.iter_mut())
        {
            if s.id == id {
                s.cancelled = true;
            }
        }
    }

    /// Runs `req` alone to the end (other requests in the engine progress meanwhile; their
    /// events wait for the next [`Engine::step`]), calling `on_token` with each new id.
    pub fn generate(&mut self, req: &Request, on_token: &mut dyn FnMut(u32)) -> Result<Output> {
        let id = self.submit(req.clone())?;
        loop {
            let events = self.step()?;
            let mut others = Vec::new();
            for ev in events {
                match ev {
                    Event::Token { id: i, token } if i == id => on_token(token),
                    Event::Finished { id: i, output } if i == id => {
                        self.sched.parked.extend(others);
                        return Ok(*output);
                    }
                    Event::Failed { id: i, error } if i == id => {
                        self.sched.parked.extend(others);
                        return Err(error);
                    }
                    ev => others.push(ev),
                }
            }
            self.sched.parked.extend(others);
        }
    }

    /// Runs the vision tower over one item; returns its embeddings in a buffer of their own.
    fn encode_item(&mut self, item: &VisionInput) -> Result<TRef> {
        if self.vision.is_none() {
            let store = self.model.store.as_ref();
            self.vision = Some(self.model.arch.load_vision(self.be.as_mut(), store)?);
        }
        let vision = self.vision.as_ref().expect("loaded above");
        vision.encode(self.be.as_mut(), std::slice::from_ref(item), self.opts.act)
    }

    /// Pool pages the running sequences may still take for their reservations.
    fn outstanding_pages(&self) -> usize {
        let Some(kv) = self.sched.kv.as_ref() else {
            return 0;
        };
        let ps = self.opts.page_size;
        self.sched
            .running
            .iter()
            .map(|s| {
                let have = kv.seq(s.id).map_or(0, |p| p.pages().len());
                let cow = kv
                    .seq(s.id)
                    .is_some_and(|p| p.shared_tail(kv.pages()).is_some())
                    as usize;
                (pages_for_ctx(s.target, ps) + cow).saturating_sub(have)
            })
            .sum()
    }

    /// Admits waiting requests in order while there is room (see the module docs).
    fn admit(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let ps = self.opts.page_size;
        while self.sched.running.len() < self.opts.max_batch {
            let Some(front) = self.sched.waiting.front() else {
                break;
            };
            if front.cancelled {
                let s = self.sched.waiting.pop_front().expect("front exists");
                events.push(self.finish(s, StopReason::Cancelled)?);
                continue;
            }
            let use_cache = self.opts.prefix_cache;
            let l = front.req.prompt_tokens.len();
            let keys = if use_cache {
                let c = prefix::token_contents(
                    &front.req.prompt_tokens,
                    &front.layout.vision_rows,
                    &front.media,
                );
                prefix::page_keys(&c, ps)
            } else {
                Vec::new()
            };
            let target = front.target;
            self.pool()?;
            let hit = self.sched.prefix.lookup(&keys);
            // At least the last prompt token is computed, for its logits.
            let cached = (hit.len() * ps).min(l - 1);
            let hit = &hit[..pages_for_ctx(cached, ps)];
            let need =
                pages_for_ctx(target, ps) - hit.len() + (!cached.is_multiple_of(ps)) as usize;
            let kv = self.sched.kv.as_ref().expect("allocated above");
            let evictable = self.sched.prefix.evictable(kv)
                - hit.iter().filter(|&&p| kv.pages().refs(p) == 1).count();
            let room = (kv.n_free() + evictable).saturating_sub(self.outstanding_pages());
            if need > room {
                break;
            }
            let mut s = self.sched.waiting.pop_front().expect("front exists");
            let now = Instant::now();
            s.timings.queue_s = (now - s.t_submit).as_secs_f64();
            s.t_admit = Some(now);
            let kv = self.sched.kv.as_mut().expect("allocated above");
            if let Err(e) = kv.add_seq(s.id, hit, cached) {
                events.push(Event::Failed { id: s.id, error: e });
                continue;
            }
            if cached > 0 {
                self.sched.prefix.hits += 1;
                self.sched.prefix.hit_tokens += cached as u64;
            }
            s.done = cached;
            s.timings.cached_tokens = cached;
            s.timings.prefilled_tokens = l - cached;
            match self.prepare_embeds(&mut s) {
                Ok(()) => self.sched.running.push(s),
                Err(e) => {
                    self.release(&mut s)?;
                    events.push(Event::Failed { id: s.id, error: e });
                }
            }
        }
        Ok(())
    }

    /// The vision embeddings the sequence's prefill still needs: items whose pads all lie in
    /// the cached prefix are skipped; the others come from the vision cache or the tower.
    fn prepare_embeds(&mut self, s: &mut Seq) -> Result<()> {
        if s.req.vision.is_empty() {
            return Ok(());
        }
        let tv = Instant::now();
        let rows = &s.layout.vision_rows;
        let (mut skipped, mut first) = (0, s.req.vision.len());
        let mut at = 0;
        for (i, v) in s.req.vision.iter().enumerate() {
            if v.tokens > 0 && rows[at + v.tokens - 1] as usize >= s.done {
                first = i;
                break;
            }
            at += v.tokens;
            skipped += v.tokens;
            s.timings.media_reused += 1;
        }
        let mut parts: Vec<TRef> = Vec::new();
        let mut owned_parts = Vec::new();
        let mut encoded = false;
        for i in first..s.req.vision.len() {
            let key = s.media[i].0;
            if self.opts.prefix_cache {
                if let Some(t) = self.sched.vcache.pin(&key) {
                    s.pins.push((key, t));
                    s.timings.media_reused += 1;
                    parts.push(t);
                    continue;
                }
            }
            let item = s.req.vision[i].clone();
            let t = match self.encode_item(&item) {
                Ok(t) => t,
                Err(e) => {
                    for t in owned_parts {
                        self.be.free(t);
                    }
                    return Err(e);
                }
            };
            encoded = true;
            if self.opts.prefix_cache {
                self.sched.vcache.insert_pinned(self.be.as_mut(), key, t);
                s.pins.push((key, t));
            } else {
                owned_parts.push(t.buf);
            }
            parts.push(t);
        }
        if encoded {
            s.timings.vision_s = tv.elapsed().as_secs_f64();
        }
        let n: usize = parts.iter().map(|t| t.shape.rows()).sum();
        if parts.len() == 1 {
            let owned = !owned_parts.is_empty();
            s.embeds = Some(Embeds {
                t: parts[0],
                owned,
                skipped,
            });
            return Ok(());
        }
        if parts.is_empty() {
            return Ok(());
        }
        // Several items: one tensor, items in prompt order.
        let hidden = parts[0].shape.dim(-1);
        let dt = parts[0].dtype;
        let res = (|| {
            let buf = self.be.alloc(dt.bytes_for(n * hidden))?;
            let all = TRef::new(buf, 0, dt, Shape::new(&[n, hidden]));
            let idx_buf = self.be.alloc(n.max(1) * 4)?;
            let mut row = 0;
            for t in &parts {
                let k = t.shape.rows();
                let idx: Vec<i32> = (row as i32..(row + k) as i32).collect();
                let it = TRef::new(idx_buf, 0, DType::I32, Shape::new(&[k]));
                self.be.write(idx_buf, 0, bytemuck::cast_slice(&idx))?;
                self.be.scatter_rows(*t, it, all)?;
                self.be.sync()?;
                row += k;
            }
            self.be.free(idx_buf);
            Ok(all)
        })();
        for b in owned_parts {
            self.be.free(b);
        }
        let all = res?;
        s.embeds = Some(Embeds {
            t: all,
            owned: true,
            skipped,
        });
        Ok(())
    }

    /// Frees what a sequence holds besides its pool pages: embeddings and cache pins.
    fn drop_embeds(&mut self, s: &mut Seq) {
        if let Some(e) = s.embeds.take() {
            if e.owned {
                self.be.free(e.t.buf);
            }
        }
        for (k, t) in std::mem::take(&mut s.pins) {
            self.sched.vcache.unpin(self.be.as_mut(), &k, t);
        }
    }

    /// Gives back everything a sequence holds (pages included).
    fn release(&mut self, s: &mut Seq) -> Result<()> {
        self.drop_embeds(s);
        if let Some(kv) = self.sched.kv.as_mut() {
            kv.remove_seq(s.id)?;
        }
        Ok(())
    }

    /// Retires a sequence: its output (or what it has so far), its pages to the prefix cache
    /// and the pool.
    fn finish(&mut self, mut s: Seq, stop: StopReason) -> Result<Event> {
        let fed = self.sched.kv.as_ref().map_or(0, |k| k.kv_len(s.id));
        if s.t_admit.is_some() && fed > 0 && self.opts.prefix_cache {
            let kv = self
                .sched
                .kv
                .as_mut()
                .expect("an admitted sequence has a pool");
            register(&mut self.sched.prefix, kv, &s, fed, self.opts.page_size)?;
        }
        self.release(&mut s)?;
        let now = Instant::now();
        let t = &mut s.timings;
        if let Some(t1) = s.t_first {
            t.decode_s = (now - t1).as_secs_f64();
        }
        let n_dec = s.generated.len().saturating_sub(1);
        t.decode_tokens_per_s = if n_dec > 0 {
            n_dec as f64 / t.decode_s.max(1e-9)
        } else {
            0.0
        };
        t.prefill_tokens_per_s = t.prefilled_tokens as f64 / t.prefill_s.max(1e-9);
        let text = self.model.tokenizer.decode_skip_special(&s.generated)?;
        Ok(Event::Finished {
            id: s.id,
            output: Box::new(Output {
                prompt_tokens: s.req.prompt_tokens,
                generated_tokens: s.generated,
                text,
                stop,
                logits_last: s.logits_last,
                step_logits: s.step_logits,
                timings: s.timings,
            }),
        })
    }

    /// Runs one step (see the module docs) and returns its events. An error here is the
    /// engine's (the backend failed); a request's own failures are `Failed` events.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = self.sched.parked.drain(..).collect();
        // Cancelled sequences leave first.
        let mut i = 0;
        while i < self.sched.running.len() {
            if self.sched.running[i].cancelled {
                let s = self.sched.running.remove(i);
                events.push(self.finish(s, StopReason::Cancelled)?);
            } else {
                i += 1;
            }
        }
        self.admit(&mut events)?;
        if self.sched.running.is_empty() {
            if let Some(s) = self.sched.waiting.pop_front() {
                // Nothing runs and it still does not fit: only the prefix cache can be in the
                // way, and clearing it makes room for any prompt the pool holds.
                let kv = self.sched.kv.as_mut().expect("admit allocated the pool");
                self.sched.prefix.clear(kv)?;
                self.sched.waiting.push_front(s);
                self.admit(&mut events)?;
            }
            if self.sched.running.is_empty() {
                return Ok(events);
            }
        }
        self.forward_step(&mut events)?;
        Ok(events)
    }
}

/// Lists a sequence's full pages of its first `tokens` cached tokens in the prefix cache.
fn register(
    prefix: &mut PrefixCache,
    kv: &mut KvPool,
    s: &Seq,
    tokens: usize,
    ps: usize,
) -> Result<()> {
    let full = tokens / ps;
    if full == 0 {
        return Ok(());
    }
    let l = s.req.prompt_tokens.len();
    let mut c = prefix::token_contents(&s.req.prompt_tokens, &s.layout.vision_rows, &s.media);
    c.truncate(tokens.min(l));
    c.extend(
        s.history[l.min(tokens)..tokens]
            .iter()
            .map(|&t| Key(t as u64, 0)),
    );
    let keys = prefix::page_keys(&c[..full * ps], ps);
    let pages = kv.seq(s.id).map(|p| p.pages()[..full].to_vec());
    match pages {
        Some(pages) => prefix.insert(kv, &keys, &pages),
        None => Ok(()),
    }
}

/// One row of a step that gets logits.
struct LogitRow {
    /// Index into `running`.
    seq: usize,
    /// The prompt's last row (the first token comes from it).
    first: bool,
}

impl Engine {
    /// Builds and runs one forward pass over the running sequences, samples, and emits.
    fn forward_step(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let cap = self.capacity_tokens();
        let ctx = self.opts.ctx;
        // Decoding sequences that would pass the pool's capacity fail alone.
        let mut i = 0;
        while i < self.sched.running.len() {
            let s = &self.sched.running[i];
            if s.decoding && s.history.len() > cap.min(ctx.max(s.target)) {
                let need = s.req.prompt_tokens.len() + s.req.max_new_tokens;
                let mut s = self.sched.running.remove(i);
                self.release(&mut s)?;
                events.push(Event::Failed {
                    id: s.id,
                    error: Error::Cache(format!(
                        "generation reached the KV cache capacity of {ctx} tokens (raise --ctx; this run needs up to {need})"
                    )),
                });
                continue;
            }
            i += 1;
        }
        let running = &self.sched.running;
        let dec: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].decoding)
            .collect();
        let pre = (0..running.len()).find(|&i| !running[i].decoding);
        let chunk = pre.map_or(0, |p| {
            let s = &running[p];
            let left = s.req.prompt_tokens.len() - s.done;
            if self.opts.prefill_chunk == 0 {
                left
            } else {
                left.min(self.opts.prefill_chunk)
            }
        });
        let nd = dec.len();
        let t = nd + chunk;
        if t == 0 {
            return Ok(());
        }
        let mut step: Vec<(u64, usize)> = dec.iter().map(|&i| (running[i].id, 1)).collect();
        let mut lrows: Vec<LogitRow> = dec
            .iter()
            .map(|&i| LogitRow {
                seq: i,
                first: false,
            })
            .collect();
        let mut ids: Vec<i32> = Vec::with_capacity(t);
        let mut pos = vec![0i32; 3 * t];
        let arch = self.model.arch.clone();
        for (r, &i) in dec.iter().enumerate() {
            let s = &running[i];
            ids.push(*s.history.last().expect("a decoding sequence has tokens") as i32);
            let p = arch.decode_positions(s.history.len() - 1, s.layout.rope_delta);
            for k in 0..3 {
                pos[k * t + r] = p[k];
            }
        }
        let mut logit_idx: Vec<i32> = (0..nd as i32).collect();
        let mut vis: Option<(TRef, Vec<i32>)> = None;
        if let Some(p) = pre {
            let s = &running[p];
            let (a, b) = (s.done, s.done + chunk);
            let l = s.req.prompt_tokens.len();
            step.push((s.id, chunk));
            ids.extend(s.req.prompt_tokens[a..b].iter().map(|&x| x as i32));
            for k in 0..3 {
                pos[k * t + nd..k * t + t]
                    .copy_from_slice(&s.layout.positions[k * l + a..k * l + b]);
            }
            let vr = &s.layout.vision_rows;
            let v0 = vr.partition_point(|&r| (r as usize) < a);
            let v1 = vr.partition_point(|&r| (r as usize) < b);
            if v1 > v0 {
                let e = s.embeds.as_ref().ok_or_else(|| {
                    Error::Other("a prefill chunk has vision rows but no embeddings".into())
                })?;
                let rows: Vec<i32> = vr[v0..v1]
                    .iter()
                    .map(|&r| (nd + r as usize - a) as i32)
                    .collect();
                vis = Some((e.t.rows(v0 - e.skipped, v1 - v0), rows));
            }
            if b == l {
                logit_idx.push((t - 1) as i32);
                lrows.push(LogitRow {
                    seq: p,
                    first: true,
                });
            }
        }
        // Room for the step: evict cached pages nobody uses if needed.
        let need: usize = {
            let kv = self
                .sched
                .kv
                .as_ref()
                .expect("a running sequence has a pool");
            step.iter().map(|&(id, n)| kv.pages_needed(id, n)).sum()
        };
        {
            let kv = self
                .sched
                .kv
                .as_mut()
                .expect("a running sequence has a pool");
            if kv.n_free() < need {
                self.sched.prefix.evict(kv, need)?;
            }
        }
        let kv = self
            .sched
            .kv
            .as_mut()
            .expect("a running sequence has a pool");
        let paged = match kv.begin_step(self.be.as_mut(), &step) {
            Ok(p) => p,
            Err(e) => {
                // Cannot happen within the reservations; fail the step's sequences alone.
                for &(id, _) in &step {
                    if let Some(i) = self.sched.running.iter().position(|s| s.id == id) {
                        let mut s = self.sched.running.remove(i);
                        self.release(&mut s)?;
                        events.push(Event::Failed {
                            id,
                            error: Error::Cache(e.to_string()),
                        });
                    }
                }
                return Ok(());
            }
        };
        let res = self.run_pass(&paged, t, &ids, &pos, &logit_idx, vis, &lrows);
        let (tokens, host_logits) = match res {
            Ok(x) => x,
            Err(e) => {
                // Roll back the step and fail its sequences; the engine goes on.
                let msg = e.to_string();
                for &(id, n) in &step {
                    if let Some(i) = self.sched.running.iter().position(|s| s.id == id) {
                        let mut s = self.sched.running.remove(i);
                        let kv = self.sched.kv.as_mut().expect("pool");
                        let len = kv.kv_len(id) - n;
                        kv.truncate(id, len)?;
                        self.release(&mut s)?;
                        events.push(Event::Failed {
                            id,
                            error: Error::Other(msg.clone()),
                        });
                    }
                }
                return Ok(());
            }
        };
        // The prefilling sequence's progress.
        if let Some(p) = pre {
            let s = &mut self.sched.running[p];
            s.done += chunk;
            let done = s.done;
            if done == s.req.prompt_tokens.len() {
                let t_admit = s.t_admit.expect("admitted");
                s.timings.prefill_s = t_admit.elapsed().as_secs_f64();
                s.decoding = true;
                let mut s = std::mem::replace(&mut self.sched.running[p], placeholder());
                self.drop_embeds(&mut s);
                self.sched.running[p] = s;
            }
            // Full prompt pages are shareable as soon as they are written.
            if self.opts.prefix_cache {
                let sch = &mut self.sched;
                let kv = sch.kv.as_mut().expect("pool");
                register(
                    &mut sch.prefix,
                    kv,
                    &sch.running[p],
                    done,
                    self.opts.page_size,
                )?;
            }
        }
        // Tokens: emit, stop checks.
        let mut finished: Vec<(usize, StopReason)> = Vec::new();
        let mut failures: Vec<(usize, Error)> = Vec::new();
        for (r, lr) in lrows.iter().enumerate() {
            let s = &mut self.sched.running[lr.seq];
            let logits = host_logits[r].as_ref();
            if lr.first {
                s.logits_last = logits.cloned().unwrap_or_default();
                if s.req.max_new_tokens == 0 {
                    finished.push((lr.seq, StopReason::MaxTokens));
                    continue;
                }
            }
            let tok = if s.sampler.needs_host() || s.req.record_logits {
                let lg = logits.expect("host rows were read");
                let tok = s.sampler.sample(lg, &s.history);
                if s.req.record_logits {
                    s.step_logits.push(lg.clone());
                }
                tok
            } else {
                token_or_error(tokens[r])
            };
            let tok = match tok {
                Ok(t) => t,
                Err(e) => {
                    failures.push((lr.seq, e));
                    continue;
                }
            };
            if s.t_first.is_none() {
                let now = Instant::now();
                s.t_first = Some(now);
                s.timings.ttft_s = (now - s.t_admit.expect("admitted")).as_secs_f64();
            }
            s.generated.push(tok);
            s.history.push(tok);
            events.push(Event::Token {
                id: s.id,
                token: tok,
            });
            if s.req.stop_tokens.contains(&tok) {
                finished.push((lr.seq, StopReason::Eos));
            } else if s.generated.len() >= s.req.max_new_tokens {
                finished.push((lr.seq, StopReason::MaxTokens));
            }
        }
        // Retire in descending index order so the indices stay valid.
        let mut remove: Vec<(usize, Result<StopReason>)> = finished
            .into_iter()
            .map(|(i, r)| (i, Ok(r)))
            .chain(failures.into_iter().map(|(i, e)| (i, Err(e))))
            .collect();
        remove.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut out_events = Vec::new();
        for (i, why) in remove {
            let mut s = self.sched.running.remove(i);
            match why {
                Ok(why) => out_events.push(self.finish(s, why)?),
                Err(error) => {
                    self.release(&mut s)?;
                    out_events.push(Event::Failed { id: s.id, error });
                }
            }
        }
        out_events.reverse();
        events.extend(out_events);
        Ok(())
    }

    /// The executor of a text-only pass of `t` rows and `r` logit rows (kept), or a new one
    /// for a pass with vision rows (the embeddings are part of its graph).
    fn executor(&mut self, t: usize, r: usize) -> Result<usize> {
        let sched = &mut self.sched;
        if let Some(i) = sched.execs.iter().position(|(k, _)| *k == (t, r)) {
            let e = sched.execs.remove(i);
            sched.execs.push(e);
            return Ok(sched.execs.len() - 1);
        }
        let pass = TextPass {
            tokens: t,
            logit_rows: r,
            vision: None,
            taps: false,
        };
        let g = self.text.model().build(&pass, self.opts.act);
        let e = Executor::new(self.be.as_mut(), g)?;
        sched.execs.push(((t, r), e));
        // Keep every decode shape (t == r); drop the oldest other shapes past the limit.
        let others = sched.execs.iter().filter(|(k, _)| k.0 != k.1).count();
        if others > KEEP_CHUNK_EXECS {
            if let Some(i) = sched.execs.iter().position(|(k, _)| k.0 != k.1) {
                let (_, old) = sched.execs.remove(i);
                old.free(self.be.as_mut());
            }
        }
        Ok(sched.execs.len() - 1)
    }

    /// Writes the inputs, runs the pass and the per-row sampling, and reads back the token of
    /// each logit row and the logits of the rows that need them on the host.
    #[allow(clippy::too_many_arguments)]
    fn run_pass(
        &mut self,
        paged: &PagedKv,
        t: usize,
        ids: &[i32],
        pos: &[i32],
        logit_idx: &[i32],
        vis: Option<(TRef, Vec<i32>)>,
        lrows: &[LogitRow],
    ) -> Result<(Vec<i32>, HostLogits)> {
        let r = logit_idx.len();
        // A graph needs at least one logit row: a chunk that needs none computes the last
        // row's logits and drops them.
        let last_row = [(t - 1) as i32];
        let (gr, logit_idx) = if r == 0 {
            (1, &last_row[..])
        } else {
            (r, logit_idx)
        };
        let words = SampleArgs::WORDS;
        let max_rows = self.opts.max_batch + 1;
        if self.sched.dev.is_none() {
            self.sched.dev = Some(self.be.alloc(max_rows * (words + 1) * 4)?);
        }
        let dev = self.sched.dev.expect("allocated above");
        // Per-row sampling arguments (rows sampled on the host get greedy ones, unused).
        let mut args: Vec<i32> = Vec::with_capacity(r.max(1) * words);
        let mut host_rows = vec![false; r];
        for (k, lr) in lrows.iter().enumerate() {
            let s = &mut self.sched.running[lr.seq];
            let host = s.sampler.needs_host() || s.req.record_logits;
            host_rows[k] = host || lr.first;
            let skip = lr.first && s.req.max_new_tokens == 0;
            let a = if host || skip {
                SampleArgs::greedy()
            } else {
                s.sampler.next_args()
            };
            args.extend_from_slice(&a.to_words());
        }
        let args_t = TRef::new(dev, 0, DType::I32, Shape::new(&[r.max(1), words]));
        let tok_t = TRef::new(
            dev,
            max_rows * words * 4,
            DType::I32,
            Shape::new(&[r.max(1)]),
        );
        if r > 0 {
            self.be.write(dev, 0, bytemuck::cast_slice(&args))?;
        }
        let mut fresh = match &vis {
            Some((v, _)) => {
                let pass = TextPass {
                    tokens: t,
                    logit_rows: gr,
                    vision: Some(*v),
                    taps: false,
                };
                let g = self.text.model().build(&pass, self.opts.act);
                Some(Executor::new(self.be.as_mut(), g)?)
            }
            None => None,
        };
        let slot = if fresh.is_none() {
            Some(self.executor(t, gr)?)
        } else {
            None
        };
        let be = self.be.as_mut();
        let exec: &mut Executor = match slot {
            Some(i) => &mut self.sched.execs[i].1,
            None => fresh.as_mut().expect("built above"),
        };
        let out = (|| {
            exec.write_i32(be, text::IN_IDS, ids)?;
            exec.write_i32(be, text::IN_POS, pos)?;
            exec.write_i32(be, text::IN_LOGIT_ROWS, logit_idx)?;
            if let Some((_, rows)) = &vis {
                exec.write_i32(be, text::IN_VISION_ROWS, rows)?;
            }
            let logits = exec.value(text::OUT_LOGITS)?;
            if r == 0 {
                exec.run(be, Some(paged))?;
                return Ok((Vec::new(), Vec::new()));
            }
            let mut tail = |be: &mut dyn Backend| be.sample(logits, args_t, tok_t);
            if slot.is_some() {
                exec.run_step(be, Some(paged), &[args_t, tok_t, logits], &mut tail)?;
            } else {
                exec.run(be, Some(paged))?;
                tail(be)?;
            }
            let mut raw = vec![0u8; r * 4];
            be.read(tok_t.buf, tok_t.offset, &mut raw)?;
            let toks: Vec<i32> = bytemuck::cast_slice(&raw).to_vec();
            let mut host = Vec::with_capacity(r);
            for (k, &h) in host_rows.iter().enumerate() {
                host.push(if h {
                    Some(crate::backend::host::read_f32(be, &logits.rows(k, 1))?)
                } else {
                    None
                });
            }
            Ok((toks, host))
        })();
        if let Some(f) = fresh {
            f.free(be);
        }
        out
    }
}

/// Per logit row of a step: its logits when they were read back to the host.
type HostLogits = Vec<Option<Vec<f32>>>;

/// A stand-in while a sequence is borrowed out of the running list.
fn placeholder() -> Seq {
    Seq {
        id: 0,
        req: Request::default(),
        sampler: Sampler::new(SamplingParams::default()).expect("defaults are valid"),
        layout: PromptLayout {
            positions: Vec::new(),
            rope_delta: 0,
            vision_rows: Vec::new(),
        },
        media: Vec::new(),
        embeds: None,
        pins: Vec::new(),
        done: 0,
        decoding: false,
        history: Vec::new(),
        generated: Vec::new(),
        step_logits: Vec::new(),
        logits_last: Vec::new(),
        target: 0,
        cancelled: false,
        timings: Timings::default(),
        t_submit: Instant::now(),
        t_admit: None,
        t_first: None,
    }
}

#[cfg(test)]
mod tests;
