//! reel-quantize: a Hugging Face Qwen2.5-VL checkpoint directory -> one self-contained GGUF file
//! (weights in the chosen preset plus config, tokenizer and templates as metadata).
//!
//! The output is written to `FILE.gguf.tmp` next to `FILE.gguf` and renamed at the end; on an
//! error or Ctrl-C the temporary file is removed, so a partial file never carries the final name.
//! The input is streamed from its memory map in pieces whose pages are released once converted
//! (memory.rs), so the resident set stays in the tens of MiB whatever the checkpoint's size.
//! `--report` then measures the file against the source checkpoint (report.rs).

mod checkpoint;
mod memory;
mod report;

use anyhow::{bail, Context, Result};
use checkpoint::Checkpoint;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use reel::model::classify_tensor;
use reel::model::inventory::{Role, TensorClass, Tower};
use reel::quant::row_bytes;
use reel::quantize::preset::{choose_type, convert_rows, ModelFacts, Preset};
use reel::store::gguf::{self, GgufWriter, MetaValue, TensorPlan};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "reel-quantize",
    version,
    about = "Convert a Hugging Face Qwen2.5-VL checkpoint to a quantized GGUF file for reel"
)]
struct Args {
    /// Hugging Face checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Preset: q8_0, q4_k_m or bf16.
    #[arg(long = "type", value_name = "TYPE")]
    qtype: Preset,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
    /// Quantize the vision tower too (by default it stays bf16).
    #[arg(long)]
    quantize_vision: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
    /// After writing, compare the file with the source checkpoint on the CPU: KL divergence and
    /// top-1 agreement of next-token distributions over a prompt set, teacher-forced along the
    /// source's greedy continuation.
    #[arg(long)]
    report: bool,
    /// Prompts for --report, one per line (default: a built-in set).
    #[arg(long, value_name = "FILE", requires = "report")]
    report_prompts: Option<PathBuf>,
    /// Positions compared per prompt for --report.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "report")]
    report_tokens: usize,
    /// Print one JSON object on stdout at the end (conversion figures and, with --report, the
    /// quality figures).
    #[arg(long)]
    json: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
fn install_interrupt_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe. The main loop checks it between pieces.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

#[cfg(not(unix))]
fn install_interrupt_handler() {}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    install_interrupt_handler();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("reel-quantize: error: {e:#}");
            std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) {
                130
            } else {
                1
            });
        }
    }
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

fn run(args: &Args) -> Result<()> {
    if args.out.exists() && !args.force {
        bail!(
            "--out {}: file exists (pass --force to overwrite)",
            args.out.display()
        );
    }
    if args.out.is_dir() {
        bail!("--out {}: is a directory", args.out.display());
    }
    if args.report && args.report_tokens == 0 {
        bail!("--report-tokens: must be at least 1");
    }
    let prompts = match &args.report_prompts {
        Some(p) => report::read_prompts(p)?,
        None => report::DEFAULT_PROMPTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "--out {}: directory {} does not exist",
                args.out.display(),
                parent.display()
            );
        }
    }
    let ckpt = Checkpoint::open(&args.model)?;
    let config = ckpt
        .text("config.json")?
        .with_context(|| format!("--model {}: missing config.json", args.model.display()))?;
    let tokenizer = ckpt
        .text("tokenizer.json")?
        .with_context(|| format!("--model {}: missing tokenizer.json", args.model.display()))?;
    let config_v: serde_json::Value = serde_json::from_str(&config)?;

    // The presets select by role and layer; names are classified against the inventories.
    let classes: Vec<TensorClass> = ckpt
        .tensors
        .iter()
        .map(|t| classify_tensor(&t.name))
        .collect();
    let n_layers = classes
        .iter()
        .filter(|c| c.tower == Tower::Text)
        .filter_map(|c| c.layer)
        .max()
        .map_or(0, |m| m + 1);
    let tied = config_v
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
        || !classes.iter().any(|c| c.role == Role::LmHead);
    let facts = ModelFacts {
        n_layers,
        tied_embeddings: tied,
    };

    // Plan every tensor before writing: the header holds all offsets.
    let mut plan = Vec::new();
    let mut notes = Vec::new();
    for (t, class) in ckpt.tensors.iter().zip(&classes) {
        let c = choose_type(
            args.qtype,
            *class,
            &t.shape,
            t.dtype,
            facts,
            args.quantize_vision,
        );
        if let Some(why) = c.fallback {
            notes.push(format!("{}: {why}", t.name));
        }
        // A 0-D (scalar) tensor is stored as [1]: GGUF tensors have at least one dimension.
        let shape = if t.shape.is_empty() {
            vec![1]
        } else {
            t.shape.clone()
        };
        plan.push(TensorPlan::new(t.name.clone(), c.dtype, &shape));
    }

    let metadata = build_metadata(args, &ckpt, &config_v, config, tokenizer)?;
    let tmp = tmp_path(&args.out);
    let result = write_gguf(args, &ckpt, &plan, &metadata, &notes, &tmp);
    let summary = match result {
        Ok(s) => {
            std::fs::rename(&tmp, &args.out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })?;
            s
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    drop(ckpt);
    let mut json = serde_json::json!({
        "out": args.out.display().to_string(),
        "preset": args.qtype.name(),
        "tensors": plan.len(),
        "input_bytes": summary.input_bytes,
        "output_bytes": summary.output_bytes,
        "seconds": summary.seconds,
        "peak_rss_bytes": summary.peak_rss,
        "peak_anon_bytes": summary.peak_anon,
    });
    if args.report {
        check_interrupt()?;
        let r = report::run(&args.model, &args.out, &prompts, args.report_tokens)?;
        eprintln!("{}", r.describe(args.qtype.name()));
        json["quality"] = r.to_json();
    }
    if args.json {
        println!("{json}");
    }
    Ok(())
}

/// Figures of one conversion.
struct Summary {
    input_bytes: u64,
    output_bytes: u64,
    seconds: f64,
    /// Peak resident set (VmHWM) and the largest anonymous resident set seen, in bytes (0 where
    /// /proc is unavailable).
    peak_rss: u64,
    peak_anon: u64,
}

fn build_metadata(
    args: &Args,
    ckpt: &Checkpoint,
    config: &serde_json::Value,
    config_text: String,
    tokenizer: String,
) -> Result<Vec<(String, MetaValue)>> {
    let arch = "qwen2vl";
    let name = args
        .model
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut kv: Vec<(String, MetaValue)> = vec![
        (gguf::KEY_ARCHITECTURE.into(), MetaValue::str(arch)),
        (gguf::KEY_NAME.into(), MetaValue::str(name)),
        (
            gguf::KEY_FILE_TYPE.into(),
            MetaValue::U32(args.qtype.file_type()),
        ),
        (gguf::KEY_QUANTIZATION_VERSION.into(), MetaValue::U32(2)),
        (
            gguf::KEY_ALIGNMENT.into(),
            MetaValue::U32(gguf::DEFAULT_ALIGNMENT as u32),
        ),
        (
            gguf::KEY_QUANT_PRESET.into(),
            MetaValue::str(args.qtype.name()),
        ),
    ];
    // Standard llama.cpp-style hyperparameters of the language model, for tools that inspect them.
    let text_cfg = config.get("text_config").unwrap_or(config);
    let num = |k: &str| text_cfg.get(k).or_else(|| config.get(k));
    for (key, field) in [
        ("block_count", "num_hidden_layers"),
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
    ] {
        if let Some(v) = num(field).and_then(|v| v.as_u64()) {
            kv.push((format!("{arch}.{key}"), MetaValue::U32(v as u32)));
        }
    }
    for (key, field) in [
        ("rope.freq_base", "rope_theta"),
        ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ] {
        if let Some(v) = num(field).and_then(|v| v.as_f64()) {
            kv.push((format!("{arch}.{key}"), MetaValue::F32(v as f32)));
        }
    }
    kv.push((gguf::KEY_CONFIG_JSON.into(), MetaValue::String(config_text)));
    kv.push((
        gguf::KEY_TOKENIZER_JSON.into(),
        MetaValue::String(tokenizer),
    ));
    let mut template = None;
    for (file, key) in [
        ("tokenizer_config.json", gguf::KEY_TOKENIZER_CONFIG_JSON),
        ("chat_template.json", gguf::KEY_CHAT_TEMPLATE_JSON),
        ("generation_config.json", gguf::KEY_GENERATION_CONFIG_JSON),
        (
            "preprocessor_config.json",
            gguf::KEY_PREPROCESSOR_CONFIG_JSON,
        ),
    ] {
        if let Some(text) = ckpt.text(file)? {
            if key == gguf::KEY_TOKENIZER_CONFIG_JSON || key == gguf::KEY_CHAT_TEMPLATE_JSON {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                // chat_template.json wins over tokenizer_config.json, as in transformers.
                if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                    template = Some(t.to_string());
                }
            }
            kv.push((key.into(), MetaValue::String(text)));
        }
    }
    if let Some(t) = template {
        kv.push((gguf::KEY_CHAT_TEMPLATE.into(), MetaValue::String(t)));
    }
    Ok(kv)
}

/// Bytes (input or output, whichever is larger) per piece: bounds the memory held besides the
/// mapped input, and how long an interrupt waits (a piece of Q4_K takes about a second per thread).
const PIECE_BYTES: usize = 16 << 20;

fn write_gguf(
    args: &Args,
    ckpt: &Checkpoint,
    plan: &[TensorPlan],
    metadata: &[(String, MetaValue)],
    notes: &[String],
    tmp: &Path,
) -> Result<Summary> {
    let start = Instant::now();
    let maps = memory::FileMaps::current();
    let mut peak_anon = memory::rss().map_or(0, |r| r.anon);
    let total_in: u64 = ckpt.tensors.iter().map(|t| t.bytes.len() as u64).sum();
    let pb = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_in)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    for n in notes {
        eprintln!("reel-quantize: fallback: {n}");
    }
    let mut w = GgufWriter::create(tmp, metadata, plan.to_vec())?;
    let mut counts: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (t, p) in ckpt.tensors.iter().zip(plan) {
        check_interrupt()?;
        pb.set_message(format!("{} {} -> {}", t.name, t.dtype, p.dtype));
        let src = t.bytes.as_slice();
        let row_len = *t.shape.last().unwrap_or(&1);
        let n_rows = t.shape.iter().product::<usize>() / row_len.max(1);
        let sb = row_bytes(t.dtype, row_len)?;
        let db = row_bytes(p.dtype, row_len)?;
        let rows_per_piece = (PIECE_BYTES / db.max(sb).max(1)).max(1);
        let mut out = vec![0u8; db * rows_per_piece.min(n_rows.max(1))];
        let mut r = 0;
        if n_rows == 0 {
            w.write_tensor(&t.name, &[])?;
        }
        while r < n_rows {
            check_interrupt()?;
            let n = rows_per_piece.min(n_rows - r);
            let piece = &mut out[..n * db];
            convert_rows(t.dtype, &src[r * sb..(r + n) * sb], p.dtype, row_len, piece)
                .with_context(|| format!("converting `{}`", t.name))?;
            w.write_tensor_part(&t.name, piece)?;
            // Done with these input pages: keep them out of the resident set.
            maps.release(&src[r * sb..(r + n) * sb]);
            peak_anon = peak_anon.max(memory::rss().map_or(0, |r| r.anon));
            pb.inc((n * sb) as u64);
            r += n;
        }
        maps.release(src);
        let e = counts.entry(p.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += p.bytes() as u64;
    }
    let size = w.position();
    w.finish()?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "reel-quantize: wrote {} ({} tensors, {:.1} MiB from {:.1} MiB, {:.1}s, preset {})",
        args.out.display(),
        plan.len(),
        size as f64 / (1 << 20) as f64,
        total_in as f64 / (1 << 20) as f64,
        secs,
        args.qtype
    );
    for (dt, (n, bytes)) in &counts {
        eprintln!(
            "  {dt:>5}: {n:4} tensors, {:.1} MiB",
            *bytes as f64 / (1 << 20) as f64
        );
    }
    let rss = memory::rss().unwrap_or_default();
    let peak_anon = peak_anon.max(rss.anon);
    if rss.peak > 0 {
        eprintln!(
            "  memory: peak RSS {:.1} MiB (mapped input pages included), peak anonymous {:.1} MiB; {:.1} MiB/s",
            rss.peak as f64 / (1 << 20) as f64,
            peak_anon as f64 / (1 << 20) as f64,
            total_in as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
    }
    Ok(Summary {
        input_bytes: total_in,
        output_bytes: size,
        seconds: secs,
        peak_rss: rss.peak,
        peak_anon,
    })
}
