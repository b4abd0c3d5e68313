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

/// The host argmax; for a row holding NaN (whose KL is NaN too), the first NaN's index.
fn argmax(x: &[f32]) -> usize {
    crate::backend::sample::argmax(x).unwrap_or_else(|i| i)
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

/// Running summary of KL(reference || candidate) and top-1 agreement, one position at a time
/// (so a report need not hold every candidate row).
#[derive(Clone, Copy, Debug, Default)]
pub struct Accumulator {
    positions: usize,
    sum_kl: f64,
    max_kl: f64,
    agree: usize,
}

impl Accumulator {
    /// Adds one position's logits; returns its KL.
    pub fn add(&mut self, reference: &[f32], candidate: &[f32]) -> Result<f64> {
        let kl = kl_divergence(reference, candidate)?;
        self.positions += 1;
        self.sum_kl += kl;
        self.max_kl = self.max_kl.max(kl);
        self.agree += usize::from(argmax(reference) == argmax(candidate));
        Ok(kl)
    }

    /// Positions whose argmax agreed.
    pub fn agreeing(&self) -> usize {
        self.agree
    }

    /// The summary; an error when nothing was added.
    pub fn stats(&self) -> Result<LogitStats> {
        if self.positions == 0 {
            return Err(Error::Other("quality: no positions compared".into()));
        }
        Ok(LogitStats {
            positions: self.positions,
            mean_kl: self.sum_kl / self.positions as f64,
            max_kl: self.max_kl,
            top1_agreement: self.agree as f64 / self.positions as f64,
        })
    }
}

/// Compares two `[positions, vocab]` row-major logit sets.
pub fn compare_logits(reference: &[f32], candidate: &[f32], vocab: usize) -> Result<LogitStats> {
    if vocab == 0
        || reference.len() != candidate.len()
        || !reference.len().is_multiple_of(vocab)
        || reference.is_empty()
    {
        return Err(Error::Other(format!(
            "quality: logit sets of {} and {} values do not split into rows of {vocab}",
            reference.len(),
            candidate.len()
        )));
    }
    let mut acc = Accumulator::default();
    for (r, c) in reference
        .chunks_exact(vocab)
        .zip(candidate.chunks_exact(vocab))
    {
        acc.add(r, c)?;
    }
    acc.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: f64 = std::f64::consts::E;

    #[test]
    fn kl_matches_hand_computed_values() {
        // p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
        let kl = kl_divergence(&[0.0, 0.0], &[3.0f32.ln(), 0.0]).unwrap();
        assert!((kl - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-7, "{kl}");
        // Reversed: p = (3/4, 1/4), q = (1/2, 1/2): 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120.
        let kl = kl_divergence(&[3.0f32.ln(), 0.0], &[0.0, 0.0]).unwrap();
        assert!((kl - (0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln())).abs() < 1e-7);
        assert!((kl - 0.130_812_035).abs() < 1e-7, "{kl}");
        // p = (1, e, 1)/(2+e), q = (e, 1, 1)/(2+e): KL = (e - 1)/(2 + e) = 0.3641802.
        let kl = kl_divergence(&[0.0, 1.0, 0.0], &[1.0, 0.0, 0.0]).unwrap();
        assert!((kl - (E - 1.0) / (2.0 + E)).abs() < 1e-7, "{kl}");
        // Invariant to a constant shift of either row (softmax is).
        let kl2 = kl_divergence(&[10.0, 11.0, 10.0], &[-4.0, -5.0, -5.0]).unwrap();
        assert!((kl2 - kl).abs() < 1e-6, "{kl2}");
        assert_eq!(kl_divergence(&[1.0, 2.0], &[1.0, 2.0]).unwrap(), 0.0);
    }

    #[test]
    fn accumulator_summarises_positions() {
        let mut acc = Accumulator::default();
        assert!(acc.stats().is_err());
        // Row 1: argmax 1 vs 0 (disagree), KL (e-1)/(2+e).
        let k1 = acc.add(&[0.0, 1.0, 0.0], &[1.0, 0.0, 0.0]).unwrap();
        // Row 2: identical, KL 0, agree.
        let k2 = acc.add(&[0.0, 0.0, 2.0], &[0.0, 0.0, 2.0]).unwrap();
        // Row 3: p = (1,1,1)/3 vs q = (1,1,e)/(2+e): ties resolve to the first index in both.
        let k3 = acc.add(&[0.0, 0.0, 0.0], &[0.0, 0.0, 1.0]).unwrap();
        let want3 = (2.0 + E).ln() - 1.0 / 3.0 - 3.0f64.ln();
        assert!((k3 - want3).abs() < 1e-7, "{k3} vs {want3}");
        assert_eq!(k2, 0.0);
        let s = acc.stats().unwrap();
        assert_eq!(s.positions, 3);
        assert_eq!(acc.agreeing(), 1);
        assert!((s.top1_agreement - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.mean_kl - (k1 + k3) / 3.0).abs() < 1e-12);
        assert_eq!(s.max_kl, k1.max(k3));
        // compare_logits over the same rows gives the same summary.
        let r = [0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        let c = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 1.0];
        assert_eq!(compare_logits(&r, &c, 3).unwrap(), s);
        assert!(compare_logits(&r, &c[..6], 3).is_err());
        assert!(compare_logits(&r, &c, 0).is_err());
        assert!(acc.add(&[0.0; 2], &[0.0; 3]).is_err());
    }
}
