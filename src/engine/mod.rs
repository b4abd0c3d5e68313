//! A generation session: media -> vision -> prefill -> decode, sampling, streaming, timings.

pub mod bench;
pub mod sampling;

use crate::backend::{Backend, BufId, PendingToken, SampleArgs, TRef};
use crate::error::{Error, Result};
use crate::graph::Executor;
use crate::kv::{KvCache, DEFAULT_PAGE_SIZE};
use crate::model::config::{Config, GenerationConfig};
use crate::model::inputs::VisionInput;
use crate::model::text::{self, TextPass};
use crate::model::{Model, TextModel, VisionModel};
use crate::prompt::Tokenizer;
use crate::tensor::{DType, Shape};
use sampling::{token_or_error, Sampler, SamplingParams};
use std::time::Instant;

pub use crate::backend::Device;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: Device,
    /// Activation (and KV cache) type: BF16 follows the reference's bf16 run, F32 its f32 run.
    pub act: DType,
    /// KV cache capacity in tokens.
    pub ctx: usize,
    pub page_size: usize,
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
        }
    }
}

/// Wall-clock time of each stage, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub load_s: f64,
    /// Reading/decoding images and videos, frame sampling and resizing.
    pub media_decode_s: f64,
    /// Normalizing, patchifying, prompt rendering and tokenization.
    pub preprocess_s: f64,
    /// The vision tower.
    pub vision_s: f64,
    pub prefill_s: f64,
    /// From the start of prefill to the first sampled token.
    pub ttft_s: f64,
    pub decode_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
}

/// One generation's inputs, once the prompt is tokenized.
#[derive(Clone, Debug)]
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

/// Layout of the small device buffer of on-device sampling: the arguments the sampler reads,
/// the sampled token, and a zero index (the gather that copies the token into the next step's
/// input ids).
const DEV_ARGS: usize = 0;
const DEV_TOKEN: usize = 32;
const DEV_ZERO: usize = 48;
const DEV_BYTES: usize = 64;

/// The language model on a backend: its weights, KV cache and the decode-step graph.
pub struct TextRunner {
    pub act: DType,
    model: Box<dyn TextModel>,
    kv: KvCache,
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
        let kv = KvCache::new(be, model.kv_spec(act), ctx, page_size)?;
        Ok(TextRunner {
            act,
            model,
            kv,
            decode: None,
            dev: None,
        })
    }

    /// Drops cached tokens past `len`.
    pub fn truncate(&mut self, be: &mut dyn Backend, len: usize) -> Result<()> {
        self.kv.truncate(be, len)
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
        let paged = self.kv.begin(be, 1)?;
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
            let len = self.kv.kv_len() - 1;
            self.kv.truncate(be, len)?;
        }
        res
    }

    /// Tokens the cache holds.
    pub fn kv_len(&self) -> usize {
        self.kv.kv_len()
    }

    /// Empties the cache for a new prompt.
    pub fn reset(&mut self, be: &mut dyn Backend) -> Result<()> {
        self.kv.reset(be)
    }

    /// Benchmark helper only: counts `n` more tokens as cached without computing them (their
    /// K/V entries are whatever the pool holds), so decode at a long context can be timed
    /// without paying for a prefill. Decode cost does not depend on the cached values.
    pub fn advance(&mut self, be: &mut dyn Backend, n: usize) -> Result<()> {
        self.kv.begin(be, n).map(|_| ())
    }

    /// Bytes of the KV pool (every page, used or not).
    pub fn kv_pool_bytes(&self) -> usize {
        self.kv.layout().total_bytes()
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
        let paged = self.kv.begin(be, t)?;
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
            let len = self.kv.kv_len() - t;
            self.kv.truncate(be, len)?;
        }
        res
    }
}

/// A loaded model on a backend, ready to generate.
pub struct Engine {
    pub be: Box<dyn Backend>,
    pub model: Model,
    pub opts: EngineOptions,
    pub text: TextRunner,
    vision: Option<Box<dyn VisionModel>>,
    pub load_s: f64,
}

/// Opens the backend a device choice names.
pub fn open_backend(device: Device) -> Result<Box<dyn Backend>> {
    crate::backend::open(device)
}

impl Engine {
    /// Loads a model and puts its language model on the chosen backend.
    pub fn new(model: Model, opts: EngineOptions) -> Result<Engine> {
        let t0 = Instant::now();
        opts.validate()?;
        let mut be = open_backend(opts.device)?;
        let text_model = model.arch.load_text(be.as_mut(), model.store.as_ref())?;
        let text = TextRunner::new(be.as_mut(), text_model, opts.act, opts.ctx, opts.page_size)?;
        let load_s = t0.elapsed().as_secs_f64();
        Ok(Engine {
            be,
            model,
            opts,
            text,
            vision: None,
            load_s,
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

    /// Runs the vision tower over every item and returns its embeddings [n, hidden] as a
    /// backend tensor in the activation type (None when there is nothing to encode); the caller
    /// frees it after the prefill.
    fn encode_vision(&mut self, items: &[VisionInput]) -> Result<Option<TRef>> {
        if items.is_empty() {
            return Ok(None);
        }
        if self.vision.is_none() {
            let store = self.model.store.as_ref();
            self.vision = Some(self.model.arch.load_vision(self.be.as_mut(), store)?);
        }
        let vision = self.vision.as_ref().expect("loaded above");
        vision
            .encode(self.be.as_mut(), items, self.opts.act)
            .map(Some)
    }

    /// The decode loop with sampling on the backend. Each step's sampled token stays on the
    /// device as the next step's input, so on an asynchronous backend the host launches step
    /// n + 1 (positions, page table and sampling arguments do not depend on the token) before
    /// it waits for token n, and detokenizing, streaming and the stop check of token n overlap
    /// the device computing step n + 1. When token n is a stop token, that step is discarded
    /// (its cache entry dropped). A synchronous backend (the CPU) gets no lookahead, so it
    /// never computes a step it throws away.
    #[allow(clippy::too_many_arguments)]
    fn decode_on_device(
        &mut self,
        req: &Request,
        first: u32,
        rope_delta: i32,
        sampler: &mut Sampler,
        generated: &mut Vec<u32>,
        history: &mut Vec<u32>,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<StopReason> {
        let ctx = self.opts.ctx;
        let need = req.prompt_tokens.len() + req.max_new_tokens;
        let cap_err = || {
            Error::Cache(format!(
                "generation reached the KV cache capacity of {ctx} tokens (raise --ctx; this run needs up to {need})"
            ))
        };
        let be = self.be.as_mut();
        let text = &mut self.text;
        let arch = self.model.arch.as_ref();
        generated.push(first);
        history.push(first);
        on_token(first);
        if req.stop_tokens.contains(&first) {
            return Ok(StopReason::Eos);
        }
        if generated.len() == req.max_new_tokens {
            return Ok(StopReason::MaxTokens);
        }
        if history.len() > ctx {
            return Err(cap_err());
        }
        let p = arch.decode_positions(history.len() - 1, rope_delta);
        let mut pending = text.decode_start(be, Some(first), &p, &sampler.next_args())?;
        let lookahead = !matches!(pending, PendingToken::Ready(_));
        loop {
            // The step after `pending` consumes its token (already on the device, at position
            // history.len()) and needs room for it in the cache; launch it before waiting when
            // another token may be needed.
            let more = generated.len() + 1 < req.max_new_tokens && history.len() < ctx;
            let next = if lookahead && more {
                let p = arch.decode_positions(history.len(), rope_delta);
                Some(text.decode_start(be, None, &p, &sampler.next_args())?)
            } else {
                None
            };
            let tok = match be.read_token_wait(pending).and_then(token_or_error) {
                Ok(t) => t,
                Err(e) => {
                    // The step launched ahead consumed a token that never arrived: drop its
                    // cache entry so the cache holds exactly the accepted tokens.
                    if let Some(n) = next {
                        let _ = be.read_token_wait(n);
                        let len = text.kv_len() - 1;
                        text.truncate(be, len)?;
                    }
                    return Err(e);
                }
            };
            generated.push(tok);
            history.push(tok);
            on_token(tok);
            if req.stop_tokens.contains(&tok) {
                if let Some(n) = next {
                    // Discard the step launched past the end.
                    be.read_token_wait(n)?;
                    let len = text.kv_len() - 1;
                    text.truncate(be, len)?;
                }
                return Ok(StopReason::Eos);
            }
            if generated.len() == req.max_new_tokens {
                return Ok(StopReason::MaxTokens);
            }
            pending = match next {
                Some(n) => n,
                None if history.len() > ctx => return Err(cap_err()),
                None => {
                    let p = arch.decode_positions(history.len() - 1, rope_delta);
                    text.decode_start(be, None, &p, &sampler.next_args())?
                }
            };
        }
    }

    /// Prefills the prompt, then samples until a stop token or the token budget, calling
    /// `on_token` with each new id as it is sampled.
    pub fn generate(&mut self, req: &Request, on_token: &mut dyn FnMut(u32)) -> Result<Output> {
        if req.prompt_tokens.is_empty() {
            return Err(Error::Prompt("the prompt is empty".into()));
        }
        let need = req.prompt_tokens.len() + req.max_new_tokens;
        if req.prompt_tokens.len() > self.opts.ctx {
            return Err(Error::Cache(format!(
                "the prompt has {} tokens but the KV cache holds {} (raise --ctx)",
                req.prompt_tokens.len(),
                self.opts.ctx
            )));
        }
        self.text.reset(self.be.as_mut())?;
        let mut sampler = Sampler::new(req.sampling)?;
        let t0 = Instant::now();
        let layout = self
            .model
            .arch
            .prompt_layout(&req.prompt_tokens, &req.vision)?;
        let (pos, rope_delta, pads) = (layout.positions, layout.rope_delta, layout.vision_rows);
        let tv = Instant::now();
        let embeds = self.encode_vision(&req.vision)?;
        let vision_s = tv.elapsed().as_secs_f64();
        let logits_last = match embeds {
            None => self
                .text
                .forward(self.be.as_mut(), &req.prompt_tokens, &pos, None)?,
            Some(t) => {
                let res = if pads.len() == t.shape.rows() {
                    self.text
                        .forward(self.be.as_mut(), &req.prompt_tokens, &pos, Some((t, &pads)))
                } else {
                    Err(Error::Prompt(format!(
                        "{} vision pad tokens for {} vision embeddings",
                        pads.len(),
                        t.shape.rows()
                    )))
                };
                self.be.free(t.buf);
                res?
            }
        };
        let prefill_s = t0.elapsed().as_secs_f64();

        let mut generated = Vec::new();
        let mut step_logits = Vec::new();
        let mut stop = StopReason::MaxTokens;
        let mut ttft_s = 0.0;
        let t1 = Instant::now();
        let mut history = req.prompt_tokens.clone();
        let cap_err = |ctx: usize| {
            Error::Cache(format!(
                "generation reached the KV cache capacity of {ctx} tokens (raise --ctx; this run needs up to {need})"
            ))
        };
        if req.max_new_tokens > 0 && !sampler.needs_host() && !req.record_logits {
            // On-device sampling: only token ids cross to the host. The first token comes from
            // the prefill logits (read anyway for `logits_last`) under the same definition.
            let first = sampler.sample(&logits_last, &history)?;
            ttft_s = t0.elapsed().as_secs_f64();
            stop = self.decode_on_device(
                req,
                first,
                rope_delta,
                &mut sampler,
                &mut generated,
                &mut history,
                on_token,
            )?;
        } else {
            let mut logits = logits_last.clone();
            while generated.len() < req.max_new_tokens {
                let tok = sampler.sample(&logits, &history)?;
                if generated.is_empty() {
                    ttft_s = t0.elapsed().as_secs_f64();
                }
                if req.record_logits {
                    step_logits.push(std::mem::take(&mut logits));
                }
                generated.push(tok);
                history.push(tok);
                on_token(tok);
                if req.stop_tokens.contains(&tok) {
                    stop = StopReason::Eos;
                    break;
                }
                if generated.len() == req.max_new_tokens {
                    break;
                }
                if history.len() > self.opts.ctx {
                    return Err(cap_err(self.opts.ctx));
                }
                let p = self
                    .model
                    .arch
                    .decode_positions(history.len() - 1, rope_delta);
                logits = self.text.forward(self.be.as_mut(), &[tok], &p, None)?;
            }
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let n_dec = generated.len().saturating_sub(1);
        let text = self.model.tokenizer.decode_skip_special(&generated)?;
        Ok(Output {
            prompt_tokens: req.prompt_tokens.clone(),
            generated_tokens: generated,
            text,
            stop,
            logits_last,
            step_logits,
            timings: Timings {
                load_s: self.load_s,
                media_decode_s: req.media_decode_s,
                preprocess_s: req.preprocess_s,
                vision_s,
                prefill_s,
                ttft_s,
                decode_s,
                prefill_tokens_per_s: req.prompt_tokens.len() as f64 / prefill_s.max(1e-9),
                decode_tokens_per_s: if n_dec > 0 {
                    n_dec as f64 / decode_s.max(1e-9)
                } else {
                    0.0
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model");
        let model = Model::load(&dir).unwrap();
        Engine::new(
            model,
            EngineOptions {
                device: Device::Cpu,
                act: DType::F32,
                ctx: 96,
                ..EngineOptions::default()
            },
        )
        .unwrap()
    }

    fn request(ids: &[u32], sampling: SamplingParams, host: bool, stops: &[u32]) -> Request {
        Request {
            prompt_tokens: ids.to_vec(),
            sampling,
            max_new_tokens: 8,
            stop_tokens: stops.to_vec(),
            record_logits: host,
            vision: vec![],
            media_decode_s: 0.0,
            preprocess_s: 0.0,
        }
    }

    /// A backend whose token reads complete later (like CUDA's pinned copies), so the engine
    /// decodes with one step of lookahead; everything else is the CPU backend underneath.
    struct Deferred {
        inner: Box<dyn Backend>,
        slots: Vec<PendingToken>,
        /// Reads of this slot deliver -1 (a row that could not be sampled).
        fail_slot: Option<usize>,
    }

    macro_rules! delegate {
        ($($f:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
            $(fn $f(&mut self, $($a: $t),*) -> $r { self.inner.$f($($a),*) })*
        };
    }

    impl Backend for Deferred {
        fn name(&self) -> String {
            format!("deferred {}", self.inner.name())
        }
        fn free(&mut self, buf: crate::backend::BufId) {
            self.inner.free(buf)
        }
        delegate! {
            load_weight(b: crate::backend::HostBytes) -> Result<crate::backend::BufId>;
            alloc(n: usize) -> Result<crate::backend::BufId>;
            write(b: crate::backend::BufId, o: usize, d: &[u8]) -> Result<()>;
            read(b: crate::backend::BufId, o: usize, d: &mut [u8]) -> Result<()>;
            sync() -> Result<()>;
            embedding(t: TRef, i: TRef, o: TRef) -> Result<()>;
            rms_norm(x: TRef, w: TRef, o: TRef, e: f32) -> Result<()>;
            matmul(x: TRef, w: TRef, b: Option<TRef>, o: TRef) -> Result<()>;
            add(a: TRef, b: TRef, o: TRef) -> Result<()>;
            swiglu(g: TRef, u: TRef, o: TRef) -> Result<()>;
            gelu(x: TRef, o: TRef) -> Result<()>;
            rope_mrope(x: TRef, p: TRef, o: TRef, m: crate::backend::MropeParams) -> Result<()>;
            rope_vision(x: TRef, p: TRef, o: TRef, t: f32) -> Result<()>;
            kv_append(k: TRef, v: TRef, kv: &crate::backend::PagedKv, l: usize) -> Result<()>;
            attention_paged(q: TRef, kv: &crate::backend::PagedKv, l: usize, o: TRef, s: f32) -> Result<()>;
            attention_varlen(q: TRef, k: TRef, v: TRef, c: TRef, o: TRef, s: f32) -> Result<()>;
            gather_rows(x: TRef, i: TRef, o: TRef) -> Result<()>;
            scatter_rows(x: TRef, i: TRef, o: TRef) -> Result<()>;
            cast(x: TRef, o: TRef) -> Result<()>;
            argmax(x: TRef, o: TRef) -> Result<()>;
            sample(l: TRef, a: TRef, o: TRef) -> Result<()>;
        }
        fn read_token_start(&mut self, t: TRef) -> Result<PendingToken> {
            // Every read becomes a slot of this wrapper (the inner backend may be another one).
            let p = self.inner.read_token_start(t)?;
            self.slots.push(p);
            Ok(PendingToken::Slot(self.slots.len() - 1))
        }
        fn read_token_wait(&mut self, p: PendingToken) -> Result<i32> {
            match p {
                PendingToken::Slot(s) => {
                    let v = self.inner.read_token_wait(self.slots[s])?;
                    Ok(if Some(s) == self.fail_slot { -1 } else { v })
                }
                p => self.inner.read_token_wait(p),
            }
        }
    }

    /// `record_logits` keeps the host sampler on the read-back logits; without it the backend
    /// samples. Both follow one definition, so greedy and seeded runs give the same tokens,
    /// and a stop token leaves the cache exactly as the host path does.
    #[test]
    fn backend_sampling_matches_host_sampling() {
        let mut e = engine();
        let ids = e.model.text_prompt("Hello, who are you?", None).unwrap();
        let seeded = SamplingParams {
            temperature: 0.8,
            top_k: Some(20),
            top_p: 0.9,
            seed: 7,
            repetition_penalty: 1.0,
        };
        let mut greedy_tokens = Vec::new();
        for sampling in [SamplingParams::default(), seeded] {
            let mut streamed = Vec::new();
            let host = e
                .generate(&request(&ids, sampling, true, &[]), &mut |_| {})
                .unwrap();
            let dev = e
                .generate(&request(&ids, sampling, false, &[]), &mut |t| {
                    streamed.push(t)
                })
                .unwrap();
            assert_eq!(dev.generated_tokens.len(), 8);
            assert_eq!(host.generated_tokens, dev.generated_tokens, "{sampling:?}");
            assert_eq!(streamed, dev.generated_tokens);
            assert!(dev.step_logits.is_empty());
            assert_eq!(dev.logits_last, host.logits_last);
            if sampling.is_greedy() {
                greedy_tokens = dev.generated_tokens.clone();
            }
        }
        // Stop at the third greedy token: same prefix, and the cache holds every token but the
        // last (which was never fed back), also after the lookahead step was discarded.
        let stop = greedy_tokens[2];
        let first = greedy_tokens.iter().position(|&t| t == stop).unwrap();
        let inner = std::mem::replace(&mut e.be, crate::backend::open(Device::Cpu).unwrap());
        e.be = Box::new(Deferred {
            inner,
            slots: Vec::new(),
            fail_slot: None,
        });
        let ahead = e
            .generate(&request(&ids, seeded, false, &[]), &mut |_| {})
            .unwrap();
        assert_eq!(e.text.kv_len(), ids.len() + 7);
        let host = e
            .generate(&request(&ids, seeded, true, &[]), &mut |_| {})
            .unwrap();
        assert_eq!(ahead.generated_tokens, host.generated_tokens);
        for host in [true, false] {
            let o = e
                .generate(
                    &request(&ids, SamplingParams::default(), host, &[stop]),
                    &mut |_| {},
                )
                .unwrap();
            assert_eq!(o.stop, StopReason::Eos);
            assert_eq!(o.generated_tokens, greedy_tokens[..=first]);
            assert_eq!(e.text.kv_len(), ids.len() + first);
        }
        // The second device token fails while the step after it is already launched: the
        // error surfaces and the cache keeps the prompt and the two tokens fed back, not the
        // step that consumed the failed token.
        let inner = std::mem::replace(&mut e.be, crate::backend::open(Device::Cpu).unwrap());
        e.be = Box::new(Deferred {
            inner,
            slots: Vec::new(),
            fail_slot: Some(1),
        });
        let err = e
            .generate(&request(&ids, seeded, false, &[]), &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("no finite logit"), "{err}");
        assert_eq!(e.text.kv_len(), ids.len() + 2);
    }
}
