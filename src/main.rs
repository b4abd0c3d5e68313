//! The `reel` command line: parses flags, then calls the library.

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use reel::engine::sampling::SamplingParams;
use reel::engine::{Device, Engine, EngineOptions, Output, Request};
use reel::model::inputs::{MediaOptions, VideoTime};
use reel::model::Model;
use reel::prompt::messages::{load_messages, ContentItem, ImageItem, Message, VideoItem};
use reel::prompt::{video_r1, ProblemType};
use reel::{DType, Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reel",
    version,
    about = "Qwen2.5-VL / Video-R1 inference engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an answer to a prompt, streaming tokens as they come.
    Run(Box<RunArgs>),
    /// Print a model's configuration and tensor inventory.
    Info {
        /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
        #[arg(long)]
        model: PathBuf,
    },
    /// Measure decode/prefill speed on synthetic weights of the real model shape.
    Bench(Box<BenchArgs>),
    /// Evaluate on a Video-R1 benchmark file (its prompts, greedy decoding and scoring), or
    /// merge the results files of shards (--merge).
    Eval(Box<EvalArgs>),
    /// Ask questions about images and videos in a prompt loop, keeping the KV cache.
    Chat(Box<ChatArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    Bf16,
    F32,
}

#[derive(Args)]
struct BackendArgs {
    /// Backend: CUDA when a GPU is present (auto), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Activation and KV-cache type.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// How the engine schedules sequences (one request here; the same engine serves many).
#[derive(Args)]
struct ScheduleArgs {
    /// Most sequences decoded together in one step.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most prompt tokens prefilled in one step (0: the whole prompt at once); long prompts are
    /// prefilled in chunks between the decode steps of other sequences.
    #[arg(long, default_value_t = 2048)]
    prefill_chunk: usize,
    /// Reuse the KV pages of equal prompt prefixes (and the vision embeddings of recent media).
    #[arg(long, value_enum, default_value = "on")]
    prefix_cache: OnOff,
    /// Byte budget of the vision-embedding cache, in MiB.
    #[arg(long, default_value_t = 1024)]
    vision_cache_mb: usize,
}

#[derive(Args)]
struct RunArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// System prompt (default: the chat template's).
    #[arg(long)]
    system: Option<String>,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: generation_config.json, else 0).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass (default: generation_config.json, else 1.0 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens (default: generation_config.json, else off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Penalty on already-seen tokens (default 1.0 = off, as in Video-R1's evaluation).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// KV cache capacity in tokens.
    #[arg(long, default_value_t = 8192)]
    ctx: usize,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write logits (f32 safetensors: logits_last, step_logits) to this file.
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// An image, placed before the text (repeatable; images and videos keep command-line order).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A video, placed before the text (repeatable).
    #[arg(long)]
    video: Vec<PathBuf>,
    /// Video sampling rate in frames per second (qwen-vl-utils `fps`, default 2).
    #[arg(long)]
    fps: Option<f64>,
    /// Exact number of frames to sample (rounded to an even count), overriding --fps.
    #[arg(long)]
    nframes: Option<u64>,
    /// Most frames to sample from a video (default 32).
    #[arg(long)]
    max_frames: Option<u64>,
    /// Least pixels per image / video frame after resizing.
    #[arg(long)]
    min_pixels: Option<u64>,
    /// Most pixels per image / video frame after resizing (default 256·28·28 = 200704).
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Pixel budget over all frames of a video.
    #[arg(long)]
    total_pixels: Option<u64>,
    /// A conversation in the qwen-vl-utils message format (JSON list of messages), instead of
    /// PROMPT and the media flags.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Prompt template: `plain` sends PROMPT as is; `video-r1` wraps it in Video-R1's
    /// evaluation prompt (think/answer format).
    #[arg(long, value_enum, default_value = "plain")]
    template: TemplateArg,
    /// Video-R1 problem type (with --template video-r1).
    #[arg(long, default_value = "free-form")]
    problem_type: String,
    /// A multiple-choice option such as "A. a ball" (repeatable; with --problem-type multiple-choice).
    #[arg(long)]
    options: Vec<String>,
    /// Temporal position step of videos: `sampled` uses 2/sample_fps seconds per frame pair
    /// (Video-R1's evaluation), `fixed` uses 1.0 (what its training saw).
    #[arg(long, value_enum, default_value = "sampled")]
    video_time: VideoTimeArg,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// The question.
    prompt: Option<String>,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Evaluation file: a JSON array or JSON lines of Video-R1 items.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder the items' `path` is relative to (default: the data file's folder).
    #[arg(long)]
    media_root: Option<PathBuf>,
    /// Results file: one JSON line per item, written as each completes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Items in the engine at once, decoded together in one batched step.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most frames sampled from a video (Video-R1 reports 16, 32 and 64).
    #[arg(long, default_value_t = reel::eval::prompt::DEFAULT_MAX_FRAMES)]
    max_frames: u64,
    /// Only the first K items (of the shard).
    #[arg(long)]
    limit: Option<usize>,
    /// Run shard I of N (from 0): every N-th media group, so questions about one video stay
    /// together.
    #[arg(long)]
    shard: Option<String>,
    /// Continue --out: skip the items already in it.
    #[arg(long)]
    resume: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Most generated tokens per item (the protocol's 1024 by default).
    #[arg(long, default_value_t = reel::eval::prompt::MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Also write each item's prompt token ids (vision pads expanded) into its line.
    #[arg(long)]
    prompt_ids: bool,
    /// KV cache capacity in tokens (the reference's max_model_len).
    #[arg(long, default_value_t = 16384)]
    ctx: usize,
    /// Merge these results files (of the shards of one run) into one summary instead.
    #[arg(long, num_args = 1..)]
    merge: Vec<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args)]
struct ChatArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// A video for the first question (repeatable).
    #[arg(long)]
    video: Vec<PathBuf>,
    /// An image for the first question (repeatable).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// System prompt (default: the chat template's).
    #[arg(long)]
    system: Option<String>,
    /// Most generated tokens per answer.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: generation_config.json, else 0).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass (default: generation_config.json, else 1.0 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens (default: generation_config.json, else off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Penalty on already-seen tokens (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// KV cache capacity in tokens (the whole conversation must fit).
    #[arg(long, default_value_t = 16384)]
    ctx: usize,
    /// Keep the line history of a terminal session in memory only, not in
    /// $XDG_DATA_HOME/reel/chat_history.
    #[arg(long)]
    no_history: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum TemplateArg {
    Plain,
    VideoR1,
}

#[derive(Clone, Copy, ValueEnum)]
enum VideoTimeArg {
    Sampled,
    Fixed,
}

#[derive(Args)]
struct BenchArgs {
    /// Synthetic model shape (7b: Qwen2.5-VL-7B).
    #[arg(long, default_value = "7b")]
    synthetic: String,
    /// Decoder layers to instantiate, of 28 (default: all on CUDA, 4 on the CPU); with
    /// --vision, vision blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Weight storage, as `reel-quantize` presets store it: bf16, q8_0 or q4_k_m.
    #[arg(long, default_value = "bf16")]
    weights: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Decode steps to time at each context.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// Also time decode with this many tokens already cached (comma-separated, e.g.
    /// 1024,4096,16384).
    #[arg(long, value_delimiter = ',')]
    decode_at: Vec<usize>,
    /// KV cache capacity in tokens (default: what the measurements need).
    #[arg(long)]
    ctx: Option<usize>,
    /// Also time the Video-R1 evaluation input: vision tower over 32 frames of 448x448,
    /// prefill of its 4096 visual + 150 text tokens, first token.
    #[arg(long)]
    video_r1: bool,
    /// Vision blocks for --video-r1, of 32 (default: all on CUDA, 4 on the CPU).
    #[arg(long)]
    vision_layers: Option<usize>,
    /// Text tokens around the video in the --video-r1 prompt.
    #[arg(long, default_value_t = 150)]
    text_tokens: usize,
    /// Also time batched decode at these batch sizes (comma-separated, e.g. 1,8,32,64): that
    /// many sequences at --prompt-len cached tokens decode one token each per step.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Print one JSON object with every figure instead of the text report.
    #[arg(long)]
    json: bool,
    /// Time the vision tower alone instead of the language model.
    #[arg(long)]
    vision: bool,
    /// Frames, even (default: 2 with --vision, 32 with --video-r1).
    #[arg(long)]
    frames: Option<usize>,
    /// Frame height in pixels, a multiple of 28 (--vision, --video-r1).
    #[arg(long, default_value_t = 448)]
    height: usize,
    /// Frame width in pixels, a multiple of 28 (--vision, --video-r1).
    #[arg(long, default_value_t = 448)]
    width: usize,
    /// Time decoding + preprocessing of a generated H.264 clip instead: the forward decode
    /// against the seeking one, side by side.
    #[arg(long)]
    media: bool,
    /// Clip for --media: 1m720p (60 s 1280x720) or 10m1080p (600 s 1920x1080), 30 fps, made
    /// with the ffmpeg CLI once and cached in the temp directory.
    #[arg(long)]
    media_clip: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let res = match cli.cmd {
        Cmd::Run(a) => {
            let order = media_order(matches.subcommand_matches("run"));
            run(*a, order)
        }
        Cmd::Info { model } => info(&model),
        Cmd::Bench(a) => bench(*a),
        Cmd::Eval(a) => eval(*a),
        Cmd::Chat(a) => {
            let order = media_order(matches.subcommand_matches("chat"));
            chat(*a, order)
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The flag that sets each library setting ([`Error::Setting`] names them by field).
const SETTING_FLAGS: &[(&str, &str)] = &[
    ("temperature", "--temperature"),
    ("top_p", "--top-p"),
    ("top_k", "--top-k"),
    ("repetition_penalty", "--repetition-penalty"),
    ("ctx", "--ctx"),
    ("act", "--dtype"),
    ("max_batch", "--max-batch"),
];

/// A setting the flags gave, reported under its flag; the rules are the library's
/// (`SamplingParams::validate`, `EngineOptions::validate`).
fn flag_error(e: Error) -> Error {
    match e {
        Error::Setting { name, msg } => match SETTING_FLAGS.iter().find(|f| f.0 == name) {
            Some((_, flag)) => Error::flag(*flag, msg),
            None => Error::Setting { name, msg },
        },
        e => e,
    }
}

fn engine_options(b: &BackendArgs, ctx: usize) -> Result<EngineOptions> {
    // A bad REEL_CPU_ISA stops the run here rather than falling back with a warning.
    reel::backend::cpu::isa::from_env()?;
    if let Some(n) = b.threads {
        if n == 0 {
            return Err(Error::flag("--threads", "must be at least 1"));
        }
        // Only the first call configures rayon's global pool; later ones are harmless.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let opts = EngineOptions {
        device: match b.device {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
        },
        act: match b.dtype {
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F32 => DType::F32,
        },
        ctx,
        ..EngineOptions::default()
    };
    opts.validate().map_err(flag_error)?;
    Ok(opts)
}

/// Command-line positions of --image / --video values, so items keep the order given.
fn media_order(m: Option<&ArgMatches>) -> Vec<(usize, bool)> {
    let mut v = Vec::new();
    if let Some(m) = m {
        for (id, is_video) in [("image", false), ("video", true)] {
            if let Some(idx) = m.indices_of(id) {
                v.extend(idx.map(|i| (i, is_video)));
            }
        }
    }
    v.sort();
    v
}

/// The one-turn conversation the flags describe.
fn flag_messages(a: &RunArgs, order: &[(usize, bool)], prompt: String) -> Vec<Message> {
    let (mut images, mut videos) = (a.image.iter(), a.video.iter());
    let mut content = Vec::new();
    for &(_, is_video) in order {
        if is_video {
            let path = videos.next().unwrap().clone();
            content.push(ContentItem::Video(VideoItem {
                path,
                fps: a.fps,
                nframes: a.nframes,
                min_pixels: a.min_pixels,
                max_pixels: a.max_pixels,
                total_pixels: a.total_pixels.map(|x| x as f64),
                max_frames: a.max_frames,
                ..VideoItem::default()
            }));
        } else {
            let path = images.next().unwrap().clone();
            content.push(ContentItem::Image(ImageItem {
                path,
                min_pixels: a.min_pixels,
                max_pixels: a.max_pixels,
                ..ImageItem::default()
            }));
        }
    }
    content.push(ContentItem::Text(prompt));
    vec![Message::new("user", content)]
}

fn run(a: RunArgs, order: Vec<(usize, bool)>) -> Result<()> {
    if let Some(p) = &a.logits_out {
        check_writable(p, "--logits-out")?;
    }
    // The sampling flags as given (the defaults where absent), checked before any work.
    let flagged = SamplingParams {
        temperature: a.temperature.unwrap_or(0.0),
        top_k: a.top_k,
        top_p: a.top_p.unwrap_or(1.0),
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
    };
    flagged.validate().map_err(flag_error)?;
    if let Some(f) = a.fps {
        if !(f > 0.0 && f.is_finite()) {
            return Err(Error::flag("--fps", format!("must be > 0, got {f}")));
        }
    }
    if a.nframes == Some(0) {
        return Err(Error::flag("--nframes", "must be at least 2"));
    }
    let messages = match &a.messages {
        Some(path) => {
            if a.prompt.is_some() || !a.image.is_empty() || !a.video.is_empty() {
                return Err(Error::flag(
                    "--messages",
                    "give either a messages file or PROMPT with --image/--video, not both",
                ));
            }
            load_messages(path)?
        }
        None => {
            let prompt = a.prompt.clone().unwrap_or_default();
            if prompt.trim().is_empty() {
                return Err(Error::flag("PROMPT", "the prompt is empty"));
            }
            let text = match a.template {
                TemplateArg::Plain => {
                    if !a.options.is_empty() {
                        return Err(Error::flag("--options", "needs --template video-r1"));
                    }
                    prompt
                }
                TemplateArg::VideoR1 => {
                    let kind: ProblemType = a
                        .problem_type
                        .parse()
                        .map_err(|e: Error| Error::flag("--problem-type", e.to_string()))?;
                    video_r1::render_question(&prompt, kind, &a.options)?
                }
            };
            flag_messages(&a, &order, text)
        }
    };
    let mut opts = engine_options(&a.backend, a.ctx)?;
    let sc = &a.schedule;
    if sc.max_batch == 0 {
        return Err(Error::flag("--max-batch", "must be at least 1"));
    }
    opts.max_batch = sc.max_batch;
    opts.prefill_chunk = sc.prefill_chunk;
    opts.prefix_cache = matches!(sc.prefix_cache, OnOff::On);
    opts.vision_cache_bytes = sc.vision_cache_mb.saturating_mul(1 << 20);
    let model = Model::load(&a.model)?;
    let gen = model.generation.clone();
    let media_opts = MediaOptions {
        video_time: match a.video_time {
            VideoTimeArg::Sampled => VideoTime::Sampled,
            VideoTimeArg::Fixed => VideoTime::Fixed,
        },
        ..MediaOptions::default()
    };
    let prepared = model.prepare(&messages, a.system.as_deref(), &media_opts)?;
    let mut engine = Engine::new(model, opts)?;
    // generation_config.json fills what the flags left out.
    let sampling = SamplingParams {
        temperature: a.temperature.or(gen.temperature).unwrap_or(0.0),
        top_k: a.top_k.or(gen.top_k),
        top_p: a.top_p.or(gen.top_p).unwrap_or(1.0),
        ..flagged
    };
    let json = a.json;
    let vision_report: serde_json::Value = prepared
        .vision
        .iter()
        .map(|v| {
            serde_json::json!({
                "path": v.path,
                "kind": format!("{:?}", v.kind).to_lowercase(),
                "frames_sampled": v.frames_sampled,
                "height": v.size.0,
                "width": v.size.1,
                "grid_thw": v.rows.grid_thw,
                "tokens": v.tokens,
                "second_per_grid_t": v.second_per_grid_t,
            })
        })
        .collect();
    if !json {
        for v in &prepared.vision {
            let [t, h, w] = v.rows.grid_thw;
            let frames = v
                .frames_sampled
                .map(|n| format!("{n} frames, "))
                .unwrap_or_default();
            eprintln!(
                "{}: {frames}{}x{} px, grid {t}x{h}x{w}, {} visual tokens",
                v.path.display(),
                v.size.1,
                v.size.0,
                v.tokens
            );
        }
    }
    let req = Request {
        prompt_tokens: prepared.prompt_tokens,
        sampling,
        max_new_tokens: a.max_new_tokens,
        stop_tokens: engine.model.eos_tokens(),
        record_logits: a.logits_out.is_some(),
        vision: prepared.vision,
        media_decode_s: prepared.decode_s,
        preprocess_s: prepared.preprocess_s,
    };
    let mut stream = engine.tokenizer().stream_decoder(true);
    let json = a.json;
    let mut stdout = std::io::stdout();
    let out = {
        let mut on_token = |tok: u32| {
            if !json {
                if let Ok(s) = stream.push(tok) {
                    let _ = stdout.write_all(s.as_bytes());
                    let _ = stdout.flush();
                }
            }
        };
        engine.generate(&req, &mut on_token)?
    };
    if !json {
        if let Ok(rest) = stream.flush() {
            print!("{rest}");
        }
        println!();
    }
    if let Some(p) = &a.logits_out {
        write_logits(p, &out)?;
    }
    if json {
        print_json(&engine, &out, &vision_report)?;
    } else {
        print_timings(&out, !vision_report.as_array().is_none_or(|v| v.is_empty()));
    }
    Ok(())
}

fn print_timings(out: &Output, has_media: bool) {
    let t = &out.timings;
    if has_media {
        eprintln!(
            "media decode {:.3} s | preprocess {:.3} s | vision {:.3} s",
            t.media_decode_s, t.preprocess_s, t.vision_s
        );
    }
    eprintln!(
        "load {:.2} s | prefill {} tokens in {:.3} s ({:.1} tok/s) | first token {:.3} s | decode {} tokens at {:.2} tok/s",
        t.load_s,
        out.prompt_tokens.len(),
        t.prefill_s,
        t.prefill_tokens_per_s,
        t.ttft_s,
        out.generated_tokens.len(),
        t.decode_tokens_per_s
    );
}

fn print_json(engine: &Engine, out: &Output, vision: &serde_json::Value) -> Result<()> {
    let v = serde_json::json!({
        "prompt_tokens": out.prompt_tokens,
        "generated_tokens": out.generated_tokens,
        "text": out.text,
        "think": reel::prompt::parse_think(&out.text),
        "answer": reel::prompt::parse_answer(&out.text),
        "stop_reason": out.stop,
        "vision": vision,
        "timings": out.timings,
        "backend": engine.be.name(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?
    );
    Ok(())
}

/// Fails early, before any work, when an output path cannot be created.
fn check_writable(p: &Path, flag: &str) -> Result<()> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::flag(
            flag,
            format!(
                "{}: directory {} does not exist",
                p.display(),
                dir.display()
            ),
        ));
    }
    if p.is_dir() {
        return Err(Error::flag(flag, format!("{} is a directory", p.display())));
    }
    let probe = dir.join(format!(".reel-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| Error::flag(flag, format!("{}: cannot write: {e}", p.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes logits as f32 safetensors through a temporary file, so a failure leaves nothing behind.
fn write_logits(p: &Path, out: &Output) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let vocab = out.logits_last.len();
    let last: Vec<u8> = bytemuck::cast_slice(&out.logits_last).to_vec();
    let steps: Vec<u8> = out
        .step_logits
        .iter()
        .flat_map(|r| bytemuck::cast_slice::<f32, u8>(r).iter().copied())
        .collect();
    let err = |e: safetensors::SafeTensorError| Error::flag("--logits-out", e.to_string());
    let tensors = vec![
        (
            "logits_last",
            TensorView::new(Dtype::F32, vec![vocab], &last).map_err(err)?,
        ),
        (
            "step_logits",
            TensorView::new(Dtype::F32, vec![out.step_logits.len(), vocab], &steps).map_err(err)?,
        ),
    ];
    let tmp = p.with_extension("tmp-reel");
    let res = safetensors::serialize_to_file(tensors, None, &tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::flag("--logits-out", format!("{}: {e}", p.display())));
    }
    std::fs::rename(&tmp, p).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::flag("--logits-out", format!("{}: {e}", p.display()))
    })
}

fn info(model: &Path) -> Result<()> {
    let m = Model::load(model)?;
    println!("{}", m.describe());
    println!(
        "cpu kernels: {} (REEL_CPU_ISA=amx|avx512|avx2|scalar forces one)",
        reel::backend::cpu::isa::from_env()?.describe()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    bench_flags(a).map_err(flag_error)
}

fn bench_flags(a: BenchArgs) -> Result<()> {
    // The bench sizes the KV cache itself (from --ctx or what it measures).
    let opts = engine_options(&a.backend, EngineOptions::default().ctx)?;
    if a.media || a.vision {
        let mode = if a.media { "--media" } else { "--vision" };
        let text_only = [
            ("--json", a.json),
            ("--video-r1", a.video_r1),
            ("--decode-at", !a.decode_at.is_empty()),
            ("--batch", !a.batch.is_empty()),
            ("--weights", a.weights != "bf16"),
            ("--vision-layers", a.vision_layers.is_some()),
        ];
        if let Some((flag, _)) = text_only.iter().find(|f| f.1) {
            return Err(Error::flag(*flag, format!("is not used with {mode}")));
        }
    }
    if a.media_clip.is_some() && !a.media {
        return Err(Error::flag("--media-clip", "is only used with --media"));
    }
    if a.media {
        use reel::media::bench::{compare, BenchClip};
        let clip: BenchClip = a
            .media_clip
            .as_deref()
            .unwrap_or("1m720p")
            .parse()
            .map_err(|e: String| Error::flag("--media-clip", e))?;
        let rounds = if clip == BenchClip::Minute720p { 3 } else { 2 };
        println!(
            "{}",
            compare(clip, &MediaOptions::default().preset, rounds)?
        );
        return Ok(());
    }
    if a.vision {
        let report = reel::engine::bench::run_vision_synthetic(
            a.layers.unwrap_or(32),
            a.frames.unwrap_or(2),
            a.height,
            a.width,
            opts,
        )?;
        println!("{report}");
        print_profile();
        return Ok(());
    }
    let defaults = reel::engine::bench::BenchConfig::default();
    let cfg = reel::engine::bench::BenchConfig {
        shape: a.synthetic,
        layers: a.layers,
        weights: a.weights,
        prompt_len: a.prompt_len,
        decode_tokens: a.decode_tokens,
        decode_at: a.decode_at,
        ctx: a.ctx,
        video_r1: a.video_r1,
        vision_layers: a.vision_layers,
        frames: a.frames.unwrap_or(defaults.frames),
        height: a.height,
        width: a.width,
        text_tokens: a.text_tokens,
        batch: a.batch,
    };
    let report = reel::engine::bench::run(&cfg, &opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        print!("{}", report.to_text());
    }
    print_profile();
    Ok(())
}

/// The per-op table of `REEL_PROFILE=1`, on standard error.
fn print_profile() {
    if let Some(t) = reel::graph::profile::report() {
        eprintln!("per-op time (REEL_PROFILE=1; the backend synchronized around every op):\n{t}");
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    if !a.merge.is_empty() {
        return eval_merge(&a);
    }
    let need = |v: &Option<PathBuf>, flag: &str| -> Result<PathBuf> {
        v.clone()
            .ok_or_else(|| Error::flag(flag, "is required (or give --merge FILES)"))
    };
    let model_dir = need(&a.model, "--model")?;
    let data = need(&a.data, "--data")?;
    let out = need(&a.out, "--out")?;
    if a.max_batch == 0 {
        return Err(Error::flag("--max-batch", "must be at least 1"));
    }
    if a.max_frames < 2 {
        return Err(Error::flag(
            "--max-frames",
            format!("must be at least 2, got {}", a.max_frames),
        ));
    }
    if a.max_new_tokens == 0 {
        return Err(Error::flag("--max-new-tokens", "must be at least 1"));
    }
    if a.limit == Some(0) {
        return Err(Error::flag("--limit", "must be at least 1"));
    }
    let shard = match &a.shard {
        Some(s) => s.parse::<reel::eval::Shard>()?,
        None => reel::eval::Shard::ALL,
    };
    if let Some(root) = &a.media_root {
        if !root.is_dir() {
            return Err(Error::flag(
                "--media-root",
                format!("{} is not a directory", root.display()),
            ));
        }
    }
    // Everything that can be checked is checked before the model loads and before --out is
    // touched: a bad data file or flag leaves no results file behind.
    let load = reel::eval::LoadOptions {
        media_root: a.media_root.clone(),
        skip_media_check: false,
    };
    let ds = reel::eval::load(&data, &load)?;
    check_writable(&out, "--out")?;
    let done = if a.resume {
        reel::eval::resume::done_ids(&out)?
    } else {
        if out.exists() {
            return Err(Error::flag(
                "--out",
                format!(
                    "{} already exists (give --resume to continue it, or remove it)",
                    out.display()
                ),
            ));
        }
        Default::default()
    };
    let mut opts = engine_options(&a.backend, a.ctx)?;
    opts.max_batch = a.max_batch;
    let model = Model::load(&model_dir)?;
    let mut engine = Engine::new(model, opts)?;
    let run_opts = reel::frontend::eval::RunOptions {
        prompt: reel::eval::prompt::PromptOptions {
            max_frames: a.max_frames,
        },
        max_batch: a.max_batch,
        max_new_tokens: a.max_new_tokens,
        limit: a.limit,
        shard,
        record_prompt_ids: a.prompt_ids,
    };
    let entries = reel::frontend::eval::plan(&ds, shard, a.limit, &done);
    let (mut writer, existing) = if a.resume {
        reel::eval::resume::ResultWriter::resume(&out)?
    } else {
        (
            reel::eval::resume::ResultWriter::create(&out)?,
            Default::default(),
        )
    };
    eprintln!(
        "{}: {} items to run{}{} on {}",
        ds.name,
        entries.len(),
        if shard == reel::eval::Shard::ALL {
            String::new()
        } else {
            format!(" (shard {shard})")
        },
        if existing.lines.is_empty() {
            String::new()
        } else {
            format!(", {} already in {}", existing.lines.len(), out.display())
        },
        engine.be.name()
    );
    let new = reel::frontend::eval::run(
        &mut engine,
        &ds,
        &entries,
        &run_opts,
        &mut writer,
        &existing.lines,
    )?;
    let mut lines = existing.lines;
    lines.extend(new);
    print_summary(&lines, a.json)
}

fn eval_merge(a: &EvalArgs) -> Result<()> {
    let alone = [
        ("--model", a.model.is_some()),
        ("--data", a.data.is_some()),
        ("--out", a.out.is_some()),
        ("--media-root", a.media_root.is_some()),
        ("--shard", a.shard.is_some()),
        ("--limit", a.limit.is_some()),
        ("--resume", a.resume),
        ("--prompt-ids", a.prompt_ids),
    ];
    if let Some((flag, _)) = alone.iter().find(|f| f.1) {
        return Err(Error::flag(*flag, "is not used with --merge"));
    }
    let merged = reel::eval::merge(&a.merge)?;
    for p in &merged.cut_off {
        eprintln!(
            "note: {}: its cut-off last line (a killed run) is left out",
            p.display()
        );
    }
    print_summary(&merged.lines, a.json)
}

fn print_summary(lines: &[reel::eval::ResultLine], json: bool) -> Result<()> {
    let summary = reel::eval::Summary::from_lines(lines);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary.to_json())
                .map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        print!("{}", summary.render_table());
    }
    Ok(())
}

fn chat(a: ChatArgs, order: Vec<(usize, bool)>) -> Result<()> {
    use reel::frontend::chat::Chat;
    use reel::prompt::VisionKind;
    use std::sync::atomic::Ordering;
    let flagged = SamplingParams {
        temperature: a.temperature.unwrap_or(0.0),
        top_k: a.top_k,
        top_p: a.top_p.unwrap_or(1.0),
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
    };
    flagged.validate().map_err(flag_error)?;
    if a.max_new_tokens == 0 {
        return Err(Error::flag("--max-new-tokens", "must be at least 1"));
    }
    for p in a.image.iter().chain(&a.video) {
        if !p.is_file() {
            let flag = if a.image.contains(p) {
                "--image"
            } else {
                "--video"
            };
            return Err(Error::flag(flag, format!("{}: no such file", p.display())));
        }
    }
    let opts = engine_options(&a.backend, a.ctx)?;
    let model = Model::load(&a.model)?;
    let gen = model.generation.clone();
    let sampling = SamplingParams {
        temperature: a.temperature.or(gen.temperature).unwrap_or(0.0),
        top_k: a.top_k.or(gen.top_k),
        top_p: a.top_p.or(gen.top_p).unwrap_or(1.0),
        ..flagged
    };
    let mut engine = Engine::new(model, opts)?;
    let mut chat = Chat::new(a.system.clone(), sampling, a.max_new_tokens)?;
    let (mut images, mut videos) = (a.image.iter(), a.video.iter());
    for &(_, is_video) in &order {
        let (kind, path) = if is_video {
            (VisionKind::Video, videos.next().expect("counted by clap"))
        } else {
            (VisionKind::Image, images.next().expect("counted by clap"))
        };
        eprintln!("{}", chat.add_media(&engine, kind, path)?);
    }
    chat.keep_initial_media();
    let mut input = ChatInput::open(!a.no_history)?;
    // Until here Ctrl-C ends the program as usual.
    let interrupt = ctrl_c_flag()?;
    if matches!(input, ChatInput::Terminal { .. }) {
        eprintln!(
            "reel chat on {}: /video F, /image F, /reset, /save F, /stats, /help; Ctrl-C stops an answer, Ctrl-D quits",
            engine.be.name()
        );
    }
    let mut stdout = std::io::stdout();
    while let Some(line) = input.next_line()? {
        // A Ctrl-C at the prompt or between answers stops nothing.
        interrupt.store(false, Ordering::SeqCst);
        let line = line.as_str();
        if line.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = match cmd.split_once(char::is_whitespace) {
                Some((n, rest)) => (n, rest.trim()),
                None => (cmd, ""),
            };
            let res = chat_command(&mut chat, &mut engine, name, arg);
            match res {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("error: {e}");
                    continue;
                }
            }
        }
        let mut stream = engine.tokenizer().stream_decoder(true);
        let mut on_token = |tok: u32| {
            if let Ok(s) = stream.push(tok) {
                let _ = stdout.write_all(s.as_bytes());
                let _ = stdout.flush();
            }
        };
        let res = chat.ask(&mut engine, line, &mut on_token, interrupt);
        interrupt.store(false, Ordering::SeqCst);
        match res {
            Ok(ans) => {
                let s = &ans.stats;
                if s.interrupted() && s.generated_tokens == 0 {
                    eprintln!("[interrupted before the first token: the question is withdrawn]");
                    continue;
                }
                if let Ok(rest) = stream.flush() {
                    print!("{rest}");
                }
                println!();
                eprintln!(
                    "[{}first token {:.3} s | {} tokens at {:.1} tok/s]",
                    if s.interrupted() {
                        "interrupted | "
                    } else {
                        ""
                    },
                    s.ttft_s,
                    s.generated_tokens,
                    s.decode_tokens_per_s
                );
            }
            Err(e) => {
                println!();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

/// Set by SIGINT once [`ctrl_c_flag`] installed its handler.
static CTRL_C: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    // Async-signal-safe only: an atomic swap, and _exit on a second Ctrl-C.
    if CTRL_C.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: _exit may be called from a signal handler.
        unsafe { libc::_exit(130) };
    }
}

/// Ctrl-C (SIGINT) from here on sets the returned flag, which an answer watches between engine
/// steps. A second Ctrl-C before the flag was cleared ends the program with status 130: the way
/// out of a step that cannot stop early (the vision tower on a long video, a media decode).
///
/// The handler runs in the interrupted thread, so the flag is set before that thread goes on.
/// Installed after the line editor, whose own SIGINT handler (which ours replaces) only serves
/// `Config::enable_signals`, off here: at its prompt Ctrl-C is a key, not a signal.
fn ctrl_c_flag() -> Result<&'static std::sync::atomic::AtomicBool> {
    #[cfg(unix)]
    // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic and calls _exit.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // Blocking reads and writes resume after the handler.
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            return Err(Error::Other(format!(
                "installing the Ctrl-C handler: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(&CTRL_C)
}

/// Where `reel chat` reads its lines: a line editor with history when standard input is a
/// terminal, plain lines otherwise (pipes, files, scripts).
enum ChatInput {
    Terminal {
        editor: Box<rustyline::DefaultEditor>,
        /// The history file new lines are appended to.
        history: Option<PathBuf>,
    },
    Plain(std::io::StdinLock<'static>),
}

impl ChatInput {
    fn open(file_history: bool) -> Result<ChatInput> {
        use rustyline::config::{Behavior, Config};
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Ok(ChatInput::Plain(std::io::stdin().lock()));
        }
        // The prompt and the line being edited go to the terminal itself, so a redirected
        // standard output holds only the answers.
        let config = Config::builder()
            .behavior(Behavior::PreferTerm)
            .max_history_size(1000)
            .map_err(|e| Error::Other(format!("line editor: {e}")))?
            .build();
        let mut editor = Box::new(
            rustyline::DefaultEditor::with_config(config)
                .map_err(|e| Error::Other(format!("line editor: {e}")))?,
        );
        let history = if file_history {
            history_path().and_then(|p| match load_history(&mut editor, &p) {
                Ok(()) => Some(p),
                Err(e) => {
                    eprintln!(
                        "note: {}: {e}; the history is kept in memory only",
                        p.display()
                    );
                    None
                }
            })
        } else {
            None
        };
        Ok(ChatInput::Terminal { editor, history })
    }

    /// The next line; None at the end of the input (Ctrl-D at an empty line of a terminal). At a
    /// terminal, Ctrl-C drops the line being typed and returns an empty one.
    fn next_line(&mut self) -> Result<Option<String>> {
        use rustyline::error::ReadlineError;
        match self {
            ChatInput::Plain(r) => {
                use std::io::BufRead;
                let mut line = String::new();
                let n = r
                    .read_line(&mut line)
                    .map_err(|e| Error::Other(format!("stdin: {e}")))?;
                if n == 0 {
                    return Ok(None);
                }
                line.truncate(line.trim_end_matches(['\n', '\r']).len());
                Ok(Some(line))
            }
            ChatInput::Terminal { editor, history } => match editor.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() && editor.add_history_entry(line.as_str()).is_ok() {
                        if let Some(p) = history {
                            if let Err(e) = editor.append_history(p) {
                                eprintln!(
                                    "note: {}: {e}; the history is kept in memory only",
                                    p.display()
                                );
                                *history = None;
                            }
                        }
                    }
                    Ok(Some(line))
                }
                Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
                Err(ReadlineError::Eof) => Ok(None),
                Err(e) => Err(Error::Other(format!("terminal: {e}"))),
            },
        }
    }
}

/// `$XDG_DATA_HOME/reel/chat_history`, or `~/.local/share/reel/chat_history`.
fn history_path() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share"))
        })?;
    Some(data.join("reel").join("chat_history"))
}

fn load_history(editor: &mut rustyline::DefaultEditor, p: &Path) -> std::io::Result<()> {
    use rustyline::error::ReadlineError;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match editor.load_history(p) {
        Ok(()) => Ok(()),
        Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(ReadlineError::Io(e)) => Err(e),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// A `/command` of `reel chat`; false ends the loop.
fn chat_command(
    chat: &mut reel::frontend::chat::Chat,
    engine: &mut Engine,
    name: &str,
    arg: &str,
) -> Result<bool> {
    use reel::prompt::VisionKind;
    let need_arg = |what: &str| -> Result<()> {
        if arg.is_empty() {
            Err(Error::Other(format!("/{name} needs {what}")))
        } else {
            Ok(())
        }
    };
    match name {
        "video" | "image" => {
            need_arg("a file")?;
            let kind = if name == "video" {
                VisionKind::Video
            } else {
                VisionKind::Image
            };
            eprintln!("{}", chat.add_media(engine, kind, Path::new(arg))?);
        }
        "reset" => {
            chat.reset();
            eprintln!("conversation cleared");
        }
        "save" => {
            need_arg("a file name")?;
            let p = Path::new(arg);
            let text = serde_json::to_string_pretty(&chat.transcript())
                .map_err(|e| Error::Other(e.to_string()))?;
            let tmp = p.with_extension("tmp-reel");
            std::fs::write(&tmp, text + "\n")
                .and_then(|_| std::fs::rename(&tmp, p))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    Error::io(p, e)
                })?;
            eprintln!("saved {}", p.display());
        }
        "stats" => match &chat.last {
            None => eprintln!("no answer yet"),
            Some(s) => eprintln!(
                "prompt {} tokens ({} reused from the cache, {} prefilled) | vision tower {} | first token {:.3} s | {} tokens at {:.1} tok/s{}",
                s.prompt_tokens,
                s.reused_tokens,
                s.prefilled_tokens,
                if s.vision_run {
                    format!("ran ({:.3} s)", s.vision_s)
                } else {
                    "not run".to_string()
                },
                s.ttft_s,
                s.generated_tokens,
                s.decode_tokens_per_s,
                match (s.interrupted(), s.generated_tokens) {
                    (false, _) => "",
                    (true, 0) => " | interrupted before the first token (question withdrawn)",
                    (true, _) => " | interrupted",
                }
            ),
        },
        "help" => eprintln!(
            "/video FILE, /image FILE: add media to the next question | /reset: start over | /save FILE: write the transcript (JSON) | /stats: timings of the last answer | Ctrl-C: stop the answer | /quit or Ctrl-D: leave"
        ),
        "quit" | "exit" => return Ok(false),
        other => {
            return Err(Error::Other(format!(
                "unknown command /{other} (try /help)"
            )))
        }
    }
    Ok(true)
}
