//! Token sampling, defined once for every backend and the engine: the arguments the `sample`
//! op reads from a backend tensor ([`SampleArgs`]), the counter-based draw ([`sample_hash`]),
//! the row sampler itself ([`sample_row`], which kernels/sampling.cu reproduces bit for bit),
//! the host implementation of `Backend::sample` ([`sample_on_host`]) and the one host argmax.

use super::check::{self, SampleDims};
use super::{host, Backend, TRef};
use crate::error::Result;

/// Index of the largest value, the lowest index on ties (as torch.argmax); `Err(i)` when
/// `x[i]` is the first NaN. An empty slice gives `Ok(0)`.
pub fn argmax(x: &[f32]) -> Result<usize, usize> {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            return Err(i);
        }
        if v > x[best] {
            best = i;
        }
    }
    Ok(best)
}

/// The sampling arguments the `sample` op reads from a backend tensor (I32 [`SampleArgs::WORDS`]),
/// so that a captured decode graph samples with whatever the host wrote before each replay.
///
/// Words: 0 temperature (f32 bits), 1 top_k (0: off), 2 top_p (f32 bits; >= 1: off),
/// 3/4 seed (low/high 32 bits), 5 step, 6 an explicit 32-bit draw, 7 flags (bit 0: use word 6
/// instead of [`sample_hash`]`(seed, step)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleArgs {
    /// `<= 0` (or NaN): greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// `>= 1`: off.
    pub top_p: f32,
    pub seed: u64,
    /// Which draw of the seed's stream this is (the engine counts generated tokens).
    pub step: u32,
    /// A uniform in [0, 1) to use instead of the hash of (seed, step); the draw is its 32-bit
    /// fixed-point value `floor(u * 2^32)`.
    pub uniform: Option<f64>,
}

impl SampleArgs {
    pub const WORDS: usize = 8;

    pub fn greedy() -> SampleArgs {
        SampleArgs {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            step: 0,
            uniform: None,
        }
    }

    pub fn to_words(&self) -> [i32; SampleArgs::WORDS] {
        let (draw, flags) = match self.uniform {
            Some(u) => (uniform_to_u32(u), 1),
            None => (0, 0),
        };
        [
            self.temperature.to_bits() as i32,
            self.top_k as i32,
            self.top_p.to_bits() as i32,
            self.seed as u32 as i32,
            (self.seed >> 32) as u32 as i32,
            self.step as i32,
            draw as i32,
            flags,
        ]
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// The 32-bit draw `d`: the token is the first whose cumulative weight exceeds
    /// `floor(d * Z / 2^32)` (see [`sample_row`]).
    pub fn draw_from_words(w: &[i32; SampleArgs::WORDS]) -> u32 {
        if w[7] & 1 != 0 {
            w[6] as u32
        } else {
            sample_hash(
                (w[3] as u32 as u64) | ((w[4] as u32 as u64) << 32),
                w[5] as u32,
            )
        }
    }
}

/// `floor(u * 2^32)` for u in [0, 1), clamped.
pub fn uniform_to_u32(u: f64) -> u32 {
    if u.is_nan() || u <= 0.0 {
        0
    } else {
        (u * 4_294_967_296.0).min(4_294_967_295.0) as u32
    }
}

/// The counter-based draw of `(seed, step)`: splitmix64's finalizer over
/// `seed + (step + 1) * golden`, high 32 bits. The CUDA kernel computes the same bits.
pub fn sample_hash(seed: u64, step: u32) -> u32 {
    let mut z = seed.wrapping_add((step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 32) as u32
}

/// `Backend::sample` on the host: reads the logits and arguments (a set per row, or one for
/// all), samples each row with [`sample_row`], writes the ids.
pub fn sample_on_host<B: Backend + ?Sized>(
    be: &mut B,
    logits: TRef,
    args: TRef,
    out: TRef,
) -> Result<()> {
    let SampleDims {
        vocab, args_stride, ..
    } = check::sample(&logits, &args, &out)?;
    let words = host::read_i32(be, &args)?;
    let x = host::read_f32(be, &logits)?;
    let ids: Vec<i32> = x
        .chunks(vocab)
        .enumerate()
        .map(|(r, row)| {
            let w: [i32; SampleArgs::WORDS] = std::array::from_fn(|i| words[r * args_stride + i]);
            sample_row(row, &w)
        })
        .collect();
    host::write_i32(be, &out, &ids)
}

// The definition every backend reproduces bit for bit (kernels/sampling.cu):
// - greedy (temperature <= 0 or NaN): argmax, lowest index on ties;
// - otherwise s_i = f32(x_i) / temperature (IEEE division) and m = max s_i;
// - top-k (0 < k < V): keep every token whose s is >= the k-th largest s (ties with it stay,
//   as transformers' TopKLogitsWarper does);
// - weights w_i = floor(sample_exp(s_i - m) * 2^40) as integers (0 when s_i - m < -28, where
//   exp < 2^-40), so every sum below is exact and order-free;
// - top-p (top_p < 1): rank the kept tokens by (s desc, index asc) and keep those whose
//   weight ranked strictly before them, A, satisfies A * 2^32 < max(floor(top_p * 2^32) * Z, 1)
//   (Z: total kept weight). This is transformers' "drop the ascending prefix whose cumulative
//   probability is <= 1 - top_p" with the best token always kept;
// - draw: with d the 32-bit draw and Z' the kept total, the token is the first index (in
//   vocabulary order) whose cumulative kept weight exceeds floor(d * Z' / 2^32).
// The only approximations against real-valued softmax sampling are the polynomial exp (< 2e-7
// relative), weights below 2^-40 of the maximum dropped, and 32-bit draw/top_p resolution.

/// Order-preserving u32 image of an f32 (larger float, larger key; -0 just below +0).
pub fn sample_key(s: f32) -> u32 {
    let b = s.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`sample_key`].
pub fn sample_unkey(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// `exp(d)` for d in [-28, 0]: Cody-Waite reduction by ln 2 and a degree-7 Taylor polynomial,
/// written as explicit f32 multiplies and fmas so that the CUDA kernel computes the same bits.
pub fn sample_exp(d: f32) -> f32 {
    let n = (d * f32::from_bits(0x3fb8_aa3b)).round_ties_even();
    let r = (-n).mul_add(f32::from_bits(0x3f31_7200), d);
    let r = (-n).mul_add(f32::from_bits(0x35bf_be8e), r);
    let mut p = f32::from_bits(0x3950_0d01); // 1/5040
    for c in [
        0x3ab6_0b61u32,
        0x3c08_8889,
        0x3d2a_aaab,
        0x3e2a_aaab,
        0x3f00_0000,
    ] {
        p = p.mul_add(r, f32::from_bits(c));
    }
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Integer weight of score `s` under maximum `m`: `floor(exp(s - m) * 2^40)`.
pub fn sample_weight(s: f32, m: f32) -> u64 {
    let d = s - m;
    if d >= -28.0 {
        (sample_exp(d) * 1_099_511_627_776.0) as u64
    } else {
        0
    }
}

/// One row of `Backend::sample` (see the definition above); -1 for a row that cannot be
/// sampled (a NaN logit, +inf after temperature, or no finite logit).
pub fn sample_row(x: &[f32], args: &[i32; 8]) -> i32 {
    if x.is_empty() || x.iter().any(|v| v.is_nan()) {
        return -1;
    }
    let temp = f32::from_bits(args[0] as u32);
    // NaN counts as greedy, like the kernel's !(t > 0).
    if temp.is_nan() || temp <= 0.0 {
        return argmax(x).map_or(-1, |i| i as i32);
    }
    let s: Vec<f32> = x.iter().map(|&v| v / temp).collect();
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m.is_infinite() {
        return -1;
    }
    let keys: Vec<u32> = s.iter().map(|&v| sample_key(v)).collect();
    let top_k = args[1] as u32 as usize;
    let top_p = f32::from_bits(args[2] as u32);
    // The ranking (s desc, index asc); only top-k and top-p need it.
    let mut order: Vec<usize> = Vec::new();
    if (top_k > 0 && top_k < x.len()) || top_p < 1.0 {
        order = (0..x.len()).collect();
        order.sort_by(|&a, &b| keys[b].cmp(&keys[a]).then(a.cmp(&b)));
    }
    let kth = if top_k > 0 && top_k < x.len() {
        keys[order[top_k - 1]]
    } else {
        0
    };
    let w: Vec<u64> = (0..x.len())
        .map(|i| {
            if keys[i] >= kth {
                sample_weight(s[i], m)
            } else {
                0
            }
        })
        .collect();
    let mut kept: Vec<bool> = keys.iter().map(|&k| k >= kth).collect();
    if top_p < 1.0 {
        let z: u64 = w.iter().sum();
        let p32 = (top_p.max(0.0) * 4_294_967_296.0) as u64;
        let thr = (p32 as u128 * z as u128).max(1);
        let mut above = 0u64;
        for &i in order.iter().filter(|&&i| keys[i] >= kth) {
            kept[i] = ((above as u128) << 32) < thr;
            above += w[i];
        }
    }
    let total: u64 = (0..x.len()).filter(|&i| kept[i]).map(|i| w[i]).sum();
    let draw = SampleArgs::draw_from_words(args);
    let target = ((draw as u128 * total as u128) >> 32) as u64;
    let mut cum = 0u64;
    for i in 0..x.len() {
        if kept[i] {
            cum += w[i];
            if cum > target {
                return i as i32;
            }
        }
    }
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_nan_and_infinities() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Ok(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), Ok(0));
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0, -5.0]), Ok(1));
        assert_eq!(argmax(&[1.0, f32::INFINITY, f32::NAN]), Err(2));
        assert_eq!(argmax(&[]), Ok(0));
    }
}
