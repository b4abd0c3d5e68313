//! reel-synth-checkpoint: writes a Qwen2.5-VL checkpoint directory (config.json, tokenizer and
//! template files, one bf16 model.safetensors) filled with random weights whose statistics
//! resemble a trained model's, for measuring quantization quality and reel-quantize's memory use
//! without downloading a real checkpoint.
//!
//! Shapes: `small` (every matrix row a multiple of 256, so each preset uses its real block types;
//! about 30 MB) and `7b` (the exact Qwen2.5-VL-7B shapes, vision tower included, about 16.6 GB).
//! The non-weight files come from `--template` (default: the repository's fixture model); only
//! the dimensions in its config.json are replaced, so the vocabulary and special-token ids are
//! the template's (for `7b` the embedding has the real 152064 rows, more than the fixture
//! tokenizer uses: the file is for conversion, not for chat).
//!
//! Weight statistics, and why:
//! - Linear weights `W[out, in] = g / sqrt(in) * r_out * c_in * t`, with `t` Student-t with 6
//!   degrees of freedom scaled to unit variance (kurtosis 6: trained weights are heavier-tailed
//!   than a Gaussian, which is what costs a block quantizer its range), `r` a per-output-row and
//!   `c` a per-input-column log-normal scale (sigma 0.25; trained rows and channels differ in
//!   scale, which per-block scales must absorb).
//! - Outlier channels, of two kinds. Activations: a fixed ~0.4% of the hidden dimensions (the
//!   same in every token, as the systematic outlier features of real LLMs' residual streams) have
//!   8x larger embedding columns, so every hidden state carries a few large channels into the
//!   layers. Weights: in every language-model matrix a random 1/256 of the input columns are 4x
//!   larger; such a column sets its blocks' maximum and costs the other values of the block
//!   resolution, the case block formats handle worst. (Making the same channels large in both
//!   was tried and rejected: two channels then dominate every product, a degenerate network.)
//! - RMSNorm weights: log-normal around 1 (sigma 0.2) for the per-layer norms; the final norm
//!   around 2 (trained final norms are larger than 1).
//! - q/k biases Laplace with scale 0.5 (Qwen2 q/k biases are large), v bias scale 0.05.
//! - Embedding rows: element scale 0.02 times a per-token log-normal (sigma 0.3), so row norms
//!   are about 0.02*sqrt(hidden) with a spread, as in trained embeddings. lm_head rows use the
//!   same element law with a scale chosen so the logits have a standard deviation of about 4
//!   (next-token distributions that are peaked but not one-hot).
//! - The vision tower follows the linear-weight rule without outlier channels (the presets keep
//!   it bf16 by default).
//!
//! Deterministic: every row's random stream is seeded from (seed, tensor name, row), so the
//! output is identical whatever the thread count.

use anyhow::{bail, Context, Result};
use clap::Parser;
use rayon::prelude::*;
use reel::model::inventory::{Part, Role, Tower};
use reel::model::qwen2_5_vl::inventory::expected;
use reel::model::qwen2_5_vl::ModelConfig;
use reel::quant::quantize_row;
use reel::DType;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "reel-synth-checkpoint",
    version,
    about = "Write a Qwen2.5-VL checkpoint directory with random weights of realistic statistics"
)]
struct Args {
    /// Output directory (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Shape: small or 7b.
    #[arg(long, default_value = "small")]
    shape: String,
    /// Override the number of decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Leave out the vision tower (config.json keeps its vision_config).
    #[arg(long)]
    no_vision: bool,
    /// Directory whose config.json, tokenizer and template files are copied.
    #[arg(long)]
    template: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Dims {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    mrope: [usize; 3],
    v_depth: usize,
    v_hidden: usize,
    v_heads: usize,
    v_inter: usize,
    v_fullatt: Vec<usize>,
}

fn dims(shape: &str, template_vocab: usize) -> Result<Dims> {
    Ok(match shape {
        "small" => Dims {
            hidden: 512,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            inter: 1536,
            vocab: template_vocab,
            mrope: [16, 24, 24],
            v_depth: 2,
            v_hidden: 256,
            v_heads: 2,
            v_inter: 512,
            v_fullatt: vec![1],
        },
        "7b" => Dims {
            hidden: 3584,
            layers: 28,
            heads: 28,
            kv_heads: 4,
            inter: 18944,
            vocab: 152064,
            mrope: [16, 24, 24],
            v_depth: 32,
            v_hidden: 1280,
            v_heads: 16,
            v_inter: 3420,
            v_fullatt: vec![7, 15, 23, 31],
        },
        _ => bail!("--shape {shape:?}: unknown (expected small or 7b)"),
    })
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Law {
    /// Linear weight with this gain.
    Linear { gain: f32 },
    /// Embedding table.
    Embed,
    /// Positive per-channel scale, log-normal around `center`.
    Norm { center: f32 },
    /// Laplace with this scale.
    Bias { scale: f32 },
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    tower: Tower,
    law: Law,
}

/// How each role's values are drawn (see the module comment).
fn law(role: Role, lm_gain: f32) -> Law {
    use Role::*;
    match role {
        Embed => Law::Embed,
        LmHead => Law::Linear { gain: lm_gain },
        FinalNorm => Law::Norm { center: 2.0 },
        AttnNorm | MlpNorm | VisionNorm1 | VisionNorm2 | MergerNorm => Law::Norm { center: 1.0 },
        AttnQBias | AttnKBias => Law::Bias { scale: 0.5 },
        AttnVBias => Law::Bias { scale: 0.05 },
        VisionQkvBias | VisionProjBias | VisionGateBias | VisionUpBias | VisionDownBias
        | MergerFc1Bias | MergerFc2Bias => Law::Bias { scale: 0.02 },
        AttnQ | AttnK | AttnV | AttnO | MlpGate | MlpUp | MlpDown | VisionPatchEmbed
        | VisionQkv | VisionProj | VisionGate | VisionUp | VisionDown | MergerFc1 | MergerFc2
        | Other => Law::Linear { gain: 1.0 },
    }
}

/// Every tensor of the checkpoint `cfg` describes (the vision tower unless `vision` is off),
/// sorted by name as the file stores them.
fn specs(cfg: &ModelConfig, vision: bool, lm_gain: f32) -> Vec<Spec> {
    let part = if vision { Part::Both } else { Part::Text };
    let mut v: Vec<Spec> = expected(cfg, part)
        .into_iter()
        .map(|t| Spec {
            law: law(t.role, lm_gain),
            name: t.name,
            shape: t.shape,
            tower: t.tower,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// splitmix64: seeds and hashes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

/// xorshift64* stream with a cached second Box-Muller normal.
struct Rng {
    s: u64,
    spare: Option<f32>,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng {
            s: mix(seed) | 1,
            spare: None,
        }
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f32 {
        self.s ^= self.s >> 12;
        self.s ^= self.s << 25;
        self.s ^= self.s >> 27;
        let x = self.s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 + 1.0) * (1.0 / (1u64 << 24) as f32)
    }
    fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.unit().ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * self.unit()).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
    /// Student-t with 6 degrees of freedom, unit variance: z / sqrt(chi2_6 / 6), where
    /// chi2_6 = -2 ln(u1 u2 u3); the t_6 variance 6/4 is divided out.
    fn student6(&mut self) -> f32 {
        let chi2 = -2.0 * (self.unit() * self.unit() * self.unit()).ln();
        self.normal() / (chi2 / 6.0).sqrt() * (4.0f32 / 6.0).sqrt()
    }
    fn laplace(&mut self) -> f32 {
        let u = self.unit() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-12).ln()
    }
    fn lognormal(&mut self, sigma: f32) -> f32 {
        (sigma * self.normal()).exp()
    }
}

/// Per-input-column scales of a linear weight or the embedding (log-normal, with outliers).
fn column_scales(spec: &Spec, seed: u64, outliers: &[usize]) -> Vec<f32> {
    let cols = spec.shape[1..].iter().product::<usize>();
    let mut r = Rng::new(seed ^ 0xC01);
    let mut c: Vec<f32> = (0..cols).map(|_| r.lognormal(0.25)).collect();
    match spec.law {
        Law::Embed => {
            for &j in outliers {
                c[j] *= 8.0;
            }
        }
        Law::Linear { .. } if spec.tower == Tower::Text => {
            for (j, c) in c.iter_mut().enumerate() {
                if mix(seed ^ j as u64).is_multiple_of(256) {
                    *c *= 4.0;
                }
            }
        }
        _ => {}
    }
    c
}

/// Fills one row of `spec` (row `i`) as f32.
fn fill_row(spec: &Spec, seed: u64, i: usize, cols: &[f32], out: &mut [f32]) {
    let mut r = Rng::new(seed ^ mix(i as u64 + 1));
    match spec.law {
        Law::Linear { gain, .. } => {
            let s = gain / (out.len() as f32).sqrt() * r.lognormal(0.25);
            for (o, c) in out.iter_mut().zip(cols) {
                *o = s * c * r.student6();
            }
        }
        Law::Embed => {
            let s = 0.02 * r.lognormal(0.3);
            for (o, c) in out.iter_mut().zip(cols) {
                *o = s * c * r.student6();
            }
        }
        Law::Norm { center } => {
            for o in out.iter_mut() {
                *o = center * r.lognormal(0.2);
            }
        }
        Law::Bias { scale } => {
            for o in out.iter_mut() {
                *o = scale * r.laplace();
            }
        }
    }
}

fn write_config(template: &Path, d: &Dims, out: &Path) -> Result<()> {
    let p = template.join("config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut c: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    let obj = c
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", p.display()))?;
    for (k, v) in [
        ("hidden_size", d.hidden),
        ("num_hidden_layers", d.layers),
        ("max_window_layers", d.layers),
        ("num_attention_heads", d.heads),
        ("num_key_value_heads", d.kv_heads),
        ("intermediate_size", d.inter),
        ("vocab_size", d.vocab),
    ] {
        obj.insert(k.into(), v.into());
    }
    obj.insert("tie_word_embeddings".into(), false.into());
    obj.insert(
        "rope_scaling".into(),
        serde_json::json!({"mrope_section": d.mrope, "rope_type": "default", "type": "default"}),
    );
    obj.insert(
        "vision_config".into(),
        serde_json::json!({
            "depth": d.v_depth,
            "fullatt_block_indexes": d.v_fullatt,
            "hidden_size": d.v_hidden,
            "in_chans": 3,
            "intermediate_size": d.v_inter,
            "model_type": "qwen2_5_vl",
            "num_heads": d.v_heads,
            "out_hidden_size": d.hidden,
            "spatial_patch_size": 14,
            "tokens_per_second": 2,
            "window_size": 112,
        }),
    );
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&c)?)?;
    Ok(())
}

/// The template's vocabulary size (config.json's vocab_size).
fn template_vocab(template: &Path) -> Result<usize> {
    let p = template.join("config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let c: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    c.get("vocab_size")
        .or_else(|| c.get("text_config").and_then(|t| t.get("vocab_size")))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .with_context(|| format!("{}: no vocab_size", p.display()))
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("reel-synth-checkpoint: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let template = args
        .template
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model"));
    let mut d = dims(&args.shape, template_vocab(&template)?)?;
    if let Some(l) = args.layers {
        if l == 0 {
            bail!("--layers: must be at least 1");
        }
        d.layers = l;
    }
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("--out {}: exists and is not empty", args.out.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    write_config(&template, &d, &args.out)?;
    // The tensors follow from the config just written, through reel's own reading of it.
    let cfg = ModelConfig::from_file(&args.out.join("config.json"))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "generation_config.json",
        "preprocessor_config.json",
    ] {
        let src = template.join(f);
        if src.is_file() {
            std::fs::copy(&src, args.out.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }

    // Logit std ~ gain * rms(final norm ~2) * rms(row and column scales ~1.2): 1.6 gives about
    // 4 (measured 4-5 on `small`, with per-position entropies of 0.1-2.5 nats).
    let lm_gain = 1.6;
    let specs = specs(&cfg, !args.no_vision, lm_gain);
    // Residual-stream outlier channels: ~0.4% of the hidden dimensions, at least one.
    let n_out = (d.hidden / 256).max(1);
    let outliers: Vec<usize> = (0..n_out)
        .map(|k| (mix(args.seed ^ 0x0D7 ^ k as u64) % d.hidden as u64) as usize)
        .collect();

    // Header: name -> dtype, shape, [begin, end) in the data section.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "reel-synth-checkpoint"}),
    );
    let mut off = 0usize;
    for s in &specs {
        let n = s.shape.iter().product::<usize>() * 2;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_string(&serde_json::Value::Object(header))?.into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let path = args.out.join("model.safetensors");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;

    let t0 = Instant::now();
    for s in &specs {
        let seed = mix(args.seed) ^ hash_str(&s.name);
        let row_len = if s.shape.len() == 1 {
            s.shape[0]
        } else {
            s.shape[1..].iter().product()
        };
        let rows = s.shape.iter().product::<usize>() / row_len;
        let cols = match s.law {
            Law::Linear { .. } | Law::Embed => column_scales(s, seed, &outliers),
            _ => vec![1.0; row_len],
        };
        // Pieces of ~8 MiB of output, rows in parallel within a piece.
        let rows_per_piece = ((8 << 20) / (row_len * 2)).max(1);
        let mut buf = vec![0u8; rows_per_piece.min(rows) * row_len * 2];
        let mut r0 = 0;
        while r0 < rows {
            let n = rows_per_piece.min(rows - r0);
            buf[..n * row_len * 2]
                .par_chunks_mut(row_len * 2)
                .enumerate()
                .try_for_each(|(k, out)| {
                    let mut f = vec![0.0f32; row_len];
                    if s.shape.len() == 1 {
                        fill_row(s, seed, 0, &cols, &mut f);
                    } else {
                        fill_row(s, seed, r0 + k, &cols, &mut f);
                    }
                    quantize_row(DType::BF16, &f, out)
                })?;
            w.write_all(&buf[..n * row_len * 2])
                .with_context(|| format!("writing {}", path.display()))?;
            r0 += n;
        }
    }
    w.flush()?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "reel-synth-checkpoint: wrote {} ({} tensors, {:.1} MiB, {:.1}s, {:.0} MiB/s)",
        args.out.display(),
        specs.len(),
        off as f64 / (1 << 20) as f64,
        secs,
        off as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}
