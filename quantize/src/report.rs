//! --report: how close the written file's next-token distributions are to the source
//! checkpoint's. Both run on the CPU backend with f32 activations (so the difference is the
//! weights' storage alone) over a prompt set rendered with the chat template. The source model
//! runs first and greedily continues each prompt; the quantized file is then teacher-forced along
//! the same tokens, so both see identical inputs at every compared position. Per position:
//! KL(source || file) of the softmax distributions and whether the argmaxes agree
//! (reel::quantize::quality).

use anyhow::{bail, Context, Result};
use reel::engine::sampling::argmax;
use reel::engine::{Device, Engine, EngineOptions};
use reel::model::Model;
use reel::quantize::quality::{Accumulator, LogitStats};
use reel::DType;
use std::path::Path;
use std::time::Instant;

/// Built-in prompts in the style of the fixture cases: chat, a description request, a
/// Video-R1-style reasoning question, and code.
pub const DEFAULT_PROMPTS: &[&str] = &[
    "Hello, who are you?",
    "Describe a video of a ball rolling down a wooden ramp.",
    "A man puts three apples in a bowl and takes one out. How many apples are in the bowl? \
     Think step by step and answer with a number.",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
];

/// One prompt per non-empty line.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--report-prompts {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        bail!(
            "--report-prompts {}: no prompts (one per line)",
            path.display()
        );
    }
    Ok(prompts)
}

pub struct Report {
    pub stats: LogitStats,
    pub agreeing: usize,
    pub prompts: usize,
    pub tokens_per_prompt: usize,
    pub seconds: f64,
}

impl Report {
    pub fn describe(&self, preset: &str) -> String {
        format!(
            "reel-quantize: quality of {preset} vs the source checkpoint (CPU, f32 activations; {} prompts x {} positions, teacher-forced on the source's greedy tokens):\n  mean KL {:.4e} nats, max KL {:.4e}, top-1 agreement {:.4} ({}/{}), {:.1}s",
            self.prompts,
            self.tokens_per_prompt,
            self.stats.mean_kl,
            self.stats.max_kl,
            self.stats.top1_agreement,
            self.agreeing,
            self.stats.positions,
            self.seconds
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reference": "source checkpoint",
            "backend": "cpu",
            "activations": "f32",
            "prompts": self.prompts,
            "tokens_per_prompt": self.tokens_per_prompt,
            "positions": self.stats.positions,
            "mean_kl": self.stats.mean_kl,
            "max_kl": self.stats.max_kl,
            "top1_agreement": self.stats.top1_agreement,
        })
    }
}

fn engine(path: &Path, ctx: usize) -> Result<Engine> {
    let m = Model::load(path).with_context(|| format!("--report: loading {}", path.display()))?;
    Ok(Engine::new(
        m,
        EngineOptions {
            device: Device::Cpu,
            act: DType::F32,
            ctx,
            ..Default::default()
        },
    )?)
}

/// Logits at the end of `ids` and after each of the first `n - 1` tokens of `next(step, logits)`
/// fed back one at a time: `n` rows, each handed to `row`.
fn walk(
    e: &mut Engine,
    ids: &[u32],
    n: usize,
    mut next: impl FnMut(usize, &[f32]) -> Result<u32>,
) -> Result<()> {
    let pos: Vec<i32> = (0..3).flat_map(|_| 0..ids.len() as i32).collect();
    let mut l = e.text.forward(e.be.as_mut(), ids, &pos, None)?;
    for step in 0..n {
        let tok = next(step, &l)?;
        if step + 1 < n {
            let p = e.model.arch.decode_positions(ids.len() + step, 0);
            l = e.text.forward(e.be.as_mut(), &[tok], &p, None)?;
        }
    }
    Ok(())
}

/// Runs the comparison of `file` against the checkpoint directory `source`.
pub fn run(source: &Path, file: &Path, prompts: &[String], n: usize) -> Result<Report> {
    let t0 = Instant::now();
    // Prompt ids from the source's tokenizer and template; the file carries the same ones.
    let m =
        Model::load(source).with_context(|| format!("--report: loading {}", source.display()))?;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| m.text_prompt(p, None))
        .collect::<reel::Result<_>>()?;
    drop(m);
    let ctx = ids.iter().map(Vec::len).max().unwrap_or(0) + n + 1;

    // Source: logits rows and its greedy tokens, one engine at a time to bound memory.
    let mut reference: Vec<(Vec<f32>, Vec<u32>)> = Vec::new();
    {
        let mut e = engine(source, ctx)?;
        for p in &ids {
            e.text.reset(e.be.as_mut())?;
            let (mut rows, mut toks) = (Vec::new(), Vec::new());
            walk(&mut e, p, n, |_, l| {
                rows.extend_from_slice(l);
                let t = argmax(l)?;
                toks.push(t);
                Ok(t)
            })?;
            reference.push((rows, toks));
        }
    }

    let mut acc = Accumulator::default();
    let mut e = engine(file, ctx)?;
    for (p, (rows, toks)) in ids.iter().zip(&reference) {
        e.text.reset(e.be.as_mut())?;
        let vocab = rows.len() / n;
        walk(&mut e, p, n, |step, l| {
            if l.len() != vocab {
                bail!(
                    "--report: {} has {} logits per position, the source {vocab}",
                    file.display(),
                    l.len()
                );
            }
            acc.add(&rows[step * vocab..(step + 1) * vocab], l)?;
            Ok(toks[step])
        })?;
    }
    Ok(Report {
        stats: acc.stats()?,
        agreeing: acc.agreeing(),
        prompts: prompts.len(),
        tokens_per_prompt: n,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
