//! uint8 frames to normalized patch rows.
//!
//! Rescale and normalize in the reference order (transformers 4.49 image processor, which
//! handles images and videos alike): `x = f32(f64(u8) * rescale)` then `(x - mean) / std` in
//! f32. Frames are padded to a multiple of the temporal patch by repeating the last one (a
//! single image becomes two identical frames), then cut into rows of C·tp·p·p values in
//! merge-block-major order: rows (t, bh, bw, mh, mw), columns (c, tp, ph, pw).

use super::Frames;
use crate::{Error, Result};

/// Patch geometry and normalization constants (from a preprocessor config).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchParams {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// OpenAI CLIP normalization, as in Qwen2-VL / Qwen2.5-VL preprocessor configs.
// The config's decimal strings, rounded to f32 as numpy does.
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

impl PatchParams {
    /// The stock Qwen2-VL / Qwen2.5-VL preprocessor values (patch 14, temporal 2, merge 2,
    /// rescale 1/255, CLIP mean/std).
    pub fn qwen2_vl() -> PatchParams {
        PatchParams {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            rescale_factor: 1.0 / 255.0,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
        }
    }

    /// Values per row: 3 · temporal_patch_size · patch_size².
    pub fn row_len(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// Patch rows of one image or video: `rows` is [N, row_len] row-major, N = t·h·w.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelRows {
    pub rows: Vec<f32>,
    pub row_len: usize,
    /// Grid in patches: (temporal groups, patch rows, patch columns).
    pub grid_thw: [usize; 3],
}

impl PixelRows {
    pub fn n_rows(&self) -> usize {
        self.grid_thw.iter().product()
    }
}

/// The normalized value of each uint8 level per channel.
pub fn normalize_table(p: &PatchParams) -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, tc) in t.iter_mut().enumerate() {
        for (v, out) in tc.iter_mut().enumerate() {
            let x = (v as f64 * p.rescale_factor) as f32;
            *out = (x - p.mean[c]) / p.std[c];
        }
    }
    t
}

/// Frames (T×H×W×3, sides multiples of patch·merge) to patch rows.
pub fn patchify(f: &Frames, p: &PatchParams) -> Result<PixelRows> {
    let unit = p.patch_size * p.merge_size;
    if f.t == 0 || f.h == 0 || f.w == 0 || !f.h.is_multiple_of(unit) || !f.w.is_multiple_of(unit) {
        return Err(Error::Other(format!(
            "patchify: frames {}x{}x{} are empty or not multiples of {unit}",
            f.t, f.h, f.w
        )));
    }
    if f.data.len() != f.t * f.h * f.w * 3 {
        return Err(Error::Other(format!(
            "patchify: {} bytes do not hold {}x{}x{}x3",
            f.data.len(),
            f.t,
            f.h,
            f.w
        )));
    }
    let (ps, tp, m) = (p.patch_size, p.temporal_patch_size, p.merge_size);
    let gt = f.t.div_ceil(tp);
    let (gh, gw) = (f.h / ps, f.w / ps);
    let row_len = p.row_len();
    let table = normalize_table(p);
    let mut rows = vec![0f32; gt * gh * gw * row_len];
    let fsz = f.h * f.w * 3;
    let (bh_n, bw_n) = (gh / m, gw / m);
    use rayon::prelude::*;
    rows.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(r, row)| {
            // r = (((t*bh_n + bh)*bw_n + bw)*m + mh)*m + mw
            let mw = r % m;
            let mh = (r / m) % m;
            let bw = (r / (m * m)) % bw_n;
            let bh = (r / (m * m * bw_n)) % bh_n;
            let t = r / (m * m * bw_n * bh_n);
            let (y0, x0) = ((bh * m + mh) * ps, (bw * m + mw) * ps);
            let mut col = 0;
            for (c, tc) in table.iter().enumerate() {
                for k in 0..tp {
                    // Temporal padding repeats the last frame.
                    let fi = (t * tp + k).min(f.t - 1);
                    let frame = &f.data[fi * fsz..(fi + 1) * fsz];
                    for py in 0..ps {
                        let base = ((y0 + py) * f.w + x0) * 3 + c;
                        for px in 0..ps {
                            row[col] = tc[frame[base + px * 3] as usize];
                            col += 1;
                        }
                    }
                }
            }
        });
    Ok(PixelRows {
        rows,
        row_len,
        grid_thw: [gt, gh, gw],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_tagged_video() {
        // Encode (t, y, x, c) into the byte so each row/column position can be checked.
        let (t, h, w) = (3, 28, 56);
        let mut data = vec![0u8; t * h * w * 3];
        for ti in 0..t {
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        data[((ti * h + y) * w + x) * 3 + c] =
                            ((ti * 7 + y * 3 + x * 5 + c * 11) % 256) as u8;
                    }
                }
            }
        }
        let p = PatchParams::qwen2_vl();
        let table = normalize_table(&p);
        let rows = patchify(
            &Frames {
                t,
                h,
                w,
                data: data.clone(),
            },
            &p,
        )
        .unwrap();
        assert_eq!(rows.grid_thw, [2, 2, 4]);
        assert_eq!(rows.rows.len(), 16 * 1176);
        // Row 5: t=0, bh=0, bw=1, mh=0, mw=1 -> patch (0, 3); column (c=2, tp=1, ph=3, pw=4).
        let (row, col) = (5, ((2 * 2 + 1) * 14 + 3) * 14 + 4);
        let (ti, y, x, c) = (1, 3, 3 * 14 + 4, 2);
        let v = data[((ti * h + y) * w + x) * 3 + c];
        assert_eq!(rows.rows[row * 1176 + col], table[c][v as usize]);
        // Last group pads with frame 2 twice.
        let row = 8;
        let a = &rows.rows[row * 1176..row * 1176 + 196];
        let b = &rows.rows[row * 1176 + 196..row * 1176 + 392];
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_sizes() {
        let p = PatchParams::qwen2_vl();
        let f = Frames {
            t: 1,
            h: 30,
            w: 28,
            data: vec![0; 30 * 28 * 3],
        };
        assert!(patchify(&f, &p).is_err());
    }
}
