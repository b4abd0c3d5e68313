//! Entry points for fuzzing every parser of untrusted input, shared by the libFuzzer targets
//! (`fuzz/`) and the replay test (`tests/fuzz_replay.rs`), so CI exercises the same code the
//! fuzzer ran.
//!
//! Each [`Target`] takes the bytes of one file and runs them through the path the CLI takes
//! with such a file: parsing, validation, and what is done next with a file that passes
//! (a config.json's tensors are loaded from the fixture checkpoint, a tokenizer encodes and
//! decodes, a template renders, a video is sampled and resized). An `Err` is a correct
//! outcome; a panic, an abort or a hang is a bug.
//!
//! [`mutate`] is the structure-aware mutator of the replay loop: bit flips, boundary integers
//! in binary fields, truncation, splicing, and JSON-aware edits of numbers, strings and
//! brackets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::media::image::ImageLimits;
use crate::media::jpeg::JpegDecoder;
use crate::media::{self, ImageRequest, Preset, VideoRequest};
use crate::model::config::{GenerationConfig, PreprocessorConfig};
use crate::model::qwen2_5_vl::weights::{TextWeights, VisionWeights};
use crate::model::qwen2_5_vl::ModelConfig;
use crate::prompt::messages::{parse_messages, ContentItem, ImageItem, Message, VideoItem};
use crate::prompt::{encode_prompt, ChatTemplate, RenderOptions, Tokenizer};
use crate::store::gguf::{GgufModel, GgufStore};
use crate::store::{safetensors, SafetensorsStore, WeightStore};

/// One kind of untrusted file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A safetensors shard: header length, header JSON, data ranges.
    Safetensors,
    /// model.safetensors.index.json, beside the fixture checkpoint's shards.
    SafetensorsIndex,
    /// config.json (also read as generation_config.json and preprocessor_config.json), then
    /// the fixture checkpoint's tensors checked and assembled against it.
    Config,
    /// tokenizer.json, then encoding and decoding.
    Tokenizer,
    /// A Jinja chat template (and the same bytes as chat_template.json), then rendering.
    Template,
    /// A `--messages` file, rendered and tokenized.
    Messages,
    /// An image file, decoded and resized.
    Image,
    /// A video file, probed, sampled, decoded and resized through FFmpeg.
    Video,
    /// A GGUF model file: header, metadata, tensor infos, data ranges, then the embedded
    /// config, tokenizer and template as `reel info` / `reel run` load them.
    Gguf,
    /// A Video-R1 evaluation file.
    EvalData,
}

impl Target {
    pub const ALL: [Target; 10] = [
        Target::Safetensors,
        Target::SafetensorsIndex,
        Target::Config,
        Target::Tokenizer,
        Target::Template,
        Target::Messages,
        Target::Image,
        Target::Video,
        Target::Gguf,
        Target::EvalData,
    ];

    /// The name of the target's folder under tests/fuzz and of its fuzz binary.
    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::SafetensorsIndex => "safetensors_index",
            Target::Config => "config",
            Target::Tokenizer => "tokenizer",
            Target::Template => "template",
            Target::Messages => "messages",
            Target::Image => "image",
            Target::Video => "video",
            Target::Gguf => "gguf",
            Target::EvalData => "eval_data",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the input is text, for the mutator.
    fn is_text(self) -> bool {
        !matches!(
            self,
            Target::Safetensors | Target::Image | Target::Video | Target::Gguf
        )
    }
}

/// What the targets share: the fixture checkpoint (whose tensors a fuzzed config.json is
/// checked against, whose shards a fuzzed index names, whose tokenizer encodes fuzzed
/// messages) and a scratch folder for targets that need a file on disk. The folder is
/// removed on drop.
pub struct Context {
    model_dir: PathBuf,
    scratch: PathBuf,
    store: Arc<SafetensorsStore>,
    tokenizer: Tokenizer,
}

impl Context {
    /// `model_dir` is the fixture checkpoint (tests/fixtures/model).
    pub fn new(model_dir: &Path) -> Result<Context> {
        let scratch = std::env::temp_dir().join(format!(
            "reel-fuzz-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(scratch.join("index")).map_err(|e| Error::io(&scratch, e))?;
        std::fs::create_dir_all(scratch.join("template")).map_err(|e| Error::io(&scratch, e))?;
        // The index target's folder holds links to the fixture shards, so a fuzzed index
        // opens real shards without copying them.
        for ent in std::fs::read_dir(model_dir).map_err(|e| Error::io(model_dir, e))? {
            let p = ent.map_err(|e| Error::io(model_dir, e))?.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                let link = scratch.join("index").join(p.file_name().unwrap());
                let target = std::fs::canonicalize(&p).map_err(|e| Error::io(&p, e))?;
                link_or_copy(&target, &link)?;
            }
        }
        Ok(Context {
            model_dir: model_dir.to_path_buf(),
            store: Arc::new(SafetensorsStore::open_dir(model_dir)?),
            tokenizer: Tokenizer::from_model_dir(model_dir)?,
            scratch,
        })
    }

    /// The fixture checkpoint this context was made from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.scratch.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

#[cfg(unix)]
fn link_or_copy(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e))
}

#[cfg(not(unix))]
fn link_or_copy(target: &Path, link: &Path) -> Result<()> {
    std::fs::copy(target, link)
        .map(|_| ())
        .map_err(|e| Error::io(link, e))
}

/// Runs one input through `target`.
pub fn run(target: Target, cx: &Context, bytes: &[u8]) -> Result<()> {
    match target {
        Target::Safetensors => safetensors_file(bytes),
        Target::SafetensorsIndex => safetensors_index(cx, bytes),
        Target::Config => config(cx, bytes),
        Target::Tokenizer => tokenizer(bytes),
        Target::Template => template(cx, bytes),
        Target::Messages => messages(cx, bytes),
        Target::Image => image(bytes),
        Target::Video => video(cx, bytes),
        Target::Gguf => gguf(bytes),
        Target::EvalData => eval_data(cx, bytes),
    }
}

fn text<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| Error::file(origin, format!("not UTF-8: {e}")))
}

pub fn safetensors_file(bytes: &[u8]) -> Result<()> {
    safetensors::check_shard(bytes, Path::new("fuzz.safetensors")).map(|_| ())
}

pub fn safetensors_index(cx: &Context, bytes: &[u8]) -> Result<()> {
    let p = cx.write("index/model.safetensors.index.json", bytes)?;
    let store = SafetensorsStore::open_index(&p)?;
    for name in store.names() {
        store.lookup(&name)?;
    }
    crate::model::checkpoint::store_summary(&store);
    Ok(())
}

/// The config.json text as the loader sees it, then every tensor of the fixture checkpoint
/// checked and assembled by that configuration (what `reel run` does before computing).
pub fn config(cx: &Context, bytes: &[u8]) -> Result<()> {
    let origin = Path::new("config.json");
    let t = text(bytes, "config.json")?;
    // The same text through the two side-config parsers (their errors are expected here).
    let _ = GenerationConfig::from_json(t, Path::new("generation_config.json"));
    let _ = PreprocessorConfig::from_json(t, Path::new("preprocessor_config.json"));
    let cfg = ModelConfig::from_json(t, origin)?;
    cfg.summary();
    TextWeights::load(cx.store.as_ref(), &cfg)?;
    VisionWeights::load(cx.store.as_ref(), &cfg)?;
    Ok(())
}

const SAMPLE_TEXT: &str =
    "Hello <|im_start|>user\nWhat is 12+30? ünïcödé 😀 <think>x</think><|im_end|>";

pub fn tokenizer(bytes: &[u8]) -> Result<()> {
    let tok = Tokenizer::from_bytes(bytes, "tokenizer.json")?;
    exercise_tokenizer(&tok)
}

fn exercise_tokenizer(tok: &Tokenizer) -> Result<()> {
    let ids = tok.encode(SAMPLE_TEXT)?;
    tok.decode(&ids)?;
    tok.decode_skip_special(&ids)?;
    let mut stream = tok.stream_decoder(false);
    for &id in ids.iter().take(64) {
        stream.push(id)?;
    }
    stream.flush()?;
    // Ids past the vocabulary decode to nothing rather than failing.
    let n = tok.vocab_size() as u32;
    tok.decode(&[n, n.saturating_add(1), u32::MAX])?;
    for id in [0, 1, n.saturating_sub(1)] {
        tok.id_to_token(id);
    }
    tok.try_token_id("<|image_pad|>");
    Ok(())
}

/// A conversation with every kind of item, for templates to render.
fn sample_conversation(base: &Path) -> Vec<Message> {
    vec![
        Message::text("system", "You are terse."),
        Message::new(
            "user",
            vec![
                ContentItem::Image(ImageItem {
                    path: base.join("a.png"),
                    ..ImageItem::default()
                }),
                ContentItem::Video(VideoItem {
                    path: base.join("b.mp4"),
                    ..VideoItem::default()
                }),
                ContentItem::Text("What happens?".into()),
            ],
        ),
        Message::text("assistant", "<think>x</think><answer>A</answer>"),
        Message::text("user", "Again."),
    ]
}

fn render_both(t: &ChatTemplate, messages: &[Message]) -> Result<()> {
    t.render(messages, &RenderOptions::default())?;
    t.render(
        messages,
        &RenderOptions {
            add_generation_prompt: false,
            add_vision_id: true,
        },
    )?;
    Ok(())
}

/// The bytes as a Jinja template, and as chat_template.json in a checkpoint folder.
pub fn template(cx: &Context, bytes: &[u8]) -> Result<()> {
    let conv = sample_conversation(&cx.scratch);
    let direct = text(bytes, "chat_template.jinja")
        .and_then(|src| ChatTemplate::from_source(src, "chat_template.jinja"))
        .and_then(|t| render_both(&t, &conv));
    cx.write("template/chat_template.json", bytes)?;
    let from_dir = ChatTemplate::from_model_dir(cx.scratch.join("template"))
        .and_then(|t| render_both(&t, &conv));
    direct.and(from_dir)
}

pub fn messages(cx: &Context, bytes: &[u8]) -> Result<()> {
    let t = text(bytes, "messages.json")?;
    let msgs = parse_messages(t, &cx.scratch)?;
    let template = ChatTemplate::stock();
    encode_prompt(&cx.tokenizer, &template, &msgs, &RenderOptions::default())?;
    Ok(())
}

/// Decoder limits for fuzzing: a quarter of the default pixel budget, so a fuzzed header
/// that claims a huge (but allowed) size does not make every run allocate gigabytes.
fn fuzz_image_limits() -> ImageLimits {
    ImageLimits {
        max_pixels: 1 << 24,
        max_alloc: 1 << 28,
    }
}

pub fn image(bytes: &[u8]) -> Result<()> {
    let origin = Path::new("image");
    let limits = fuzz_image_limits();
    let preset = Preset::video_r1();
    let req = ImageRequest::default();
    // Both JPEG decoders (libjpeg-turbo when the library is installed, and the pure-Rust one).
    let mut first = Ok(());
    for jpeg in [JpegDecoder::Auto, JpegDecoder::Image] {
        let r = media::load_image_bytes(bytes, origin, &limits, jpeg, &preset, &req).map(|_| ());
        if first.is_ok() {
            first = r;
        }
        if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            break;
        }
    }
    first
}

/// FFmpeg time budget per fuzzed video (real files get [`media::ffmpeg_guard::budget`]).
#[cfg(feature = "video")]
const VIDEO_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(feature = "video")]
pub fn video(cx: &Context, bytes: &[u8]) -> Result<()> {
    media::ffmpeg_guard::set_thread_budget(Some(VIDEO_BUDGET));
    let p = cx.write("video.mp4", bytes)?;
    let probed = media::decode::probe(&p);
    let loaded = media::load_video(&p, &Preset::video_r1(), &VideoRequest::default());
    media::ffmpeg_guard::set_thread_budget(None);
    probed.and(loaded).map(|_| ())
}

#[cfg(not(feature = "video"))]
pub fn video(cx: &Context, bytes: &[u8]) -> Result<()> {
    let p = cx.write("video.mp4", bytes)?;
    media::load_video(&p, &Preset::video_r1(), &VideoRequest::default()).map(|_| ())
}

/// A GGUF file as `reel info` and `reel run` open it: the store, the model keys, the embedded
/// config.json (and its tensors checked in the file), tokenizer, template and side configs.
pub fn gguf(bytes: &[u8]) -> Result<()> {
    let origin = Path::new("model.gguf");
    let store = GgufStore::from_bytes(origin, bytes)?;
    crate::model::checkpoint::store_summary(&store);
    for t in store.tensors() {
        store.bytes_of(t);
    }
    let m = GgufModel::from_store(store)?;
    let cfg = ModelConfig::from_json(
        m.config_json(),
        &crate::model::checkpoint::gguf_config_origin(&m),
    );
    let tok = Tokenizer::from_bytes(m.tokenizer_json().as_bytes(), "model.gguf:tokenizer.json");
    let template = m
        .chat_template()
        .map(|t| ChatTemplate::from_source(t, "model.gguf (chat template)"));
    if let Some(t) = m.generation_config_json() {
        GenerationConfig::from_json(t, Path::new("model.gguf:generation_config.json"))?;
    }
    if let Some(t) = m.preprocessor_config_json() {
        PreprocessorConfig::from_json(t, Path::new("model.gguf:preprocessor_config.json"))?;
    }
    let cfg = cfg?;
    let tok = tok?;
    exercise_tokenizer(&tok)?;
    if let Some(t) = template {
        render_both(&t?, &sample_conversation(Path::new("/")))?;
    }
    TextWeights::load(m.store(), &cfg)?;
    VisionWeights::load(m.store(), &cfg)?;
    Ok(())
}

pub fn eval_data(cx: &Context, bytes: &[u8]) -> Result<()> {
    let t = text(bytes, "eval.json")?;
    let entries =
        crate::eval::data::parse(t, &cx.scratch, true).map_err(|m| Error::file("eval.json", m))?;
    for e in &entries {
        e.key();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutation.

/// A small deterministic generator (xorshift64*), so a replay run is reproducible from its
/// seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Integers that break size arithmetic: zero, one, the edges of i32/u32, 2^40 and u64::MAX.
pub const BOUNDARY_INTS: [u64; 10] = [
    0,
    1,
    2,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// The same values (and a few non-integers) as JSON number text.
const BOUNDARY_NUMBERS: [&str; 14] = [
    "0",
    "1",
    "-1",
    "2147483647",
    "4294967296",
    "1099511627776",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-0",
    "2.5",
    "1e-300",
    "9007199254740993",
    "3.0",
];

/// Fragments a text mutation may insert (JSON structure, Jinja syntax, media keys).
const TOKENS: [&str; 28] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "\"\"",
    "{}",
    "[]",
    "{%",
    "%}",
    "{{",
    "}}",
    "{% for i in range(99999) %}",
    "{% endfor %}",
    "|indent(",
    "|tojson",
    "\\u0000",
    "\\ud800",
    "\"type\": \"video\"",
    "\"model\"",
    "\"decoder\"",
    "\"added_tokens\"",
    "\"num_hidden_layers\": ",
    "\"nframes\": ",
];

/// One mutation of `data`; `other` is a second corpus input to splice from. Text targets get
/// JSON/Jinja-aware edits part of the time, binary targets boundary integers in place.
pub fn mutate(target: Target, data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.is_empty() {
        d.extend_from_slice(&other[..other.len().min(64)]);
        if d.is_empty() {
            d.push(b'{');
        }
    }
    let n = d.len();
    let choice = if target.is_text() {
        rng.below(12)
    } else {
        rng.below(9)
    };
    match choice {
        0 => {
            // Flip a few bits.
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(n);
                d[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let i = rng.below(n);
            d[i] = [0x00, 0xFF, 0x7F, 0x80, b'"', b'\\', b'}'][rng.below(7)];
        }
        2 => {
            // A boundary integer over 1, 2, 4 or 8 bytes (little-endian, as in GGUF and the
            // safetensors length).
            let w = [1usize, 2, 4, 8][rng.below(4)];
            let v = BOUNDARY_INTS[rng.below(BOUNDARY_INTS.len())].to_le_bytes();
            if n >= w {
                let i = rng.below(n - w + 1);
                d[i..i + w].copy_from_slice(&v[..w]);
            }
        }
        3 => d.truncate(rng.below(n)),
        4 => {
            // Splice: a prefix of this input, a suffix of the other.
            let cut = rng.below(n + 1);
            d.truncate(cut);
            if !other.is_empty() {
                let from = rng.below(other.len());
                d.extend_from_slice(&other[from..]);
            }
        }
        5 => {
            // Remove a range.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(256));
            d.drain(i..i + len);
        }
        6 => {
            // Repeat a range.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            let chunk = d[i..i + len].to_vec();
            for _ in 0..1 + rng.below(8) {
                d.splice(i..i, chunk.iter().copied());
            }
        }
        7 => {
            // Random bytes.
            let i = rng.below(n + 1);
            let bytes: Vec<u8> = (0..1 + rng.below(16))
                .map(|_| rng.next_u64() as u8)
                .collect();
            d.splice(i..i, bytes);
        }
        8 => {
            // Overwrite with a run of bytes copied from another position or input.
            let src = if rng.chance(2) || other.is_empty() {
                data
            } else {
                other
            };
            let len = 1 + rng.below(src.len().clamp(1, 32));
            if src.len() >= len {
                let from = rng.below(src.len() - len + 1);
                let to = rng.below(n);
                let end = (to + len).min(n);
                d[to..end].copy_from_slice(&src[from..from + (end - to)]);
            }
        }
        9 => replace_number(&mut d, rng),
        10 => replace_string(&mut d, rng),
        _ => {
            let tok = TOKENS[rng.below(TOKENS.len())].as_bytes();
            let i = rng.below(n + 1);
            d.splice(i..i, tok.iter().copied());
        }
    }
    d
}

/// Spans of ASCII digits (with a leading '-').
fn number_spans(d: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < d.len() {
        if d[i].is_ascii_digit() || (d[i] == b'-' && d.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let s = i;
            i += 1;
            while i < d.len() && (d[i].is_ascii_digit() || matches!(d[i], b'.' | b'e' | b'E')) {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

fn replace_number(d: &mut Vec<u8>, rng: &mut Rng) {
    let spans = number_spans(d);
    if spans.is_empty() {
        return;
    }
    let (s, e) = spans[rng.below(spans.len())];
    let v = BOUNDARY_NUMBERS[rng.below(BOUNDARY_NUMBERS.len())];
    d.splice(s..e, v.bytes());
}

/// Replaces the contents of a JSON string literal: emptied, made long, or another literal's.
fn replace_string(d: &mut Vec<u8>, rng: &mut Rng) {
    let quotes: Vec<usize> = (0..d.len())
        .filter(|&i| d[i] == b'"' && (i == 0 || d[i - 1] != b'\\'))
        .collect();
    if quotes.len() < 2 {
        return;
    }
    let k = rng.below(quotes.len() / 2) * 2;
    let (s, e) = (quotes[k] + 1, quotes[k + 1]);
    let new: Vec<u8> = match rng.below(3) {
        0 => Vec::new(),
        1 => {
            let j = rng.below(quotes.len() / 2) * 2;
            d[quotes[j] + 1..quotes[j + 1]].to_vec()
        }
        _ => {
            let piece = d[s..e].to_vec();
            piece.repeat(1 + rng.below(64))
        }
    };
    d.splice(s..e, new);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_their_names() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
        }
        assert_eq!(Target::from_name("nope"), None);
    }

    #[test]
    fn json_mutations_hit_numbers_and_strings() {
        let mut rng = Rng::new(1);
        let src = br#"{"num_hidden_layers": 2, "name": "abc"}"#;
        let mut numbers = 0;
        let mut strings = 0;
        for _ in 0..200 {
            let mut d = src.to_vec();
            replace_number(&mut d, &mut rng);
            if d != src {
                numbers += 1;
                assert!(d.starts_with(br#"{"num_hidden_layers": "#));
            }
            let mut d = src.to_vec();
            replace_string(&mut d, &mut rng);
            if d != src {
                strings += 1;
            }
        }
        assert!(numbers > 150 && strings > 50, "{numbers} {strings}");
        // Every strategy keeps working on empty and tiny inputs.
        for t in Target::ALL {
            for _ in 0..200 {
                mutate(t, b"", b"", &mut rng);
                mutate(t, b"x", b"{}", &mut rng);
            }
        }
    }
}
