//! kv_append, attention_paged, attention_varlen: references and cases.

use super::{from_bytes, read, round, Bound, Built, Case, Cost, Ctx, Use};
use crate::backend::{BufId, KvLayout, PagedKv, TRef};
use crate::error::Result;
use crate::tensor::{DType, Shape};

/// Softmax attention of one query over `keys`/`vals` rows (each d long), f64 throughout.
fn attend_one(q: &[f32], keys: &[&[f32]], vals: &[&[f32]], scale: f32) -> Vec<f64> {
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k.iter())
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut o = vec![0f64; q.len()];
    for (p, v) in e.iter().zip(vals) {
        for (oo, &vv) in o.iter_mut().zip(v.iter()) {
            *oo += p / z * vv as f64;
        }
    }
    o
}

/// Causal GQA attention: q [T, Hq, d] are the last T of L positions; keys/vals [L, Hkv, d].
#[allow(clippy::too_many_arguments)]
pub fn attention_causal(
    q: &[f32],
    t: usize,
    hq: usize,
    keys: &[f32],
    vals: &[f32],
    l: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    out: DType,
) -> Vec<f32> {
    let mut o = vec![0f32; t * hq * d];
    for i in 0..t {
        let p = l - t + i;
        for h in 0..hq {
            let kh = h / (hq / hkv);
            let ks: Vec<&[f32]> = (0..=p)
                .map(|j| &keys[(j * hkv + kh) * d..(j * hkv + kh + 1) * d])
                .collect();
            let vs: Vec<&[f32]> = (0..=p)
                .map(|j| &vals[(j * hkv + kh) * d..(j * hkv + kh + 1) * d])
                .collect();
            let r = attend_one(&q[(i * hq + h) * d..(i * hq + h + 1) * d], &ks, &vs, scale);
            for c in 0..d {
                o[(i * hq + h) * d + c] = round(r[c] as f32, out);
            }
        }
    }
    o
}

/// Non-causal attention within segments [cu[s], cu[s+1]) of q, k, v [N, H, d].
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    h: usize,
    d: usize,
    cu: &[i32],
    scale: f32,
    out: DType,
) -> Vec<f32> {
    let mut o = vec![0f32; q.len()];
    for s in 0..cu.len() - 1 {
        let (a, b) = (cu[s] as usize, cu[s + 1] as usize);
        for i in a..b {
            for hh in 0..h {
                let at = |x: &[f32], j: usize| -> Vec<f32> {
                    x[(j * h + hh) * d..(j * h + hh + 1) * d].to_vec()
                };
                let ks: Vec<Vec<f32>> = (a..b).map(|j| at(k, j)).collect();
                let vs: Vec<Vec<f32>> = (a..b).map(|j| at(v, j)).collect();
                let kr: Vec<&[f32]> = ks.iter().map(|x| x.as_slice()).collect();
                let vr: Vec<&[f32]> = vs.iter().map(|x| x.as_slice()).collect();
                let r = attend_one(&at(q, i), &kr, &vr, scale);
                for c in 0..d {
                    o[(i * h + hh) * d + c] = round(r[c] as f32, out);
                }
            }
        }
    }
    o
}

/// A KV pool of 2 layers whose sequence owns `kv_len` tokens on shuffled pages, filled with
/// random values (so kv_append must leave everything else alone).
struct Paged {
    kv: PagedKv,
    /// The pool's values (check mode only).
    pool: Vec<f32>,
    pages: Vec<usize>,
}

impl Paged {
    fn new(cx: &mut Ctx, hkv: usize, d: usize, ps: usize, kv_len: usize) -> Result<Paged> {
        let dt = cx.dt;
        let npages = kv_len.div_ceil(ps);
        let n_pages = npages * 2 + 1;
        // Pages in a scrambled order, never contiguous.
        let mut pages: Vec<usize> = (0..npages)
            .map(|i| (n_pages - 1 - 2 * i) % n_pages)
            .collect();
        if npages > 2 {
            pages.swap(0, npages - 1);
        }
        let layout = KvLayout {
            buf: BufId(0),
            dtype: dt,
            n_layers: 2,
            n_pages,
            page_size: ps,
            n_kv_heads: hkv,
            head_dim: d,
        };
        let total = 2 * 2 * n_pages * layout.page_elems();
        let (pool_t, pool) = cx.input(dt, &[total], 2.0, 0)?;
        let layout = KvLayout {
            buf: pool_t.buf,
            ..layout
        };
        // A second sequence in the CSR, so that only entry 0 is ours.
        let mut indices: Vec<i32> = pages.iter().map(|&p| p as i32).collect();
        indices.push(0);
        let indptr = cx.i32s(&[0, npages as i32, npages as i32 + 1], &[3])?;
        let indices_t = cx.i32s(&indices, &[indices.len()])?;
        let last = cx.i32s(&[(kv_len - (npages - 1) * ps) as i32, 1], &[2])?;
        Ok(Paged {
            kv: PagedKv {
                layout,
                indptr,
                indices: indices_t,
                last_page_len: last,
            },
            pool,
            pages,
        })
    }

    /// Dense [kv_len, hkv, d] keys and values of `layer`.
    fn dense(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let l = &self.kv.layout;
        let row = l.n_kv_heads * l.head_dim;
        let kv_len = self.pages.len() * l.page_size;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for p in 0..kv_len {
            let (page, slot) = (self.pages[p / l.page_size], p % l.page_size);
            let ek = l.elem_index(layer, 0, page, slot, 0);
            let ev = l.elem_index(layer, 1, page, slot, 0);
            k.extend_from_slice(&self.pool[ek..ek + row]);
            v.extend_from_slice(&self.pool[ev..ev + row]);
        }
        (k, v)
    }
}

/// The view of a KV pool of 2 layers in which sequence 0 holds `kv_len` tokens on shuffled
/// pages (random values; a second sequence owns one more page).
pub fn paged_kv(cx: &mut Ctx, hkv: usize, d: usize, ps: usize, kv_len: usize) -> Result<PagedKv> {
    Ok(Paged::new(cx, hkv, d, ps, kv_len)?.kv)
}

/// Query positions each query of the last `t` of `l` sees, summed (causal).
fn visible(t: usize, l: usize) -> usize {
    t * (l - t) + t * (t + 1) / 2
}

pub(super) fn cases(t: &mut Vec<Case>) {
    // kv_append and attention_paged: (T, Hq, Hkv, d, page, kv_len).
    for (tq, hq, hkv, d, ps, kv_len, u) in [
        (1usize, 4usize, 2usize, 8usize, 4usize, 1usize, Use::Check),
        (3, 4, 1, 16, 4, 11, Use::Check),
        (1, 28, 4, 128, 16, 300, Use::Check),
        (5, 28, 4, 128, 16, 77, Use::Check),
        (17, 6, 2, 20, 3, 40, Use::Check),
        (16, 7, 1, 24, 16, 16, Use::Check),
        // Decode over many pages (split-KV + merge); a prefill that is the whole context; a
        // chunk after a cached prefix.
        (1, 28, 4, 128, 16, 700, Use::Check),
        (45, 28, 4, 128, 16, 45, Use::Check),
        (20, 28, 4, 128, 16, 100, Use::Check),
        // Tensor-core prefill shapes (bf16 on CUDA): T * 7 rows not a multiple of the 64-row
        // tile, a prefill chunk after a cached prefix, the smallest prefill over many pages.
        (77, 28, 4, 128, 16, 377, Use::Check),
        (300, 28, 4, 128, 16, 612, Use::Check),
        (2, 28, 4, 128, 16, 1000, Use::Check),
        // Timed: decode at 4k and 16k context; the Video-R1 input's prefill (4,250 tokens,
        // all of them in the cache: a ragged last page and T * 7 rows not a multiple of the
        // 64-row tile).
        (1, 28, 4, 128, 16, 4096, Use::Perf),
        (1, 28, 4, 128, 16, 16384, Use::Perf),
        (4250, 28, 4, 128, 16, 4250, Use::Perf),
    ] {
        let shape = format!("q[{tq},{hq},{d}] kv{hkv} page{ps} len{kv_len}");
        t.push(
            Case::new("kv_append", shape.clone(), Bound::Exact, move |cx| {
                let dt = cx.dt;
                let pg = Paged::new(cx, hkv, d, ps, kv_len)?;
                let (kt, k) = cx.input(dt, &[tq, hkv, d], 2.0, 3)?;
                let (vt, v) = cx.input(dt, &[tq, hkv, d], 2.0, 0)?;
                let kv = pg.kv;
                Ok(Built::new(
                    move |be, _| be.kv_append(kt, vt, &kv, 1),
                    move |be| {
                        let mut want = pg.pool.clone();
                        for i in 0..tq {
                            let p = kv_len - tq + i;
                            for (which, src) in [(0, &k), (1, &v)] {
                                let e = kv.layout.elem_index(1, which, pg.pages[p / ps], p % ps, 0);
                                want[e..e + hkv * d]
                                    .copy_from_slice(&src[i * hkv * d..(i + 1) * hkv * d]);
                            }
                        }
                        let mut bytes = vec![0u8; kv.layout.total_bytes()];
                        be.read(kv.layout.buf, 0, &mut bytes)?;
                        Ok((from_bytes(&bytes, dt), want))
                    },
                ))
            })
            .cost(move |dt| Cost::bytes(4 * dt.bytes_for(tq * hkv * d)))
            .used(u),
        );
        t.push(
            Case::new("attention_paged", shape, Bound::Reduction, move |cx| {
                let dt = cx.dt;
                let pg = Paged::new(cx, hkv, d, ps, kv_len)?;
                let (qt, q) = cx.input(dt, &[tq, hq, d], 2.0, 5)?;
                let o = cx.out(dt, &[tq, hq, d], 0)?;
                let scale = 1.0 / (d as f32).sqrt();
                let kv = pg.kv;
                Ok(Built::new(
                    move |be, _| be.attention_paged(qt, &kv, 1, o, scale),
                    move |be| {
                        let (keys, vals) = pg.dense(1);
                        let want =
                            attention_causal(&q, tq, hq, &keys, &vals, kv_len, hkv, d, scale, dt);
                        Ok((read(be, &o)?, want))
                    },
                ))
            })
            .cost(move |dt| Cost {
                bytes: dt.bytes_for(2 * tq * hq * d + 2 * kv_len * hkv * d) as f64,
                flops: 4.0 * (visible(tq, kv_len) * d * hq) as f64,
            })
            .used(u),
        );
    }

    // attention_varlen: q, k, v as column blocks of one packed [N, 3, H, d] buffer.
    let windows = |n: usize, w: usize| vec![w; n / w];
    for (h, d, segs, label, u) in [
        (
            16usize,
            80usize,
            vec![64usize, 48, 16, 13],
            None,
            Use::Check,
        ),
        // Windows, a short segment and a full-attention slice of several key tiles with a
        // ragged tail (300 = 4 x 64 + 44; longer slices make the f64 reference slow).
        (16, 80, vec![64, 64, 22, 300], None, Use::Check),
        (16, 80, vec![64, 48, 16, 0, 57], None, Use::Check),
        (2, 8, vec![3, 0, 7], None, Use::Check),
        (3, 20, vec![1, 40], None, Use::Check),
        // The ViT over 16,384 patches: 64-patch windows (28 of 32 blocks), full-attention
        // slices of 2,048 patches (a video's frame pairs) and one slice (an image).
        (16, 80, windows(16384, 64), Some("windows of 64"), Use::Perf),
        (
            16,
            80,
            windows(16384, 2048),
            Some("full slices of 2048"),
            Use::Perf,
        ),
        (16, 80, vec![16384], Some("one full slice"), Use::Perf),
    ] {
        let n: usize = segs.iter().sum();
        let sq: usize = segs.iter().map(|s| s * s).sum();
        let shape = match label {
            Some(l) => format!("[{n},{h},{d}] {l}"),
            None => format!("[{n},{h},{d}] segs {segs:?}"),
        };
        t.push(
            Case::new("attention_varlen", shape, Bound::Reduction, move |cx| {
                let dt = cx.dt;
                let mut cu = vec![0i32];
                for s in &segs {
                    cu.push(cu.last().unwrap() + *s as i32);
                }
                let (packed, qkv) = cx.input(dt, &[n, 3 * h * d], 2.0, 0)?;
                let part = |i: usize| TRef {
                    offset: dt.bytes_for(i * h * d),
                    shape: Shape::new(&[n, h, d]),
                    ..packed
                };
                let (q, k, v) = (part(0), part(1), part(2));
                let ct = cx.i32s(&cu, &[cu.len()])?;
                let o = cx.out(dt, &[n, h, d], 0)?;
                let scale = 1.0 / (d as f32).sqrt();
                Ok(Built::new(
                    move |be, _| be.attention_varlen(q, k, v, ct, o, scale),
                    move |be| {
                        let pick = |i: usize| -> Vec<f32> {
                            (0..n)
                                .flat_map(|row| {
                                    let at = row * 3 * h * d + i * h * d;
                                    qkv[at..at + h * d].to_vec()
                                })
                                .collect()
                        };
                        let want =
                            attention_varlen(&pick(0), &pick(1), &pick(2), h, d, &cu, scale, dt);
                        Ok((read(be, &o)?, want))
                    },
                ))
            })
            .cost(move |dt| Cost {
                bytes: dt.bytes_for(4 * n * h * d) as f64,
                flops: 4.0 * (sq * h * d) as f64,
            })
            .used(u),
        );
    }
}
