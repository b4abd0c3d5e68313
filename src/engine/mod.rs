//! A generation session: media -> vision -> prefill -> decode, sampling, streaming, timings.

pub mod bench;
pub mod inputs;
pub mod sampling;

use crate::backend::{cpu::CpuBackend, Backend, TRef};
use crate::error::{Error, Result};
use crate::graph::Executor;
use crate::kv::{KvCache, KvSpec};
use crate::model::config::{GenerationConfig, ModelConfig, TextConfig};
use crate::model::text::{self, TextPass, TextRefs};
use crate::model::vision::{self, VisionWeightRefs};
use crate::model::weights::TextWeights;
use crate::model::{positions, Model};
use crate::prompt::Tokenizer;
use crate::store::TensorInfo;
use crate::tensor::{DType, Shape};
use sampling::{Sampler, SamplingParams};
use std::time::Instant;

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// CUDA when a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: Device,
    /// Activation (and KV cache) type: BF16 follows the reference's bf16 run, F32 its f32 run.
    pub act: DType,
    /// KV cache capacity in tokens.
    pub ctx: usize,
    pub page_size: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: Device::Auto,
            act: DType::BF16,
            ctx: 8192,
            page_size: 16,
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
    pub vision: Vec<inputs::VisionInput>,
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

/// The language model on a backend: its weights, KV cache and the decode-step graph.
pub struct TextRunner {
    pub cfg: TextConfig,
    pub act: DType,
    refs: TextRefs,
    kv: KvCache,
    decode: Option<Executor>,
}

impl TextRunner {
    pub fn new(
        be: &mut dyn Backend,
        cfg: TextConfig,
        refs: TextRefs,
        act: DType,
        ctx: usize,
        page_size: usize,
    ) -> Result<TextRunner> {
        let spec = KvSpec {
            n_layers: cfg.num_hidden_layers,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            dtype: act,
        };
        let kv = KvCache::new(be, spec, ctx, page_size)?;
        Ok(TextRunner {
            cfg,
            act,
            refs,
            kv,
            decode: None,
        })
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
        if reuse && self.decode.is_none() {
            let pass = TextPass {
                tokens: 1,
                logit_rows: 1,
                vision: None,
                taps: false,
            };
            let g = text::build(&self.cfg, &self.refs, &pass, self.act);
            self.decode = Some(Executor::new(be, g)?);
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
            let g = text::build(&self.cfg, &self.refs, &pass, self.act);
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
    vision: Option<VisionWeightRefs>,
    pub load_s: f64,
}

/// Opens the backend a device choice names.
pub fn open_backend(device: Device) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(CpuBackend::new())),
        Device::Cuda(i) => crate::backend::cuda::open(i),
        Device::Auto => {
            Ok(crate::backend::cuda::open(0).unwrap_or_else(|_| Box::new(CpuBackend::new())))
        }
    }
}

fn upload(be: &mut dyn Backend, t: &TensorInfo) -> Result<TRef> {
    let buf = be.load_weight(t.bytes.clone())?;
    Ok(TRef::new(buf, 0, t.dtype, Shape::new(&t.shape)))
}

/// Uploads the language model's weights.
pub fn upload_text(be: &mut dyn Backend, w: &TextWeights) -> Result<TextRefs> {
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        layers.push(text::LayerRefs {
            input_norm: upload(be, &l.input_norm)?,
            q: upload(be, &l.q)?,
            q_bias: upload(be, &l.q_bias)?,
            k: upload(be, &l.k)?,
            k_bias: upload(be, &l.k_bias)?,
            v: upload(be, &l.v)?,
            v_bias: upload(be, &l.v_bias)?,
            o: upload(be, &l.o)?,
            post_norm: upload(be, &l.post_norm)?,
            gate: upload(be, &l.gate)?,
            up: upload(be, &l.up)?,
            down: upload(be, &l.down)?,
        });
    }
    Ok(TextRefs {
        embed: upload(be, &w.embed)?,
        layers,
        norm: upload(be, &w.norm)?,
        lm_head: upload(be, &w.lm_head)?,
    })
}

impl Engine {
    /// Loads a model and puts its language model on the chosen backend.
    pub fn new(model: Model, opts: EngineOptions) -> Result<Engine> {
        let t0 = Instant::now();
        if !matches!(opts.act, DType::F32 | DType::BF16) {
            return Err(Error::flag("--dtype", "activations must be f32 or bf16"));
        }
        if opts.ctx == 0 {
            return Err(Error::flag(
                "--ctx",
                "the KV cache needs at least one token",
            ));
        }
        let mut be = open_backend(opts.device)?;
        let weights = TextWeights::load(model.store.as_ref(), &model.config)?;
        let text_refs = upload_text(be.as_mut(), &weights)?;
        let text = TextRunner::new(
            be.as_mut(),
            model.config.text.clone(),
            text_refs,
            opts.act,
            opts.ctx,
            opts.page_size,
        )?;
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

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.model.generation
    }

    /// Runs the vision tower over every item and returns the merged embeddings [n, hidden] as a
    /// backend tensor in the activation type (None when there is nothing to encode).
    fn encode_vision(&mut self, items: &[inputs::VisionInput]) -> Result<Option<TRef>> {
        if items.is_empty() {
            return Ok(None);
        }
        if self.vision.is_none() {
            let w = VisionWeightRefs::load(
                self.be.as_mut(),
                self.model.store.as_ref(),
                &self.model.config,
            )?;
            self.vision = Some(w);
        }
        let w = self.vision.as_ref().unwrap();
        let grids: Vec<[usize; 3]> = items.iter().map(|v| v.rows.grid_thw).collect();
        let mut rows = Vec::new();
        for v in items {
            rows.extend_from_slice(&v.rows.rows);
        }
        let embeds = vision::encode(
            self.be.as_mut(),
            w,
            &self.model.config.vision,
            &rows,
            &grids,
            self.opts.act,
        )?;
        let hidden = self.model.config.text.hidden_size;
        let n = embeds.len() / hidden;
        let bytes: Vec<u8> = match self.opts.act {
            DType::F32 => bytemuck::cast_slice(&embeds).to_vec(),
            _ => embeds
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
        };
        let buf = self.be.alloc(bytes.len())?;
        self.be.write(buf, 0, &bytes)?;
        Ok(Some(TRef::new(
            buf,
            0,
            self.opts.act,
            Shape::new(&[n, hidden]),
        )))
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
        let spans: Vec<_> = req.vision.iter().map(|v| v.span()).collect();
        let toks = self.model.config.tokens.clone();
        let (rows, rope_delta) = positions::rope_index(
            &req.prompt_tokens,
            &spans,
            toks.image_pad,
            toks.video_pad,
            self.model.config.vision.spatial_merge_size,
            self.model.config.vision.tokens_per_second,
            false,
        )?;
        let pos = positions::to_row_major(&rows);
        let tv = Instant::now();
        let embeds = self.encode_vision(&req.vision)?;
        let vision_s = tv.elapsed().as_secs_f64();
        let logits_last = match embeds {
            None => self
                .text
                .forward(self.be.as_mut(), &req.prompt_tokens, &pos, None)?,
            Some(t) => {
                let pads: Vec<i32> = req
                    .prompt_tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, &id)| id == toks.image_pad || id == toks.video_pad)
                    .map(|(i, _)| i as i32)
                    .collect();
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
        let mut logits = logits_last.clone();
        let mut stop = StopReason::MaxTokens;
        let mut ttft_s = 0.0;
        let t1 = Instant::now();
        let mut history = req.prompt_tokens.clone();
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
                return Err(Error::Cache(format!(
                    "generation reached the KV cache capacity of {} tokens (raise --ctx; this run needs up to {need})",
                    self.opts.ctx
                )));
            }
            let p = positions::decode_positions(history.len() - 1, rope_delta);
            logits = self.text.forward(self.be.as_mut(), &[tok], &p, None)?;
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
