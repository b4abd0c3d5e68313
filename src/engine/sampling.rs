//! Token sampling on the host: greedy, or transformers' pipeline (repetition penalty ->
//! temperature -> top-k -> top-p -> softmax -> draw) with a seeded PRNG.
//!
//! The draw cannot reproduce torch's RNG; everything before it follows transformers' logits
//! processors, so the set of candidate tokens and their probabilities match.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// `None` or `Some(0)`: off.
    pub top_k: Option<usize>,
    /// 1.0: off.
    pub top_p: f32,
    pub seed: u64,
    /// 1.0: off.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: 0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::flag(
                "--temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::flag(
                "--top-p",
                format!("must lie in [0, 1], got {}", self.top_p),
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::flag(
                "--repetition-penalty",
                format!(
                    "must be a finite number > 0, got {}",
                    self.repetition_penalty
                ),
            ));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64 (the seeding its authors recommend).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    // Scratch reused across calls (the vocabulary is ~152k entries).
    scores: Vec<f32>,
    probs: Vec<f32>,
    keys: Vec<u64>,
    ids: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
            scores: Vec::new(),
            probs: Vec::new(),
            keys: Vec::new(),
            ids: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given the logits at the last position and every token id so far
    /// (prompt and generated; the repetition penalty looks at all of them, as transformers does).
    pub fn sample(&mut self, logits: &[f32], previous_tokens: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Other("sampling: empty logits".into()));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(Error::Other(format!("sampling: logit {i} is NaN")));
        }
        let p = self.params;
        if p.is_greedy() && p.repetition_penalty == 1.0 {
            return argmax(logits);
        }
        let mut scores = std::mem::take(&mut self.scores);
        scores.clear();
        scores.extend_from_slice(logits);
        let r = self.sample_scores(&mut scores, previous_tokens, &p);
        self.scores = scores;
        r
    }

    fn sample_scores(
        &mut self,
        scores: &mut [f32],
        previous: &[u32],
        p: &SamplingParams,
    ) -> Result<u32> {
        if p.repetition_penalty != 1.0 {
            repetition_penalty(scores, previous, p.repetition_penalty, &mut self.ids)?;
        }
        if p.is_greedy() {
            return argmax(scores);
        }
        if p.temperature != 1.0 {
            for s in scores.iter_mut() {
                *s /= p.temperature;
            }
        }
        // transformers would fail on the NaN probabilities an infinite score produces.
        if let Some(i) = scores.iter().position(|&s| s == f32::INFINITY) {
            return Err(Error::Other(format!(
                "sampling: logit {i} is infinite after temperature {}",
                p.temperature
            )));
        }
        if let Some(k) = p.top_k.filter(|&k| k > 0) {
            top_k(scores, k, &mut self.probs);
        }
        if p.top_p < 1.0 {
            top_p(scores, p.top_p, &mut self.probs, &mut self.keys);
        }
        let probs = softmax_in_place(scores)?;
        let u = self.rng.next_f64() * probs;
        draw(scores, u)
    }
}

/// transformers' RepetitionPenaltyLogitsProcessor: each distinct previous id's score is
/// multiplied by the penalty when negative and divided by it otherwise.
fn repetition_penalty(
    scores: &mut [f32],
    previous: &[u32],
    penalty: f32,
    ids: &mut Vec<u32>,
) -> Result<()> {
    ids.clear();
    ids.extend_from_slice(previous);
    ids.sort_unstable();
    ids.dedup();
    if let Some(&t) = ids.last().filter(|&&t| t as usize >= scores.len()) {
        return Err(Error::Other(format!(
            "sampling: previous token {t} is outside the vocabulary of {}",
            scores.len()
        )));
    }
    for &t in ids.iter() {
        let s = &mut scores[t as usize];
        *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
    }
    Ok(())
}

/// Index of the largest score; ties go to the lowest index (torch.argmax); NaN is an error.
pub fn argmax(scores: &[f32]) -> Result<u32> {
    let mut best = 0;
    for (i, &x) in scores.iter().enumerate() {
        if x.is_nan() {
            return Err(Error::Other(format!("sampling: logit {i} is NaN")));
        }
        if x > scores[best] {
            best = i;
        }
    }
    if scores.is_empty() {
        return Err(Error::Other("sampling: empty logits".into()));
    }
    Ok(best as u32)
}

/// TopKLogitsWarper: every score below the k-th largest becomes -inf (ties with it stay).
fn top_k(scores: &mut [f32], k: usize, tmp: &mut Vec<f32>) {
    if k >= scores.len() {
        return;
    }
    tmp.clear();
    tmp.extend_from_slice(scores);
    let (_, kth, _) = tmp.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    for s in scores.iter_mut() {
        if *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// A u64 that orders tokens by score, and among equal scores puts the lower index higher
/// (so ties resolve like argmax).
fn sort_key(score: f32, i: u32) -> u64 {
    let b = score.to_bits();
    let ord = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    ((ord as u64) << 32) | (u32::MAX - i) as u64
}

fn key_index(k: u64) -> usize {
    (u32::MAX - k as u32) as usize
}

/// TopPLogitsWarper: sort ascending, softmax, cumulative sum; tokens whose cumulative
/// probability is <= 1 - top_p become -inf, but the largest always stays.
fn top_p(scores: &mut [f32], top_p: f32, probs: &mut Vec<f32>, keys: &mut Vec<u64>) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    probs.clear();
    let mut sum = 0f64;
    for &s in scores.iter() {
        let e = (s - max).exp();
        probs.push(e);
        sum += e as f64;
    }
    let sum = sum as f32;
    // Tokens whose probability underflows to 0 have cumulative probability 0 <= 1 - top_p and
    // are removed whatever their order (the maximum has probability > 0), so they need no key.
    keys.clear();
    for (i, (&s, p)) in scores.iter().zip(probs.iter_mut()).enumerate() {
        *p /= sum;
        if *p > 0.0 {
            keys.push(sort_key(s, i as u32));
        }
    }
    let n = keys.len();
    if n == 0 {
        return;
    }
    let threshold = 1.0 - top_p;
    // The removed tokens form a prefix of the ascending order, so only the top needs sorting:
    // take the m largest, and grow m until the mass below them is certainly removed.
    let mut m = n.min(256);
    let (below, top) = loop {
        if m < n {
            keys.select_nth_unstable(n - m);
        }
        let below: f64 = keys[..n - m]
            .iter()
            .map(|&k| probs[key_index(k)] as f64)
            .sum();
        if m == n || below as f32 <= threshold {
            break (below, n - m);
        }
        m = (m * 4).min(n);
    };
    keys[top..].sort_unstable();
    // torch's CPU cumsum accumulates in double and rounds each partial sum to float.
    let mut cum = below;
    let mut keep_from = n - 1;
    for (j, &k) in keys.iter().enumerate().skip(top) {
        cum += probs[key_index(k)] as f64;
        if cum as f32 > threshold {
            keep_from = j;
            break;
        }
    }
    let kept: Vec<(usize, f32)> = keys[keep_from..]
        .iter()
        .map(|&k| (key_index(k), scores[key_index(k)]))
        .collect();
    scores.fill(f32::NEG_INFINITY);
    for (i, s) in kept {
        scores[i] = s;
    }
}

/// Turns scores into unnormalized weights `exp(s - max)` in place; returns their sum.
fn softmax_in_place(scores: &mut [f32]) -> Result<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Err(Error::Other(format!(
            "sampling: no finite logit to sample from (max {max})"
        )));
    }
    let mut sum = 0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    Ok(sum)
}

/// Inverse CDF: the first token whose cumulative weight exceeds `u` (in [0, total)).
fn draw(weights: &[f32], u: f64) -> Result<u32> {
    let mut cum = 0f64;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cum += w as f64;
            last = Some(i);
            if u < cum {
                return Ok(i as u32);
            }
        }
    }
    // Only reachable through rounding at the very top of the range.
    last.map(|i| i as u32)
        .ok_or_else(|| Error::Other("sampling: all probabilities are zero".into()))
}

#[cfg(test)]
mod tests {
    use super::top_p as top_p_fn;
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    fn counts(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits, &[]).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn greedy_takes_lowest_index_on_ties() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[1.0, 3.0, -2.0, 3.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -5.0, -5.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[7.0], &[]).unwrap(), 0);
        assert_eq!(argmax(&[0.5, 0.5, 0.5]).unwrap(), 0);
    }

    #[test]
    fn nan_and_empty_are_errors() {
        for t in [0.0, 1.0] {
            let mut s = Sampler::new(params(t)).unwrap();
            let e = s
                .sample(&[1.0, f32::NAN, 2.0], &[])
                .unwrap_err()
                .to_string();
            assert_eq!(e, "sampling: logit 1 is NaN");
            assert!(s.sample(&[], &[]).is_err());
        }
        let mut s = Sampler::new(params(1.0)).unwrap();
        assert!(s.sample(&[f32::NEG_INFINITY; 3], &[]).is_err());
        assert!(s.sample(&[0.0, f32::INFINITY], &[]).is_err());
    }

    #[test]
    fn bad_params_name_their_flag() {
        let bad = [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "--temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "--temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    top_p: -0.1,
                    ..Default::default()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "--repetition-penalty",
            ),
        ];
        for (p, flag) in bad {
            let e = Sampler::new(p).err().expect("rejected").to_string();
            assert!(e.starts_with(flag), "{e}");
        }
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        })
        .unwrap();
        let e = s.sample(&[1.0, 2.0], &[5]).unwrap_err().to_string();
        assert!(
            e.contains("previous token 5 is outside the vocabulary of 2"),
            "{e}"
        );
    }

    fn spread_logits() -> Vec<f32> {
        (0..200)
            .map(|i| ((i * 37 % 211) as f32) * 0.05 - 5.0)
            .collect()
    }

    #[test]
    fn top_k_1_and_tiny_top_p_equal_greedy() {
        let logits = spread_logits();
        let want = argmax(&logits).unwrap();
        for seed in 0..20 {
            let mut k1 = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: Some(1),
                seed,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(k1.sample(&logits, &[]).unwrap(), want);
            // Video-R1's evaluation settings.
            let mut p = Sampler::new(SamplingParams {
                temperature: 0.01,
                top_p: 0.001,
                seed,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(p.sample(&logits, &[]).unwrap(), want);
            let mut p = Sampler::new(SamplingParams {
                temperature: 1.5,
                top_p: 0.001,
                seed,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(p.sample(&logits, &[]).unwrap(), want);
            let mut p = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 0.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(p.sample(&logits, &[]).unwrap(), want);
        }
    }

    #[test]
    fn seed_determinism() {
        let logits = spread_logits();
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(50),
            top_p: 0.9,
            seed: 1234,
            repetition_penalty: 1.0,
        };
        let run = |p| {
            let mut s = Sampler::new(p).unwrap();
            (0..64)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(p);
        assert_eq!(a, run(p));
        assert_ne!(a, run(SamplingParams { seed: 1235, ..p }));
        // Not degenerate: many distinct tokens appear.
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert!(d.len() > 10, "{d:?}");
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let probs = [0.2f32, 0.5, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln() + 3.0).collect();
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        })
        .unwrap();
        let n = 10_000;
        let c = counts(&mut s, &logits, n);
        for (ci, p) in c.iter().zip(probs) {
            let f = *ci as f32 / n as f32;
            assert!((f - p).abs() < 0.02, "{c:?}");
        }
        // Temperature 0.5 squares the probabilities before renormalizing.
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.5,
            seed: 8,
            ..Default::default()
        })
        .unwrap();
        let c = counts(&mut s, &logits, n);
        let z: f32 = probs.iter().map(|p| p * p).sum();
        for (ci, p) in c.iter().zip(probs) {
            let f = *ci as f32 / n as f32;
            assert!((f - p * p / z).abs() < 0.02, "{c:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        // probs 0.1, 0.4, 0.15, 0.35
        let probs = [0.1f32, 0.4, 0.15, 0.35];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let c = counts(&mut s, &logits, 10_000);
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        assert!((c[1] as f32 / 10_000.0 - 0.4 / 0.75).abs() < 0.02, "{c:?}");
        // Ascending cumsum: 0.1, 0.25, 0.6, 1.0; with top_p 0.7 those <= 0.3 go (tokens 0, 2).
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.7,
            seed: 4,
            ..Default::default()
        })
        .unwrap();
        let c = counts(&mut s, &logits, 10_000);
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        // With top_p 0.8 the threshold 0.2 keeps token 2 (cumsum 0.25) as well.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 5,
            ..Default::default()
        })
        .unwrap();
        let c = counts(&mut s, &logits, 10_000);
        assert_eq!(c[0], 0, "{c:?}");
        assert!((c[2] as f32 / 10_000.0 - 0.15 / 0.9).abs() < 0.02, "{c:?}");
        // top_k keeps every token tied with the k-th largest.
        let mut v = vec![1.0, 2.0, 2.0, 0.0];
        top_k(&mut v, 2, &mut Vec::new());
        assert_eq!(v, [f32::NEG_INFINITY, 2.0, 2.0, f32::NEG_INFINITY]);
        let mut v = vec![1.0, 2.0, 3.0, 0.0];
        top_k(&mut v, 2, &mut Vec::new());
        assert_eq!(v, [f32::NEG_INFINITY, 2.0, 3.0, f32::NEG_INFINITY]);
    }

    /// The straightforward TopPLogitsWarper (full ascending sort) on the same arithmetic.
    fn top_p_reference(scores: &[f32], top_p: f32) -> Vec<f32> {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = scores.iter().map(|&s| (s - max).exp() as f64).sum::<f64>() as f32;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
        let mut cum = 0f64;
        let mut out = scores.to_vec();
        for (j, &i) in order.iter().enumerate() {
            cum += ((scores[i] - max).exp() / sum) as f64;
            if cum as f32 <= 1.0 - top_p && j + 1 < order.len() {
                out[i] = f32::NEG_INFINITY;
            }
        }
        out
    }

    #[test]
    fn top_p_selection_matches_a_full_sort() {
        let mut rng = Rng::new(99);
        let (mut probs, mut keys) = (Vec::new(), Vec::new());
        // Peaked and flat distributions, so the kept set ranges from 1 token to most of them
        // (the partial selection must grow past its first 256 candidates).
        for (spread, vocab) in [(8.0f32, 5000usize), (1.0, 5000), (0.05, 3000), (0.0, 700)] {
            let logits: Vec<f32> = (0..vocab)
                .map(|_| ((rng.next_f64() as f32) * spread * 4.0).round() / 4.0)
                .collect();
            for top_p in [0.0f32, 0.001, 0.3, 0.9, 0.99, 0.999] {
                let want = top_p_reference(&logits, top_p);
                let mut got = logits.clone();
                top_p_fn(&mut got, top_p, &mut probs, &mut keys);
                assert_eq!(got, want, "spread {spread}, top_p {top_p}");
                let kept = got.iter().filter(|s| s.is_finite()).count();
                assert!(kept >= 1);
                if spread == 0.0 && top_p == 0.9 {
                    assert!(kept > 256, "{kept}");
                }
            }
        }
    }

    #[test]
    fn repetition_penalty_pushes_seen_tokens_down() {
        let mut v = vec![2.0, -2.0, 0.0, 4.0];
        repetition_penalty(&mut v, &[0, 1, 2, 0, 0], 2.0, &mut Vec::new()).unwrap();
        // Applied once per distinct id: positive /p, negative *p.
        assert_eq!(v, [1.0, -4.0, 0.0, 4.0]);
        // Greedy picks token 0 without the penalty, token 1 with it.
        let logits = [3.0, 2.0, -1.0];
        let mut g = Sampler::new(params(0.0)).unwrap();
        assert_eq!(g.sample(&logits, &[0]).unwrap(), 0);
        let mut g = Sampler::new(SamplingParams {
            repetition_penalty: 1.6,
            ..params(0.0)
        })
        .unwrap();
        assert_eq!(g.sample(&logits, &[0]).unwrap(), 1);
        // A penalty below 1 favours repeats instead.
        let mut g = Sampler::new(SamplingParams {
            repetition_penalty: 0.5,
            ..params(0.0)
        })
        .unwrap();
        assert_eq!(g.sample(&[1.0, 1.5, -1.0], &[0]).unwrap(), 0);
    }

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs[0], Rng::new(43).next_u64());
        let mut r = Rng::new(1);
        let mean: f64 = (0..100_000).map(|_| r.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
