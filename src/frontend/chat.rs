//! A conversation with the model that keeps its KV cache between questions (`reel chat`).
//!
//! Images and videos are decoded and preprocessed once, when they are added. Each question
//! renders the whole conversation with the chat template (so the tokens are exactly those a
//! fresh run of the same conversation prefills) and hands it to [`Engine::generate`]: the
//! engine's prefix cache holds the KV pages of earlier turns and its vision cache the embeddings
//! of media already encoded, so only the new tokens are prefilled.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::engine::sampling::SamplingParams;
use crate::engine::{Engine, Request, StopReason};
use crate::error::{Error, Result};
use crate::model::inputs::{MediaOptions, VisionInput};
use crate::prompt::messages::{ContentItem, ImageItem, Message, VideoItem, VisionKind};
use crate::prompt::{expand_pads, PadIds};

/// How the last answer was produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AnswerStats {
    /// Tokens of the whole conversation up to the answer.
    pub prompt_tokens: usize,
    /// Of those, tokens whose KV was already cached.
    pub reused_tokens: usize,
    /// Tokens prefilled for this answer.
    pub prefilled_tokens: usize,
    /// Whether the vision tower ran, and for how long.
    pub vision_run: bool,
    pub vision_s: f64,
    pub generated_tokens: usize,
    /// From the question to the first token.
    pub ttft_s: f64,
    /// Tokens per second after the first.
    pub decode_tokens_per_s: f64,
    pub stop: Option<StopReason>,
    /// The answer's token ids.
    pub tokens: Vec<u32>,
}

/// One answer: its text (special tokens left out) and how it was produced.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub stats: AnswerStats,
}

/// A conversation bound to an engine's KV cache.
pub struct Chat {
    system: Option<String>,
    media_opts: MediaOptions,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Completed turns.
    messages: Vec<Message>,
    /// Media for the next question, with their prepared inputs.
    pending: Vec<(ContentItem, VisionInput)>,
    /// Prepared inputs of the media in `messages`, in prompt order.
    vision: Vec<VisionInput>,
    /// Media given at the start, kept across `/reset`.
    initial: Vec<(ContentItem, VisionInput)>,
    pub stats: Vec<AnswerStats>,
}

impl Chat {
    pub fn new(
        system: Option<String>,
        sampling: SamplingParams,
        max_new_tokens: usize,
    ) -> Result<Chat> {
        sampling.validate()?;
        Ok(Chat {
            system,
            media_opts: MediaOptions::default(),
            sampling,
            max_new_tokens,
            messages: Vec::new(),
            pending: Vec::new(),
            vision: Vec::new(),
            initial: Vec::new(),
            stats: Vec::new(),
        })
    }

    /// Decodes and preprocesses an image or a video now; it goes into the next question.
    /// Returns a one-line description of it.
    pub fn add_media(&mut self, engine: &Engine, kind: VisionKind, path: &Path) -> Result<String> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let item = match kind {
            VisionKind::Image => ContentItem::Image(ImageItem {
                path,
                ..ImageItem::default()
            }),
            VisionKind::Video => ContentItem::Video(VideoItem {
                path,
                ..VideoItem::default()
            }),
        };
        let msg = [Message::new("user", vec![item.clone()])];
        let mut p = engine
            .model
            .prepare(&msg, self.system.as_deref(), &self.media_opts)?;
        let v = p.vision.pop().expect("one vision item was prepared");
        let frames = v
            .frames_sampled
            .map(|n| format!("{n} frames, "))
            .unwrap_or_default();
        let desc = format!(
            "{}: {frames}{}x{} px, {} visual tokens",
            v.path.display(),
            v.size.1,
            v.size.0,
            v.tokens
        );
        self.pending.push((item, v));
        Ok(desc)
    }

    /// Marks the media added so far as the ones `/reset` keeps.
    pub fn keep_initial_media(&mut self) {
        self.initial = self.pending.clone();
    }

    /// Starts over: no turns, only the initial media pending, an empty cache.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.vision.clear();
        self.pending = self.initial.clone();
        self.stats.clear();
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The conversation as JSON: `system`, the `messages` in the qwen-vl-utils format that
    /// `reel run --messages` reads, and the statistics of each answer.
    pub fn transcript(&self) -> Value {
        json!({
            "system": self.system,
            "messages": self.messages.iter().map(message_json).collect::<Vec<_>>(),
            "answers": self.stats,
        })
    }

    /// Asks a question, streaming the answer's tokens to `on_token`.
    pub fn ask(
        &mut self,
        engine: &mut Engine,
        question: &str,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Answer> {
        let t0 = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let mut content: Vec<ContentItem> = pending.iter().map(|(c, _)| c.clone()).collect();
        content.push(ContentItem::Text(question.to_string()));
        self.messages.push(Message::new("user", content));
        let n_vision = self.vision.len();
        self.vision.extend(pending.iter().map(|(_, v)| v.clone()));
        match self.answer(engine, t0, on_token) {
            Ok(a) => {
                self.messages.push(Message::new(
                    "assistant",
                    vec![ContentItem::Text(a.text.clone())],
                ));
                self.stats.push(a.stats.clone());
                Ok(a)
            }
            Err(e) => {
                // The question is withdrawn; its media wait for the next one.
                self.messages.pop();
                self.vision.truncate(n_vision);
                self.pending = pending;
                Err(e)
            }
        }
    }

    fn answer(
        &mut self,
        engine: &mut Engine,
        t0: Instant,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Answer> {
        let model = &engine.model;
        let ids = model.render(&self.messages, self.system.as_deref())?;
        let pads = PadIds::from_tokenizer(&model.tokenizer)?;
        let counts: Vec<(VisionKind, usize)> =
            self.vision.iter().map(|v| (v.kind, v.tokens)).collect();
        let full = expand_pads(&ids, pads, &counts)?;
        let ctx = engine.opts.ctx;
        if full.len() >= ctx {
            return Err(Error::Cache(format!(
                "the conversation has {} tokens but the KV cache holds {ctx} (raise --ctx, or /reset)",
                full.len()
            )));
        }
        let max_new = self.max_new_tokens.min(ctx - full.len()).max(1);
        let stops = model.eos_tokens();
        // The whole conversation goes to the engine each turn: its prefix cache keeps the KV
        // pages of earlier turns (and its vision cache their embeddings), so only the new
        // tokens are prefilled and the tower does not run again for media it has seen.
        {
            let req = Request {
                prompt_tokens: full.clone(),
                sampling: self.sampling,
                max_new_tokens: max_new,
                stop_tokens: stops,
                record_logits: false,
                vision: self.vision.clone(),
                media_decode_s: 0.0,
                preprocess_s: 0.0,
            };
            let t_gen = Instant::now();
            let out = engine.generate(&req, on_token)?;
            let t = &out.timings;
            Ok(Answer {
                stats: AnswerStats {
                    prompt_tokens: full.len(),
                    reused_tokens: t.cached_tokens,
                    prefilled_tokens: full.len() - t.cached_tokens,
                    vision_run: t.media_reused < self.vision.len(),
                    vision_s: t.vision_s,
                    generated_tokens: out.generated_tokens.len(),
                    ttft_s: (t_gen - t0).as_secs_f64() + t.ttft_s,
                    decode_tokens_per_s: t.decode_tokens_per_s,
                    stop: Some(out.stop),
                    tokens: out.generated_tokens,
                },
                text: out.text,
            })
        }
    }
}

/// A message in the qwen-vl-utils format (paths as given, settings left to the defaults).
fn message_json(m: &Message) -> Value {
    let content: Vec<Value> = m
        .content
        .iter()
        .map(|c| match c {
            ContentItem::Text(t) => json!({"type": "text", "text": t}),
            ContentItem::Image(i) => json!({"type": "image", "image": path_str(&i.path)}),
            ContentItem::Video(v) => json!({"type": "video", "video": path_str(&v.path)}),
        })
        .collect();
    json!({"role": m.role, "content": content})
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
