//! Row-wise ops: add, swiglu, gelu, cast, embedding, gather/scatter, argmax (fast paths).

use super::simd::{load, store};
use super::{op_err, CpuBackend, View};
use crate::backend::{check, sample, TRef};
use crate::error::Result;
use crate::tensor::DType;
use rayon::prelude::*;

/// Elements per work unit: long rows are split so scratch stays in L1/L2 and both cores work.
const CHUNK: usize = 4096;
/// Elements converted to f32 at a time within a unit.
const PIECE: usize = 1024;

/// Applies `f` to matching chunks of every input row, writing the output row. Inputs and the
/// output share one shape (the op's `check` has seen to it); each chunk is read fully before it
/// is written, so `out` may alias an input exactly.
fn map_rows(
    be: &CpuBackend,
    ins: &[TRef],
    out: TRef,
    f: impl Fn(&[Vec<f32>], &mut [f32]) + Sync,
) -> Result<()> {
    let views = ins.iter().map(|t| be.view(t)).collect::<Result<Vec<_>>>()?;
    let o = be.view_mut(&out)?;
    let chunks = o.row_len.div_ceil(CHUNK).max(1);
    #[cfg(target_arch = "x86_64")]
    let avx512 = be.isa.avx512();
    (0..o.rows * chunks).into_par_iter().for_each_init(
        || (vec![Vec::new(); views.len()], Vec::new()),
        |(bufs, res), u| {
            let (r, c) = (u / chunks, u % chunks);
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                return unsafe { chunk_avx512(&views, &o, r, c, bufs, res, &f) };
            }
            unsafe { chunk(&views, &o, r, c, bufs, res, &f) }
        },
    );
    Ok(())
}

/// One chunk of [`map_rows`]: chunk `c` of row `r`.
///
/// # Safety
/// The views are checked and `r` is one of their rows.
#[inline(always)]
unsafe fn chunk(
    views: &[View],
    o: &View,
    r: usize,
    c: usize,
    bufs: &mut [Vec<f32>],
    res: &mut Vec<f32>,
    f: &impl Fn(&[Vec<f32>], &mut [f32]),
) {
    let end = ((c + 1) * CHUNK).min(o.row_len);
    // Pieces whose f32 copies (inputs and result) all stay in L1.
    for start in (c * CHUNK..end).step_by(PIECE) {
        let n = PIECE.min(end - start);
        for (b, v) in bufs.iter_mut().zip(views) {
            b.resize(n, 0.0);
            load(v.at(r, start), v.dt, b);
        }
        res.resize(n, 0.0);
        f(bufs, res);
        store(o.at(r, start), o.dt, res);
    }
}

/// [`chunk`] compiled for AVX-512 (the conversions and `f` inline into it): the same
/// operations, vectorized wider than the baseline build allows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn chunk_avx512(
    views: &[View],
    o: &View,
    r: usize,
    c: usize,
    bufs: &mut [Vec<f32>],
    res: &mut Vec<f32>,
    f: &impl Fn(&[Vec<f32>], &mut [f32]),
) {
    chunk(views, o, r, c, bufs, res, f)
}

pub(super) fn add(be: &CpuBackend, a: TRef, b: TRef, out: TRef) -> Result<()> {
    check::add(&a, &b, &out)?;
    map_rows(be, &[a, b], out, |i, o| {
        for ((o, &x), &y) in o.iter_mut().zip(&i[0]).zip(&i[1]) {
            *o = x + y;
        }
    })
}

pub(super) fn swiglu(be: &CpuBackend, gate: TRef, up: TRef, out: TRef) -> Result<()> {
    check::swiglu(&gate, &up, &out)?;
    let dt = out.dtype;
    #[cfg(target_arch = "x86_64")]
    if be.isa.avx512()
        && matches!(dt, DType::BF16 | DType::F32)
        && gate.dtype == dt
        && up.dtype == dt
    {
        let (g, u, o) = (be.view(&gate)?, be.view(&up)?, be.view_mut(&out)?);
        let chunks = o.row_len.div_ceil(CHUNK).max(1);
        (0..o.rows * chunks).into_par_iter().for_each(|c| {
            let (r, start) = (c / chunks, (c % chunks) * CHUNK);
            let n = CHUNK.min(o.row_len - start);
            // SAFETY: AVX-512 is only selected where the CPU has it; the views are checked and
            // the chunk lies inside row r of each.
            unsafe { avx512::swiglu(g.at(r, start), u.at(r, start), o.at(r, start), n, dt) }
        });
        return Ok(());
    }
    map_rows(be, &[gate, up], out, |i, o| {
        for ((o, &g), &u) in o.iter_mut().zip(&i[0]).zip(&i[1]) {
            let s = super::simd::round_to(g / (1.0 + (-g).exp()), dt);
            *o = s * u;
        }
    })
}

/// erfc(x) by the Chebyshev-fitted form `t·exp(-x² + P(t))`, t = 1/(1 + |x|/2), evaluated in
/// f64; fractional error below 1.2e-7 for every x, so GELU written through erfc keeps that
/// relative accuracy even where 1 + erf cancels.
fn erfc_fast(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * (-z * z + p).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

pub(super) fn gelu(be: &CpuBackend, x: TRef, out: TRef) -> Result<()> {
    check::gelu(&x, &out)?;
    // bf16 inputs widen to f32 values with zero low bits: the table holds their GELU.
    let table = (x.dtype == DType::BF16).then(gelu_bf16_table);
    map_rows(be, &[x], out, |i, o| match table {
        Some(t) => {
            for (o, &x) in o.iter_mut().zip(&i[0]) {
                *o = t[(x.to_bits() >> 16) as usize];
            }
        }
        None => {
            for (o, &x) in o.iter_mut().zip(&i[0]) {
                *o = gelu_f32(x);
            }
        }
    })
}

/// [`gelu_f32`] of every bf16 value, indexed by its bits (256 KiB, made once): a lookup instead
/// of the f64 erfc for bf16 activations, the same numbers.
pub(super) fn gelu_bf16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| gelu_f32(f32::from_bits((b as u32) << 16)))
            .collect()
    })
}

/// GELU of `x` rounded to `dt` first (the GEMM epilogue: the unfused matmul's stored value).
#[inline]
pub(super) fn gelu_rounded(x: f32, dt: DType) -> f32 {
    let v = super::simd::round_to(x, dt);
    if dt == DType::BF16 {
        gelu_bf16_table()[(v.to_bits() >> 16) as usize]
    } else {
        gelu_f32(v)
    }
}

/// Exact GELU of one value (the `gelu` op's, and the GEMM epilogue's).
#[inline]
pub(super) fn gelu_f32(x: f32) -> f32 {
    // 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(-x/√2)
    let v = x as f64;
    (0.5 * v * erfc_fast(-v * std::f64::consts::FRAC_1_SQRT_2)) as f32
}

pub(super) fn cast(be: &CpuBackend, x: TRef, out: TRef) -> Result<()> {
    check::cast(&x, &out)?;
    map_rows(be, &[x], out, |i, o| o.copy_from_slice(&i[0]))
}

pub(super) fn embedding(be: &CpuBackend, table: TRef, ids: TRef, out: TRef) -> Result<()> {
    const OP: &str = "embedding";
    let ed = check::embedding(&table, &ids, &out)?;
    let (v, d) = (ed.vocab, ed.dim);
    let ids_v = be.read_i32(OP, "ids", &ids)?;
    if let Some((t, &id)) = ids_v
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as usize >= v)
    {
        return Err(op_err(
            OP,
            format!("ids[{t}] = {id} is outside the table of {v} rows"),
        ));
    }
    let o = be.view_mut(&out)?;
    let mut row = vec![0f32; d];
    if let Some(rb) = ed.quant_row_bytes {
        let base = be.ptr(&table)?;
        for (t, &id) in ids_v.iter().enumerate() {
            let src = unsafe { std::slice::from_raw_parts(base.add(id as usize * rb), rb) };
            crate::quant::dequantize_row(table.dtype, src, &mut row)?;
            unsafe { store(o.at(t, 0), o.dt, &row) };
        }
        return Ok(());
    }
    let tv = be.view(&table)?;
    for (t, &id) in ids_v.iter().enumerate() {
        unsafe {
            load(tv.at(id as usize, 0), tv.dt, &mut row);
            store(o.at(t, 0), o.dt, &row);
        }
    }
    Ok(())
}

/// Views of a row-index op (checked by `check::gather_rows` / `check::scatter_rows`) and its
/// indices, each inside the indexed tensor: `rows` is the indexed tensor, `dense` the one read
/// or written in order.
fn index_views(
    be: &CpuBackend,
    op: &str,
    rows: &TRef,
    dense: &TRef,
    idx: &TRef,
    rows_writable: bool,
) -> Result<(View, View, Vec<i32>)> {
    let ix = be.read_i32(op, "idx", idx)?;
    let n = rows.shape.rows();
    if let Some((i, &r)) = ix
        .iter()
        .enumerate()
        .find(|(_, &r)| r < 0 || r as usize >= n)
    {
        return Err(op_err(op, format!("idx[{i}] = {r} is outside 0..{n}")));
    }
    let (rv, dv) = if rows_writable {
        (be.view_mut(rows)?, be.view(dense)?)
    } else {
        (be.view(rows)?, be.view_mut(dense)?)
    };
    Ok((rv, dv, ix))
}

pub(super) fn gather_rows(be: &CpuBackend, x: TRef, idx: TRef, out: TRef) -> Result<()> {
    check::gather_rows(&x, &idx, &out)?;
    let (xv, ov, ix) = index_views(be, "gather_rows", &x, &out, &idx, false)?;
    let bytes = xv.dt.bytes_for(xv.row_len);
    for (i, &r) in ix.iter().enumerate() {
        unsafe { std::ptr::copy(xv.at(r as usize, 0), ov.at(i, 0), bytes) };
    }
    Ok(())
}

pub(super) fn scatter_rows(be: &CpuBackend, src: TRef, idx: TRef, dst: TRef) -> Result<()> {
    check::scatter_rows(&src, &idx, &dst)?;
    let (dv, sv, ix) = index_views(be, "scatter_rows", &dst, &src, &idx, true)?;
    let bytes = sv.dt.bytes_for(sv.row_len);
    for (i, &r) in ix.iter().enumerate() {
        unsafe { std::ptr::copy(sv.at(i, 0), dv.at(r as usize, 0), bytes) };
    }
    Ok(())
}

pub(super) fn argmax(be: &CpuBackend, x: TRef, out: TRef) -> Result<()> {
    let check::ArgmaxDims { rows, cols } = check::argmax(&x, &out)?;
    let xv = be.view(&x)?;
    let ov = be.view_mut(&out)?;
    let res: Vec<Result<usize, usize>> = (0..rows)
        .into_par_iter()
        .map(|row| {
            let mut buf = vec![0f32; cols];
            unsafe { load(xv.at(row, 0), xv.dt, &mut buf) };
            sample::argmax(&buf)
        })
        .collect();
    for (row, v) in res.into_iter().enumerate() {
        let v = v.map_err(|_| op_err("argmax", format!("row {row} contains NaN")))?;
        unsafe { *(ov.at(row, 0) as *mut i32) = v as i32 };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::erfc_fast;

    #[test]
    fn erfc_matches_known_values() {
        // (x, erf(x)) to 16 digits.
        let known = [
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
        ];
        for (x, erf) in known {
            let got = 1.0 - erfc_fast(x);
            assert!((got - erf).abs() < 1.2e-7, "erf({x}) = {got}, want {erf}");
            let got_neg = 1.0 - erfc_fast(-x);
            assert!((got_neg + erf).abs() < 1.2e-7, "erf(-{x})");
        }
        // erfc(3) relative accuracy (where 1 - erf loses everything).
        let e3 = 2.209049699858544e-05;
        assert!((erfc_fast(3.0) - e3).abs() / e3 < 1.2e-7);
    }

    /// The epilogue's lookup gives `gelu_f32` of the bf16-rounded value for every f32 that rounds
    /// to each bf16 pattern (either side of the rounding, both signs, NaNs, infinities).
    #[test]
    fn bf16_gelu_lookup_is_the_direct_evaluation() {
        use super::super::simd::round_to;
        use super::{gelu_f32, gelu_rounded};
        use crate::tensor::DType;
        for b in 0..=u16::MAX as u32 {
            for low in [0u32, 0x7fff, 0x8000, 0x8001, 0xffff] {
                let x = f32::from_bits((b << 16) | low);
                let (got, want) = (
                    gelu_rounded(x, DType::BF16),
                    gelu_f32(round_to(x, DType::BF16)),
                );
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "gelu({x:e}) = {got:e}, direct {want:e}"
                );
            }
        }
        assert_eq!(gelu_rounded(1.5, DType::F32), gelu_f32(1.5));
    }
}

/// AVX-512 versions of the row-wise ops whose scalar loops are slow (a libm call per element).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use crate::tensor::DType;
    use std::arch::x86_64::*;

    /// `e^x` to within 2 ulp over the whole f32 range: `x = n·ln2 + r` (`|r| ≤ ln2/2`, ln2 in
    /// two parts), a degree-7 Taylor polynomial for `e^r` (truncation below 1e-8 relative),
    /// and `vscalefps` for `2^n`, which over- and underflows (to ∞, denormals, 0) as `exp`
    /// does. NaN stays NaN.
    #[inline(always)]
    pub unsafe fn exp(x: __m512) -> __m512 {
        // Beyond ±104, e^x is ∞ or 0 in f32; the clamp keeps n finite (NaN passes through:
        // max/min return their second operand when one is NaN).
        let x = _mm512_min_ps(
            _mm512_set1_ps(104.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// bf16 → f32 of the sixteen values at `p` that `m` selects (the others zero).
    #[inline(always)]
    pub(in crate::backend::cpu) unsafe fn ld_bf16(p: *const u8, m: u16) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(m, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// f32 → bf16 bits (round to nearest even; NaN quiet), as `simd::f32_to_bf16_bits`, in the
    /// low half of each lane.
    #[inline(always)]
    pub(in crate::backend::cpu) unsafe fn bf16_bits(x: __m512) -> __m512i {
        let b = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            b,
            _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
        ));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
        _mm512_mask_mov_epi32(rounded, nan, quiet)
    }

    /// Rounds to bf16 and back (`simd::round_to(x, BF16)`).
    #[inline(always)]
    unsafe fn round_bf16(x: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16_bits(x)))
    }

    /// `out = round(round(silu(g)) · u)` for `n` elements of `dt` (BF16 or F32): the scalar
    /// path's steps, with [`exp`] for libm's `expf` and a masked tail.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn swiglu(g: *const u8, u: *const u8, o: *mut u8, n: usize, dt: DType) {
        let bf = dt == DType::BF16;
        let es = if bf { 2 } else { 4 };
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let m: u16 = if n - i >= 16 {
                0xFFFF
            } else {
                (1u16 << (n - i)) - 1
            };
            let (gp, up, op) = (g.add(es * i), u.add(es * i), o.add(es * i));
            let (gv, uv) = if bf {
                (ld_bf16(gp, m), ld_bf16(up, m))
            } else {
                (
                    _mm512_maskz_loadu_ps(m, gp as *const f32),
                    _mm512_maskz_loadu_ps(m, up as *const f32),
                )
            };
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
            if bf {
                let v = _mm512_mul_ps(round_bf16(s), uv);
                _mm256_mask_storeu_epi16(op as *mut i16, m, _mm512_cvtepi32_epi16(bf16_bits(v)));
            } else {
                _mm512_mask_storeu_ps(op as *mut f32, m, _mm512_mul_ps(s, uv));
            }
            i += 16;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::backend::cpu::simd::{f32_to_bf16_bits, round_to};

        #[test]
        fn exp_is_within_two_ulp_of_libm() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            // Every 97th f32 bit pattern in [-104, 104] and beyond, and the edge values.
            let mut xs: Vec<f32> = (0..u32::MAX / 97)
                .map(|i| f32::from_bits(i * 97))
                .filter(|x| x.abs() < 120.0)
                .collect();
            xs.extend([
                0.0,
                -0.0,
                88.72,
                88.73,
                -87.3,
                -103.9,
                f32::INFINITY,
                -f32::INFINITY,
            ]);
            #[target_feature(enable = "avx512f")]
            unsafe fn run(xs: &[f32]) -> Vec<f32> {
                xs.chunks(16)
                    .flat_map(|c| {
                        let mut b = [0f32; 16];
                        b[..c.len()].copy_from_slice(c);
                        let mut o = [0f32; 16];
                        _mm512_storeu_ps(o.as_mut_ptr(), exp(_mm512_loadu_ps(b.as_ptr())));
                        o[..c.len()].to_vec()
                    })
                    .collect()
            }
            let got = unsafe { run(&xs) };
            for (&x, &g) in xs.iter().zip(&got) {
                let want = x.exp();
                if want.is_infinite() || want == 0.0 || g.is_infinite() || g == 0.0 {
                    assert_eq!(g, want, "exp({x})");
                    continue;
                }
                let ulp = (g.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({x}) = {g}, libm {want} ({ulp} ulp)");
            }
            assert!(unsafe { run(&[f32::NAN]) }[0].is_nan());
        }

        #[test]
        fn swiglu_matches_the_scalar_steps() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            let mut s = 0x1234_5678_9abc_def1u64;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / 16_777_216.0 - 0.5) * 40.0
            };
            let n = 1000 + 13; // a masked tail
            let mut g: Vec<f32> = (0..n).map(|_| next()).collect();
            let u: Vec<f32> = (0..n).map(|_| next()).collect();
            g[..6].copy_from_slice(&[f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, -0.0, 90.0]);
            for dt in [DType::F32, DType::BF16] {
                let enc = |v: &[f32]| -> Vec<u8> {
                    v.iter()
                        .flat_map(|&x| match dt {
                            DType::BF16 => f32_to_bf16_bits(x).to_le_bytes().to_vec(),
                            _ => x.to_le_bytes().to_vec(),
                        })
                        .collect()
                };
                let (gb, ub) = (enc(&g), enc(&u));
                let mut ob = vec![0u8; gb.len()];
                unsafe { swiglu(gb.as_ptr(), ub.as_ptr(), ob.as_mut_ptr(), n, dt) };
                for i in 0..n {
                    let (gi, ui) = (round_to(g[i], dt), round_to(u[i], dt));
                    let want = round_to(round_to(gi / (1.0 + (-gi).exp()), dt) * ui, dt);
                    let got = match dt {
                        DType::BF16 => f32::from_bits(
                            (u16::from_le_bytes([ob[2 * i], ob[2 * i + 1]]) as u32) << 16,
                        ),
                        _ => f32::from_le_bytes(ob[4 * i..4 * i + 4].try_into().unwrap()),
                    };
                    if want.is_nan() {
                        assert!(got.is_nan(), "{dt} swiglu({gi}, {ui}) = {got}");
                        continue;
                    }
                    // One step of `dt` (bf16 rounding may land either side of a tie).
                    let tol = want.abs() * if dt == DType::BF16 { 1.0 / 128.0 } else { 4e-7 };
                    assert!(
                        got == want || (got - want).abs() <= tol,
                        "{dt} swiglu({gi}, {ui}) = {got}, scalar {want}"
                    );
                }
            }
        }
    }
}
