//! The `reel` command line: parses flags, then calls the library.

use clap::{Args, Parser, Subcommand, ValueEnum};
use reel::engine::sampling::SamplingParams;
use reel::engine::{Device, Engine, EngineOptions, Output, Request};
use reel::model::Model;
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
    Run(RunArgs),
    /// Print a model's configuration and tensor inventory.
    Info {
        /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
        #[arg(long)]
        model: PathBuf,
    },
    /// Measure decode/prefill speed on synthetic weights of the real model shape.
    Bench(BenchArgs),
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
    #[command(flatten)]
    backend: BackendArgs,
    /// The question.
    prompt: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Synthetic model shape.
    #[arg(long, default_value = "7b")]
    synthetic: String,
    /// Decoder layers to instantiate (the real model has 28; fewer fit small machines).
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Decode steps to time.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Info { model } => info(&model),
        Cmd::Bench(a) => bench(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn engine_options(b: &BackendArgs, ctx: usize) -> Result<EngineOptions> {
    if let Some(n) = b.threads {
        if n == 0 {
            return Err(Error::flag("--threads", "must be at least 1"));
        }
        // Only the first call configures rayon's global pool; later ones are harmless.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(EngineOptions {
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
    })
}

fn run(a: RunArgs) -> Result<()> {
    let prompt = a.prompt.clone().unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(Error::flag("PROMPT", "the prompt is empty"));
    }
    if let Some(p) = &a.logits_out {
        check_writable(p, "--logits-out")?;
    }
    if let Some(t) = a.temperature {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(Error::flag(
                "--temperature",
                format!("must be >= 0, got {t}"),
            ));
        }
    }
    if let Some(p) = a.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::flag(
                "--top-p",
                format!("must be in (0, 1], got {p}"),
            ));
        }
    }
    if !(a.repetition_penalty > 0.0 && a.repetition_penalty.is_finite()) {
        return Err(Error::flag("--repetition-penalty", "must be > 0"));
    }
    let opts = engine_options(&a.backend, a.ctx)?;
    let model = Model::load(&a.model)?;
    let gen = model.generation.clone();
    let prompt_tokens = model.text_prompt(&prompt, a.system.as_deref())?;
    let mut engine = Engine::new(model, opts)?;
    let sampling = SamplingParams {
        temperature: a.temperature.or(gen.temperature).unwrap_or(0.0),
        top_k: a.top_k.or(gen.top_k),
        top_p: a.top_p.or(gen.top_p).unwrap_or(1.0),
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
    };
    let req = Request {
        prompt_tokens,
        sampling,
        max_new_tokens: a.max_new_tokens,
        stop_tokens: engine.model.eos_tokens(),
        record_logits: a.logits_out.is_some(),
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
        print_json(&engine, &out)?;
    } else {
        print_timings(&out);
    }
    Ok(())
}

fn print_timings(out: &Output) {
    let t = &out.timings;
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

fn print_json(engine: &Engine, out: &Output) -> Result<()> {
    let v = serde_json::json!({
        "prompt_tokens": out.prompt_tokens,
        "generated_tokens": out.generated_tokens,
        "text": out.text,
        "think": reel::prompt::parse_think(&out.text),
        "answer": reel::prompt::parse_answer(&out.text),
        "stop_reason": out.stop,
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
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let opts = engine_options(&a.backend, a.prompt_len + a.decode_tokens + 16)?;
    let report = reel::engine::bench::run_synthetic(
        &a.synthetic,
        a.layers,
        a.prompt_len,
        a.decode_tokens,
        opts,
    )?;
    println!("{report}");
    Ok(())
}
