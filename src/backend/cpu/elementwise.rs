//! Row-wise ops: add, swiglu, gelu, cast, embedding, gather/scatter, argmax (fast paths).

use super::simd::{load, store};
use super::{check_act, check_dims, check_weight, op_err, CpuBackend, View};
use crate::backend::TRef;
use crate::error::Result;
use crate::tensor::DType;
use rayon::prelude::*;

/// Elements per work unit: long rows are split so scratch stays in L1/L2 and both cores work.
const CHUNK: usize = 4096;

/// Applies `f` to matching chunks of every input row, writing the output row. Inputs and the
/// output share one shape; each chunk is read fully before it is written, so `out` may alias an
/// input exactly.
fn map_rows(
    be: &CpuBackend,
    op: &str,
    ins: &[TRef],
    out: TRef,
    f: impl Fn(&[Vec<f32>], &mut [f32]) + Sync,
) -> Result<()> {
    check_act(op, "out", &out)?;
    let mut views = Vec::with_capacity(ins.len());
    for (i, t) in ins.iter().enumerate() {
        check_act(op, &format!("input {i}"), t)?;
        if t.shape != out.shape {
            return Err(op_err(
                op,
                format!(
                    "input {i} shape {:?} differs from out {:?}",
                    t.shape, out.shape
                ),
            ));
        }
        views.push(be.view(t)?);
    }
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
    map_rows(be, "add", &[a, b], out, |i, o| {
        for ((o, &x), &y) in o.iter_mut().zip(&i[0]).zip(&i[1]) {
            *o = x + y;
        }
    })
}

pub(super) fn swiglu(be: &CpuBackend, gate: TRef, up: TRef, out: TRef) -> Result<()> {
    let dt = out.dtype;
    map_rows(be, "swiglu", &[gate, up], out, |i, o| {
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
    map_rows(be, "gelu", &[x], out, |i, o| {
        for (o, &x) in o.iter_mut().zip(&i[0]) {
            // 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(-x/√2)
            let v = x as f64;
            *o = (0.5 * v * erfc_fast(-v * std::f64::consts::FRAC_1_SQRT_2)) as f32;
        }
    })
}

pub(super) fn cast(be: &CpuBackend, x: TRef, out: TRef) -> Result<()> {
    if x.shape.dims() != out.shape.dims() {
        return Err(op_err(
            "cast",
            format!("x {:?} and out {:?} differ in shape", x.shape, out.shape),
        ));
    }
    // map_rows requires equal TRef shapes, which holds; the element types may differ.
    map_rows(be, "cast", &[x], out, |i, o| o.copy_from_slice(&i[0]))
}

pub(super) fn embedding(be: &CpuBackend, table: TRef, ids: TRef, out: TRef) -> Result<()> {
    const OP: &str = "embedding";
    check_weight(OP, "table", &table)?;
    check_act(OP, "out", &out)?;
    if table.shape.rank() != 2 {
        return Err(op_err(
            OP,
            format!("table must be [V, D], got {:?}", table.shape),
        ));
    }
    let (v, d) = (table.shape.dim(0), table.shape.dim(1));
    let ids_v = be.read_i32(OP, "ids", &ids)?;
    if ids.shape.rank() != 1 {
        return Err(op_err(OP, format!("ids must be [T], got {:?}", ids.shape)));
    }
    check_dims(OP, "out", &out, &[ids_v.len(), d])?;
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
    let tv = be.view(&table)?;
    let o = be.view_mut(&out)?;
    let mut row = vec![0f32; d];
    for (t, &id) in ids_v.iter().enumerate() {
        unsafe {
            load(tv.at(id as usize, 0), tv.dt, &mut row);
            store(o.at(t, 0), o.dt, &row);
        }
    }
    Ok(())
}

/// Validates a row-index op: `rows` is the indexed tensor, `dense` the one read/written in order.
fn index_views(
    be: &CpuBackend,
    op: &str,
    rows: &TRef,
    dense: &TRef,
    idx: &TRef,
    rows_writable: bool,
) -> Result<(View, View, Vec<i32>)> {
    if rows.dtype != dense.dtype || rows.dtype.is_quantized() {
        return Err(op_err(
            op,
            format!(
                "element types {} and {} must match (plain types)",
                rows.dtype, dense.dtype
            ),
        ));
    }
    if rows.shape.row_len() != dense.shape.row_len() {
        return Err(op_err(
            op,
            format!("row shapes differ: {:?} vs {:?}", rows.shape, dense.shape),
        ));
    }
    let ix = be.read_i32(op, "idx", idx)?;
    if ix.len() != dense.shape.rows() {
        return Err(op_err(
            op,
            format!(
                "idx has {} entries for {} rows",
                ix.len(),
                dense.shape.rows()
            ),
        ));
    }
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
    let (xv, ov, ix) = index_views(be, "gather_rows", &x, &out, &idx, false)?;
    let bytes = xv.dt.bytes_for(xv.row_len);
    for (i, &r) in ix.iter().enumerate() {
        unsafe { std::ptr::copy(xv.at(r as usize, 0), ov.at(i, 0), bytes) };
    }
    Ok(())
}

pub(super) fn scatter_rows(be: &CpuBackend, src: TRef, idx: TRef, dst: TRef) -> Result<()> {
    let (dv, sv, ix) = index_views(be, "scatter_rows", &dst, &src, &idx, true)?;
    let bytes = sv.dt.bytes_for(sv.row_len);
    for (i, &r) in ix.iter().enumerate() {
        unsafe { std::ptr::copy(sv.at(i, 0), dv.at(r as usize, 0), bytes) };
    }
    Ok(())
}

pub(super) fn argmax(be: &CpuBackend, x: TRef, out: TRef) -> Result<()> {
    const OP: &str = "argmax";
    check_act(OP, "x", &x)?;
    if x.shape.rank() != 2 {
        return Err(op_err(OP, format!("x must be [R, N], got {:?}", x.shape)));
    }
    let (r, n) = (x.shape.dim(0), x.shape.dim(1));
    if n == 0 {
        return Err(op_err(OP, "x has empty rows"));
    }
    if out.dtype != DType::I32 {
        return Err(op_err(OP, format!("out must be i32, got {}", out.dtype)));
    }
    check_dims(OP, "out", &out, &[r])?;
    let xv = be.view(&x)?;
    let ov = be.view_mut(&out)?;
    let res: Vec<Option<i32>> = (0..r)
        .into_par_iter()
        .map(|row| {
            let mut buf = vec![0f32; n];
            unsafe { load(xv.at(row, 0), xv.dt, &mut buf) };
            let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
            for (i, &v) in buf.iter().enumerate() {
                if v.is_nan() {
                    return None;
                }
                if v > best {
                    best = v;
                    bi = i;
                }
            }
            Some(bi as i32)
        })
        .collect();
    for (row, v) in res.into_iter().enumerate() {
        let v = v.ok_or_else(|| op_err(OP, format!("row {row} contains NaN")))?;
        unsafe { *(ov.at(row, 0) as *mut i32) = v };
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
