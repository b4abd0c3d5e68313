//! A conversation with the model that keeps its KV cache between questions (`reel chat`).
//!
//! Images and videos are decoded and preprocessed once, when they are added. Each question
//! renders the whole conversation with the chat template (so the tokens are exactly those a
//! fresh run of the same conversation prefills) and submits it to the engine: the engine's
//! prefix cache holds the KV pages of earlier turns and its vision cache the embeddings of media
//! already encoded, so only the new tokens are prefilled.
//!
//! An answer can be interrupted (a flag the caller sets, from a Ctrl-C handler): the flag is
//! checked between the engine's steps and [`Engine::cancel`] ends the request at the next one.
//! What was generated so far stays in the conversation as the assistant's turn (its statistics
//! say `stop: cancelled`), so the next question still renders exactly the conversation on
//! screen; an answer interrupted before its first token withdraws the question instead, and its
//! media wait for the next one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

use crate::engine::sampling::SamplingParams;
use crate::engine::{Engine, Event, Request, StopReason};
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
    /// `cancelled` when the answer was interrupted.
    pub stop: Option<StopReason>,
    /// The answer's token ids.
    pub tokens: Vec<u32>,
}

impl AnswerStats {
    pub fn interrupted(&self) -> bool {
        self.stop == Some(StopReason::Cancelled)
    }
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
    /// Statistics of each assistant turn in `messages`.
    pub stats: Vec<AnswerStats>,
    /// The last question's, also when it was withdrawn (interrupted before its first token).
    pub last: Option<AnswerStats>,
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
            last: None,
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
        self.last = None;
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

    /// Asks a question, streaming the answer's tokens to `on_token`. Setting `interrupt`
    /// stops the answer at the engine's next step (see the module docs); the caller clears it.
    pub fn ask(
        &mut self,
        engine: &mut Engine,
        question: &str,
        on_token: &mut dyn FnMut(u32),
        interrupt: &AtomicBool,
    ) -> Result<Answer> {
        let t0 = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let mut content: Vec<ContentItem> = pending.iter().map(|(c, _)| c.clone()).collect();
        content.push(ContentItem::Text(question.to_string()));
        self.messages.push(Message::new("user", content));
        let n_vision = self.vision.len();
        self.vision.extend(pending.iter().map(|(_, v)| v.clone()));
        let res = self.answer(engine, t0, on_token, interrupt);
        if let Ok(a) = &res {
            self.last = Some(a.stats.clone());
            if !a.stats.tokens.is_empty() || !a.stats.interrupted() {
                self.messages.push(Message::new(
                    "assistant",
                    vec![ContentItem::Text(a.text.clone())],
                ));
                self.stats.push(a.stats.clone());
                return res;
            }
        }
        // Failed, or interrupted before the first token: the question is withdrawn and its
        // media wait for the next one.
        self.messages.pop();
        self.vision.truncate(n_vision);
        self.pending = pending;
        res
    }

    fn answer(
        &mut self,
        engine: &mut Engine,
        t0: Instant,
        on_token: &mut dyn FnMut(u32),
        interrupt: &AtomicBool,
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
        let out = run_request(engine, req, on_token, interrupt)?;
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

/// [`Engine::generate`] that also watches `interrupt` between steps and then cancels the
/// request through the engine (whose output so far then comes back with
/// [`StopReason::Cancelled`]). The chat's engine runs nothing else, so other requests' events
/// do not occur.
fn run_request(
    engine: &mut Engine,
    req: Request,
    on_token: &mut dyn FnMut(u32),
    interrupt: &AtomicBool,
) -> Result<crate::engine::Output> {
    let id = engine.submit(req)?;
    let mut cancelled = false;
    loop {
        if !cancelled && interrupt.load(Ordering::SeqCst) {
            engine.cancel(id);
            cancelled = true;
        }
        let events = match engine.step() {
            Ok(ev) => ev,
            Err(e) => {
                // Retire the request at the next step rather than leave it running.
                engine.cancel(id);
                return Err(e);
            }
        };
        for ev in events {
            match ev {
                Event::Token { id: i, token } if i == id => on_token(token),
                Event::Finished { id: i, output } if i == id => return Ok(*output),
                Event::Failed { id: i, error } if i == id => return Err(error),
                _ => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Device, EngineOptions};
    use crate::model::Model;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn engine() -> Engine {
        let model = Model::load(&root().join("model")).unwrap();
        let opts = EngineOptions {
            device: Device::Cpu,
            ctx: 1024,
            ..EngineOptions::default()
        };
        Engine::new(model, opts).unwrap()
    }

    /// A chat with one image pending.
    fn chat(e: &Engine) -> Chat {
        let mut c = Chat::new(None, SamplingParams::default(), 12).unwrap();
        let png = root().join("eval/media/scene.png");
        c.add_media(e, VisionKind::Image, &png).unwrap();
        c
    }

    const Q: &str = "What is in the picture?";

    /// Interrupted before its first token (the flag set before the question), the question is
    /// withdrawn: no turn, the image pending again, `last` saying what happened. Asked again,
    /// it gets the answer a fresh chat gets.
    #[test]
    fn interrupted_before_the_first_token_the_question_is_withdrawn() {
        let mut e = engine();
        let mut c = chat(&e);
        let stop = AtomicBool::new(true);
        let a = c
            .ask(
                &mut e,
                Q,
                &mut |t| panic!("token {t} after the interrupt"),
                &stop,
            )
            .unwrap();
        assert!(a.stats.interrupted());
        assert_eq!(a.stats.generated_tokens, 0);
        assert!(c.messages().is_empty() && c.stats.is_empty());
        assert_eq!(c.pending.len(), 1);
        assert!(c.vision.is_empty());
        assert!(c.last.as_ref().unwrap().interrupted());

        let go = AtomicBool::new(false);
        let b = c.ask(&mut e, Q, &mut |_| {}, &go).unwrap();
        assert!(!b.stats.interrupted());
        // The cancelled request never reached the vision tower.
        assert!(b.stats.vision_run);
        assert_eq!(c.messages().len(), 2);
        let mut e2 = engine();
        let fresh = chat(&e2).ask(&mut e2, Q, &mut |_| {}, &go).unwrap();
        assert_eq!(b.stats.tokens, fresh.stats.tokens);
        assert_eq!(b.text, fresh.text);
    }

    /// The flag set from the token callback (as a Ctrl-C during the answer) stops the answer
    /// at the engine's next step: exactly the tokens streamed so far, the first ones of the
    /// uninterrupted answer, stay as the assistant's turn; the next question equals a fresh
    /// chat of the same conversation.
    #[test]
    fn interrupted_mid_answer_the_partial_answer_stays() {
        let mut e = engine();
        let go = AtomicBool::new(false);
        let full = chat(&e).ask(&mut e, Q, &mut |_| {}, &go).unwrap();
        assert!(full.stats.tokens.len() > 3, "{:?}", full.stats);

        let mut e = engine();
        let mut c = chat(&e);
        let stop = AtomicBool::new(false);
        let mut streamed = Vec::new();
        let mut on_token = |t: u32| {
            streamed.push(t);
            if streamed.len() == 3 {
                stop.store(true, Ordering::SeqCst);
            }
        };
        let a = c.ask(&mut e, Q, &mut on_token, &stop).unwrap();
        assert!(a.stats.interrupted());
        assert_eq!(a.stats.tokens, streamed);
        assert_eq!(a.stats.tokens, full.stats.tokens[..3]);
        assert_eq!(c.messages().len(), 2);
        assert_eq!(c.stats.len(), 1);
        assert_eq!(c.transcript()["answers"][0]["stop"], "cancelled");

        let next = c.ask(&mut e, "And then?", &mut |_| {}, &go).unwrap();
        assert!(!next.stats.interrupted());
        // Replayed on a fresh engine: the same conversation, the same answer.
        let mut e2 = engine();
        let mut c2 = chat(&e2);
        c2.messages = c.messages[..3].to_vec();
        c2.vision = std::mem::take(&mut c2.pending)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let again = c2
            .answer(&mut e2, Instant::now(), &mut |_| {}, &go)
            .unwrap();
        assert_eq!(next.stats.tokens, again.stats.tokens);
        assert_eq!(again.stats.reused_tokens, 0);
    }
}
