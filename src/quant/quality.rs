//! Quality of a quantized model against its reference: KL divergence and top-1 agreement of
//! next-token distributions, computed from raw logits (as llama.cpp's perplexity --kl-divergence
//! reports them).

use crate::error::{Error, Result};

/// Summary over positions of KL(reference || candidate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitStats {
    pub positions: usize,
    /// Mean of KL(p_ref || p_cand) in nats.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Fraction of positions whose argmax agrees.
    pub top1_agreement: f64,
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// KL(softmax(reference) || softmax(candidate)) in nats for one position.
pub fn kl_divergence(reference: &[f32], candidate: &[f32]) -> Result<f64> {
    if reference.len() != candidate.len() || reference.is_empty() {
        return Err(Error::Other(format!(
            "quality: logit rows differ in length ({} vs {})",
            reference.len(),
            candidate.len()
        )));
    }
    let (lp, lq) = (log_softmax(reference), log_softmax(candidate));
    Ok(lp
        .iter()
        .zip(&lq)
        .map(|(&a, &b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0))
}

/// Compares two `[positions, vocab]` row-major logit sets.
pub fn compare_logits(reference: &[f32], candidate: &[f32], vocab: usize) -> Result<LogitStats> {
    if vocab == 0
        || reference.len() != candidate.len()
        || reference.len() % vocab != 0
        || reference.is_empty()
    {
        return Err(Error::Other(format!(
            "quality: logit sets of {} and {} values do not split into rows of {vocab}",
            reference.len(),
            candidate.len()
        )));
    }
    let positions = reference.len() / vocab;
    let (mut sum, mut max, mut agree) = (0.0f64, 0.0f64, 0usize);
    for (r, c) in reference
        .chunks_exact(vocab)
        .zip(candidate.chunks_exact(vocab))
    {
        let kl = kl_divergence(r, c)?;
        sum += kl;
        max = max.max(kl);
        agree += usize::from(argmax(r) == argmax(c));
    }
    Ok(LogitStats {
        positions,
        mean_kl: sum / positions as f64,
        max_kl: max,
        top1_agreement: agree as f64 / positions as f64,
    })
}
