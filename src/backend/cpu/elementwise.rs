//! Row-wise ops: add, swiglu, gelu, cast, embedding, gather/scatter, argmax (fast paths).

use super::simd::{load, store};
use super::{op_err, CpuBackend, View};
use crate::backend::{check, sample, TRef};
use crate::error::Result;
use rayon::prelude::*;

/// Elements per work unit: long rows are split so scratch stays in L1/L2 and both cores work.
const CHUNK: usize = 4096;

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
    (0..o.rows * chunks).into_par_iter().for_each_init(
        || (vec![Vec::new(); views.len()], Vec::new()),
        |(bufs, res), u| {
            let (r, c) = (u / chunks, u % chunks);
            let start = c * CHUNK;
            let n = CHUNK.min(o.row_len - start);
            for (b, v) in bufs.iter_mut().zip(&views) {
                b.resize(n, 0.0);
                unsafe { load(v.at(r, start), v.dt, b) };
            }
            res.resize(n, 0.0);
            f(bufs, res);
            unsafe { store(o.at(r, start), o.dt, res) };
        },
    );
    Ok(())
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
    map_rows(be, &[x], out, |i, o| {
        for (o, &x) in o.iter_mut().zip(&i[0]) {
            // 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(-x/√2)
            let v = x as f64;
            *o = (0.5 * v * erfc_fast(-v * std::f64::consts::FRAC_1_SQRT_2)) as f32;
        }
    })
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
}
