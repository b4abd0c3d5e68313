//! Every instruction-set path of the GEMM against an exact reference, on random data and odd
//! shapes (row counts around the microkernels' 8 rows and the small-M limit, columns around the
//! 48- and 16-wide panels, K tails that are not multiples of 8/16/32, K blocks, strided views).
//!
//! Float paths: the exact dot product is taken in f64; a path passes if every output is within
//! the a-priori bound of an f32 dot product in any order, `|got − exact| ≤ (K + 2)·2⁻²⁴·Σ|xᵢwᵢ|`,
//! plus one rounding of the output type (2⁻⁸ relative for bf16, 2⁻¹¹ for f16). The paths are not
//! bit-identical to each other: they sum in different orders, `vdpbf16ps` included.
//!
//! Quantized paths: integer dots are exact and the float steps follow the scalar reference's
//! order, so every path must give the scalar path's bits, and those of M independent
//! `vec_dot_quantized_scalar` rows.

use super::super::{CpuBackend, Isa};
use crate::backend::{Backend, HostBytes, TRef};
use crate::quant;
use crate::tensor::{DType, Shape};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

fn round(v: f32, dt: DType) -> f32 {
    super::super::simd::round_to(v, dt)
}

fn bytes(v: &[f32], dt: DType) -> Vec<u8> {
    let mut b = Vec::new();
    for &x in v {
        match dt {
            DType::F32 => b.extend_from_slice(&x.to_le_bytes()),
            DType::BF16 => b.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            DType::F16 => b.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            _ => unreachable!(),
        }
    }
    b
}

fn read(be: &mut CpuBackend, t: &TRef) -> Vec<f32> {
    let mut raw = vec![0u8; t.span_bytes()];
    be.read(t.buf, t.offset, &mut raw).unwrap();
    let es = t.dtype.bytes_for(1);
    let mut out = Vec::new();
    for r in 0..t.shape.rows() {
        for c in 0..t.shape.row_len() {
            let o = (r * t.row_stride + c) * es;
            out.push(match t.dtype {
                DType::F32 => f32::from_le_bytes(raw[o..o + 4].try_into().unwrap()),
                DType::BF16 => half::bf16::from_le_bytes([raw[o], raw[o + 1]]).to_f32(),
                DType::F16 => half::f16::from_le_bytes([raw[o], raw[o + 1]]).to_f32(),
                _ => unreachable!(),
            });
        }
    }
    out
}

/// A `[rows, cols]` activation tensor with `pad` spare elements per row, filled with `v`.
fn put(be: &mut CpuBackend, v: &[f32], dt: DType, rows: usize, cols: usize, pad: usize) -> TRef {
    let stride = cols + pad;
    let mut full = vec![0f32; rows * stride];
    for r in 0..rows {
        full[r * stride..r * stride + cols].copy_from_slice(&v[r * cols..(r + 1) * cols]);
    }
    let b = be.alloc(dt.bytes_for(full.len()).max(4)).unwrap();
    be.write(b, 0, &bytes(&full, dt)).unwrap();
    TRef {
        row_stride: stride,
        ..TRef::new(b, 0, dt, Shape::new(&[rows, cols]))
    }
}

fn isas() -> Vec<Isa> {
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        eprintln!("{isa}: skipped: this CPU (or OS) does not run it");
    }
    Isa::available()
}

#[allow(clippy::too_many_arguments)]
fn check_float(
    m: usize,
    n: usize,
    k: usize,
    act: DType,
    wdt: DType,
    bias: bool,
    xpad: usize,
    opad: usize,
) {
    let mut r = Rng(0x9E37_79B9 ^ (m * 1_000_003 + n * 1009 + k) as u64);
    let x: Vec<f32> = (0..m * k).map(|_| round(r.f(1.0), act)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| round(r.f(0.05), wdt)).collect();
    let b: Vec<f32> = (0..n).map(|_| round(r.f(0.5), wdt)).collect();
    let mut be = CpuBackend::new();
    let xt = put(&mut be, &x, act, m, k, xpad);
    let wb = be.load_weight(HostBytes::from_vec(bytes(&w, wdt))).unwrap();
    let wt = TRef::new(wb, 0, wdt, Shape::new(&[n, k]));
    // The same weight prepared as the model loader does (bf16 panels packed at load where the
    // bf16 dot runs): the same bits as packing per call.
    let pb = be.load_weight(HostBytes::from_vec(bytes(&w, wdt))).unwrap();
    let pt = TRef::new(pb, 0, wdt, Shape::new(&[n, k]));
    be.prepare_matmul_weight(&pt).unwrap();
    let packs = wdt == DType::BF16 && super::super::isa::has_bf16_dot(Isa::best()) && n >= 48;
    assert_eq!(be.panels.contains_key(&pb.0), packs, "{n}x{k} {wdt}");
    let bt = bias.then(|| {
        let bb = be.load_weight(HostBytes::from_vec(bytes(&b, wdt))).unwrap();
        TRef::new(bb, 0, wdt, Shape::new(&[n]))
    });
    let ot = put(&mut be, &vec![0.0; m * n], act, m, n, opad);
    let out_ulp = match act {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 0.0,
    };
    for isa in isas() {
        be.set_isa(isa).unwrap();
        // Sentinels in the padding must survive.
        let sentinel = vec![7.0f32; m * (n + opad)];
        be.write(ot.buf, 0, &bytes(&sentinel, act)).unwrap();
        be.matmul(xt, pt, bt, ot).unwrap();
        let prepared = read(&mut be, &ot);
        be.matmul(xt, wt, bt, ot).unwrap();
        let got = read(&mut be, &ot);
        // Few bf16 rows read the panels where they exist and dot the stored rows where not:
        // two summation orders, both held to the bound below.
        // (More bf16 rows take the AMX tiles either way: the panels packed at load, or the
        // same panels packed per call, the same bits.)
        let small = m <= 8 && isa.avx512() && k <= 4096;
        let same_path = !(packs && act == DType::BF16 && small);
        for (idx, (p, g)) in prepared.iter().zip(&got).enumerate() {
            assert!(
                !same_path || p.to_bits() == g.to_bits(),
                "{isa} {m}x{k} @ {n}x{k} {wdt} act {act}: out[{idx}] prepared {p}, stored {g}"
            );
        }
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for l in 0..k {
                    let p = x[i * k + l] as f64 * w[j * k + l] as f64;
                    exact += p;
                    mag += p.abs();
                }
                if bias {
                    exact += b[j] as f64;
                    mag += (b[j] as f64).abs();
                }
                let bound = (k + 2) as f64 * 2f64.powi(-24) * mag + out_ulp * exact.abs() + 1e-30;
                for (what, v) in [("stored", &got), ("prepared", &prepared)] {
                    let g = v[i * n + j] as f64;
                    assert!(
                        (g - exact).abs() <= bound,
                        "{isa} {m}x{k} @ {n}x{k} {wdt} act {act} {what}: out[{i},{j}] = {g}, exact {exact}, bound {bound}"
                    );
                }
            }
        }
        if opad > 0 {
            let all = read(
                &mut be,
                &TRef::new(ot.buf, 0, act, Shape::new(&[m, n + opad])),
            );
            for i in 0..m {
                for j in n..n + opad {
                    assert_eq!(all[i * (n + opad) + j], 7.0, "{isa}: padding written");
                }
            }
        }
    }
}

#[test]
fn float_paths_match_the_exact_product() {
    for (m, n, k) in [
        (1, 1, 1),
        (1, 9, 2),
        (1, 33, 17),
        (2, 31, 31),
        (3, 40, 33),
        (4, 64, 65),
        (5, 33, 15),
        (6, 17, 16),
        (7, 26, 300),
        (8, 50, 77),
        (8, 3, 5),
        (12, 48, 32),
        (9, 49, 40),
        (13, 65, 127),
        (25, 100, 1280),
        (33, 47, 3420),
    ] {
        for act in [DType::BF16, DType::F32] {
            check_float(m, n, k, act, DType::BF16, n % 2 == 1, 0, 0);
        }
    }
    // Other weight types, f16 output, strided views and biases.
    check_float(7, 37, 99, DType::F32, DType::F16, true, 3, 2);
    check_float(2, 21, 45, DType::BF16, DType::F32, true, 1, 5);
    check_float(14, 50, 61, DType::BF16, DType::F16, false, 0, 1);
    check_float(9, 35, 77, DType::F16, DType::BF16, true, 2, 0);
    check_float(3, 19, 130, DType::BF16, DType::BF16, true, 7, 3);
    check_float(40, 70, 95, DType::BF16, DType::BF16, false, 5, 3);
    // The AMX tiles (more than 8 bf16 rows over panels): whole and partial 16-row tiles and
    // tile pairs, 16-column tiles of full and packed-per-call panels, an odd number of them, K
    // tails (odd K included) and several K blocks, strided rows.
    check_float(16, 48, 32, DType::BF16, DType::BF16, false, 0, 0);
    check_float(17, 96, 64, DType::BF16, DType::BF16, true, 0, 0);
    check_float(31, 145, 1281, DType::BF16, DType::BF16, true, 3, 2);
    check_float(50, 208, 544, DType::BF16, DType::BF16, false, 32, 0);
    check_float(64, 60, 1030, DType::BF16, DType::BF16, true, 0, 5);
    // Wide enough that stored weights' work units are capped at 32 column pairs.
    check_float(9, 16400, 40, DType::BF16, DType::BF16, false, 0, 0);
}

#[test]
fn float_paths_block_long_rows() {
    // K beyond one packed block of each kind (2048 f32 units, 4096 bf16 elements), odd tails.
    check_float(13, 33, 4097, DType::F32, DType::BF16, true, 0, 0);
    check_float(13, 33, 8195, DType::BF16, DType::BF16, false, 0, 0);
    check_float(2, 5, 4099, DType::BF16, DType::BF16, true, 0, 0);
    // Several full panels packed at load, two K blocks, a row tail.
    check_float(19, 100, 8195, DType::BF16, DType::BF16, true, 0, 0);
    // AMX: enough row pairs for the long K to run in outer blocks (sums kept per row and
    // column pair between them), several column pairs per unit, a partial last chunk.
    check_float(290, 300, 2100, DType::BF16, DType::BF16, true, 0, 0);
}

#[test]
fn prepared_bf16_rows_do_not_depend_on_the_batch() {
    // Decode (one row), small batches and a prefill-sized batch read the same panels with the
    // same operations per row: each row's output bits are the same at every M. The longest K
    // of one block (longer rows take the stored layout at small M), a partial panel (N = 100)
    // and partial row tiles. On `amx`, more than 8 rows take the tiles (another summation
    // order): the same holds among those, and among the fewer rows.
    if !super::super::isa::has_bf16_dot(Isa::best()) {
        eprintln!("skipped: no AVX512_BF16 on this CPU");
        return;
    }
    let (n, k, big) = (100, 4095, 40);
    let mut r = Rng(0xB17C);
    let x: Vec<f32> = (0..big * k).map(|_| round(r.f(1.0), DType::BF16)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| round(r.f(0.05), DType::BF16)).collect();
    let mut be = CpuBackend::new();
    let wb = be
        .load_weight(HostBytes::from_vec(bytes(&w, DType::BF16)))
        .unwrap();
    let wt = TRef::new(wb, 0, DType::BF16, Shape::new(&[n, k]));
    be.prepare_matmul_weight(&wt).unwrap();
    assert!(be.panels.contains_key(&wb.0));
    let run = |be: &mut CpuBackend, m: usize| {
        let xt = put(be, &x[..m * k], DType::BF16, m, k, 0);
        let ot = put(be, &vec![0.0; m * n], DType::F32, m, n, 0);
        be.matmul(xt, wt, None, ot).unwrap();
        read(be, &ot)
    };
    for isa in isas().into_iter().filter(|i| i.avx512()) {
        be.set_isa(isa).unwrap();
        let groups: Vec<(usize, Vec<usize>)> = if isa == Isa::Amx {
            vec![(8, vec![1, 2, 5]), (big, vec![9, 16, 17, 33])]
        } else {
            vec![(big, vec![1, 2, 5, 8, 9, 21])]
        };
        for (reference, ms) in groups {
            let all = run(&mut be, reference);
            for m in ms {
                let part = run(&mut be, m);
                for (idx, (a, b)) in part.iter().zip(&all).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{isa} M = {m}: out[{idx}] {a} vs {b} at M = {reference}"
                    );
                }
            }
        }
    }
}

/// Random, well-formed quantized rows: real quantization of random values.
fn qweights(dtype: DType, n: usize, k: usize, r: &mut Rng) -> Vec<u8> {
    let rb = dtype.bytes_for(k);
    let mut w = vec![0u8; n * rb];
    for row in w.chunks_mut(rb) {
        let v: Vec<f32> = (0..k)
            .map(|i| r.f(0.05) * if i % 37 == 0 { 8.0 } else { 1.0 })
            .collect();
        quant::quantize_row(dtype, &v, row).unwrap();
    }
    w
}

/// Random bytes as K-quant blocks (every scale and min bit pattern), with finite small `d`s.
fn qbytes(dtype: DType, n: usize, k: usize, r: &mut Rng) -> Vec<u8> {
    let mut w: Vec<u8> = (0..n * dtype.bytes_for(k))
        .map(|_| r.next() as u8)
        .collect();
    let bb = dtype.block_bytes();
    let d_at: &[usize] = if dtype == DType::Q4K { &[0, 2] } else { &[208] };
    for b in w.chunks_mut(bb) {
        for &o in d_at {
            b[o..o + 2].copy_from_slice(&half::f16::from_f32(r.f(0.01)).to_le_bytes());
        }
    }
    w
}

fn check_quant(dtype: DType, m: usize, n: usize, k: usize, act: DType, bias: bool) {
    check_quant_with(dtype, m, n, k, act, bias, qweights)
}

type Weights = fn(DType, usize, usize, &mut Rng) -> Vec<u8>;

fn check_quant_with(
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    act: DType,
    bias: bool,
    weights: Weights,
) {
    let mut r = Rng(0x51ED_2701 ^ (m * 7919 + n * 31 + k) as u64);
    let x: Vec<f32> = (0..m * k)
        .map(|i| round(r.f(1.0) * if i % 53 == 0 { 10.0 } else { 1.0 }, act))
        .collect();
    let w = weights(dtype, n, k, &mut r);
    let b: Vec<f32> = (0..n).map(|_| round(r.f(0.5), DType::BF16)).collect();
    // The reference: M independent scalar GEMV rows, bias added in f32, rounded once.
    let rb = dtype.bytes_for(k);
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        let a = quant::quantize_activation(dtype, &x[i * k..(i + 1) * k]).unwrap();
        for j in 0..n {
            let mut v =
                quant::vec_dot_quantized_scalar(dtype, &w[j * rb..(j + 1) * rb], &a).unwrap();
            if bias {
                v += b[j];
            }
            want[i * n + j] = round(v, act);
        }
    }
    let mut be = CpuBackend::new();
    let xt = put(&mut be, &x, act, m, k, 3);
    // The stored rows, and the same bytes prepared as a matmul weight (AVX-512 interleaves
    // the K-quants' full groups of sixteen rows; the rest stay stored rows).
    let mut wts = Vec::new();
    for prepare in [false, true] {
        let wb = be.load_weight(HostBytes::from_vec(w.clone())).unwrap();
        let wt = TRef::new(wb, 0, dtype, Shape::new(&[n, k]));
        if prepare {
            be.prepare_matmul_weight(&wt).unwrap();
            let interleaved = Isa::Avx512.supported() && n >= 16;
            assert_eq!(be.x16.contains_key(&wb.0), interleaved, "{dtype} n = {n}");
        }
        wts.push((prepare, wt));
    }
    let bt = bias.then(|| {
        let bb = be
            .load_weight(HostBytes::from_vec(bytes(&b, DType::BF16)))
            .unwrap();
        TRef::new(bb, 0, DType::BF16, Shape::new(&[n]))
    });
    let ot = put(&mut be, &vec![0.0; m * n], act, m, n, 1);
    for isa in isas() {
        be.set_isa(isa).unwrap();
        for &(prepared, wt) in &wts {
            be.matmul(xt, wt, bt, ot).unwrap();
            let got = read(&mut be, &ot);
            if isa == Isa::Amx && act == DType::BF16 && m >= super::quant::AMX_ROWS {
                // The tiles: weights dequantized and rounded to bf16, float sums.
                check_dequantized_product(dtype, &x, &w, bias.then_some(&b[..]), m, n, k, &got);
                continue;
            }
            for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{isa} {dtype} {m}x{k} @ {n}x{k} (prepared: {prepared}): out[{}, {}] = {g}, \
                     scalar GEMV {e}",
                    idx / n,
                    idx % n
                );
            }
        }
    }
}

/// `got` (bf16 outputs) against the exact product of the weights dequantized as the scalar
/// reference does and rounded to bf16, with bf16 activations `x`: the AMX path's operands,
/// summed in f32 (a bound of K + 2 roundings of the magnitude) and rounded once to bf16.
#[allow(clippy::too_many_arguments)]
fn check_dequantized_product(
    dtype: DType,
    x: &[f32],
    w: &[u8],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    got: &[f32],
) {
    let rb = dtype.bytes_for(k);
    let mut wf = vec![0f32; k];
    for j in 0..n {
        quant::dequantize_row(dtype, &w[j * rb..(j + 1) * rb], &mut wf).unwrap();
        for v in wf.iter_mut() {
            *v = round(*v, DType::BF16);
        }
        for i in 0..m {
            let (mut exact, mut mag) = (0f64, 0f64);
            for l in 0..k {
                let p = x[i * k + l] as f64 * wf[l] as f64;
                exact += p;
                mag += p.abs();
            }
            if let Some(b) = bias {
                exact += b[j] as f64;
                mag += (b[j] as f64).abs();
            }
            let bound = (k + 2) as f64 * 2f64.powi(-24) * mag + 2f64.powi(-8) * exact.abs();
            let g = got[i * n + j] as f64;
            assert!(
                (g - exact).abs() <= bound,
                "amx {dtype} {m}x{k} @ {n}x{k}: out[{i},{j}] = {g}, exact {exact}, bound {bound}"
            );
        }
    }
}

/// The AMX path's dequantization (vectorized, to bf16) gives the scalar reference's values
/// rounded to bf16, on every scale and min bit pattern.
#[test]
fn amx_dequantization_matches_the_scalar_reference() {
    if !Isa::Amx.supported() {
        eprintln!("amx: skipped: this CPU (or OS) does not run it");
        return;
    }
    let mut r = Rng(0x00DE_0A17);
    for dtype in [DType::Q8_0, DType::Q4K, DType::Q6K] {
        for (n, k) in [(7, 256), (3, 1024), (5, 96)] {
            if k % dtype.block_len() != 0 {
                continue;
            }
            let w = match dtype {
                DType::Q8_0 => qweights(dtype, n, k, &mut r),
                _ => qbytes(dtype, n, k, &mut r),
            };
            let mut want = vec![0f32; n * k];
            quant::dequantize_row(dtype, &w, &mut want).unwrap();
            let mut got = vec![0u16; n * k];
            // SAFETY: AMX implies AVX-512 F/BW/VL and BF16.
            unsafe { super::amx::dequant_bf16(dtype, &w, &mut got) };
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(e.is_normal() || *e == 0.0, "{dtype}: test data has {e}");
                assert_eq!(
                    *g,
                    quant::f32_to_bf16_bits(*e),
                    "{dtype} {n}x{k}: [{i}] of {e}"
                );
            }
        }
    }
}

#[test]
fn quantized_paths_are_bit_identical_to_scalar_gemv_rows() {
    for dtype in [DType::Q8_0, DType::Q4K, DType::Q6K] {
        let bl = dtype.block_len();
        for (m, n, k) in [
            (1, 1, bl),
            (1, 37, 3 * bl),
            (2, 17, 2 * bl),
            (3, 33, 5 * bl),
            (5, 16, bl),
            (8, 48, 4 * bl),
            (13, 31, 3 * bl),
            (33, 65, 2 * bl),
        ] {
            for act in [DType::F32, DType::BF16] {
                check_quant(dtype, m, n, k, act, (m + n) % 2 == 0);
            }
        }
    }
    // Q8_0 with block counts around the 8-way float accumulation, and a 7B-like row.
    check_quant(DType::Q8_0, 6, 19, 96, DType::F32, true);
    check_quant(DType::Q8_0, 20, 40, 17 * 32, DType::BF16, false);
    check_quant(DType::Q4K, 17, 70, 3584, DType::BF16, true);
    // GEMV over several interleaved groups and a tail, at the 7B row length (Q8_0: 112
    // blocks, and 17: the eight accumulators twice over and one more).
    check_quant(DType::Q8_0, 1, 70, 3584, DType::BF16, true);
    check_quant(DType::Q8_0, 1, 35, 17 * 32, DType::F32, false);
    check_quant(DType::Q4K, 1, 70, 3584, DType::F32, false);
    check_quant(DType::Q6K, 1, 70, 3584, DType::BF16, true);
    check_quant(DType::Q6K, 9, 50, 3584, DType::F32, false);
    // From AMX_ROWS rows, bf16 activations take the tiles on AMX (held to a bound there, in
    // `check_quant_with`); f32 activations keep the int8 dots and their bits. Row counts past
    // one tile pair, odd column tiles, several work units, a partial last dequantized chunk.
    for dtype in [DType::Q8_0, DType::Q4K, DType::Q6K] {
        let k = if dtype == DType::Q8_0 { 800 } else { 768 };
        check_quant(dtype, 80, 37, k, DType::BF16, true);
        check_quant(dtype, 97, 290, k, DType::BF16, false);
        check_quant(dtype, 97, 33, k, DType::F32, true);
    }
    // Seven row pairs: K in two outer blocks of 80 steps, sums parked between them.
    check_quant(DType::Q4K, 200, 40, 2816, DType::BF16, true);
}

#[test]
fn k_quant_paths_take_any_block_bytes() {
    // Every bit of the packed 6-bit scales and mins, and of Q6_K's int8 scales, set at random.
    for dtype in [DType::Q4K, DType::Q6K] {
        for (m, n) in [(1, 48), (1, 21), (4, 35)] {
            check_quant_with(dtype, m, n, 3 * 256, DType::F32, m > 1, qbytes);
        }
    }
}

#[test]
fn avx512_row_store_rounds_like_the_scalar_store() {
    if !Isa::Avx512.supported() {
        return;
    }
    use super::super::{SPtr, View};
    use super::{Epi, Post};
    // A sweep of f32 bit patterns (ties, NaNs, infinities, denormals), with and without a bias,
    // and with a residual (bf16 or f32) added after the row is rounded to the output type.
    let mut vals: Vec<f32> = (0..200_003u32)
        .map(|i| f32::from_bits(i.wrapping_mul(21_473)))
        .collect();
    vals.extend([
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::MAX,
        1.0 + 1.0 / 256.0,
        -0.0,
    ]);
    let n = vals.len();
    let bias: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    let res_f: Vec<f32> = (0..n).map(|i| (i % 11) as f32 * 0.125 - 0.6).collect();
    let view = |p: *mut u8, dt: DType| View {
        p: SPtr(p),
        dt,
        rows: 1,
        row_len: n,
        stride: n,
    };
    for dt in [DType::BF16, DType::F32] {
        for rdt in [None, Some(DType::BF16), Some(DType::F32)] {
            let mut res = bytes(&res_f, rdt.unwrap_or(DType::F32));
            let post = rdt.map_or(Post::None, |d| Post::Add(view(res.as_mut_ptr(), d)));
            for b in [None, Some(&bias[..])] {
                let epi = Epi { bias: b, post };
                let (mut r1, mut r2) = (vals.clone(), vals.clone());
                let mut want = vec![0u8; dt.bytes_for(n)];
                let mut got = want.clone();
                unsafe {
                    super::store_row(&mut r1, epi, &view(want.as_mut_ptr(), dt), 0, 0);
                    super::avx512::store_row(&mut r2, epi, &view(got.as_mut_ptr(), dt), 0, 0);
                }
                assert!(want == got, "{dt} bias {} residual {rdt:?}", b.is_some());
            }
        }
    }
}

/// `matmul_fused` with the residual add or GELU gives the bits of `matmul` followed by the op,
/// on every instruction set and GEMM path (few rows, packed panels, quantized, strided views).
#[test]
fn fused_epilogues_match_the_op_sequence() {
    use crate::backend::Epilogue;
    let cases: &[(DType, usize, usize, usize)] = &[
        (DType::BF16, 1, 50, 77),
        (DType::BF16, 3, 97, 130),
        (DType::BF16, 9, 100, 64),
        (DType::BF16, 33, 49, 300),
        // Past the f32-activation path's 64-row blocks.
        (DType::BF16, 70, 21, 40),
        (DType::F32, 5, 20, 33),
        (DType::Q8_0, 1, 40, 64),
        (DType::Q8_0, 10, 40, 96),
        (DType::Q4K, 1, 33, 256),
        (DType::Q4K, 9, 48, 512),
        (DType::Q6K, 2, 17, 256),
        // The AMX tiles over dequantized weights (bf16 activations).
        (DType::Q8_0, 85, 40, 96),
        (DType::Q4K, 81, 50, 512),
    ];
    for &(wdt, m, n, k) in cases {
        for act in [DType::BF16, DType::F32] {
            let mut r = Rng(0xE919 ^ (m * 7919 + n * 31 + k) as u64);
            let x: Vec<f32> = (0..m * k).map(|_| round(r.f(1.0), act)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| round(r.f(2.0), act)).collect();
            let b: Vec<f32> = (0..n).map(|_| round(r.f(0.5), DType::BF16)).collect();
            let mut be = CpuBackend::new();
            let wbytes = if wdt.is_quantized() {
                qweights(wdt, n, k, &mut r)
            } else {
                let w: Vec<f32> = (0..n * k).map(|_| round(r.f(0.3), wdt)).collect();
                bytes(&w, wdt)
            };
            let wb = be.load_weight(HostBytes::from_vec(wbytes)).unwrap();
            let wt = TRef::new(wb, 0, wdt, Shape::new(&[n, k]));
            be.prepare_matmul_weight(&wt).unwrap();
            let bb = be
                .load_weight(HostBytes::from_vec(bytes(&b, DType::BF16)))
                .unwrap();
            let bt = Some(TRef::new(bb, 0, DType::BF16, Shape::new(&[n])));
            let xt = put(&mut be, &x, act, m, k, 3);
            let rt = put(&mut be, &res, act, m, n, 2);
            let (fused, plain) = (
                put(&mut be, &vec![0.0; m * n], act, m, n, 1),
                put(&mut be, &vec![0.0; m * n], act, m, n, 0),
            );
            for isa in isas() {
                be.set_isa(isa).unwrap();
                for epi in [Epilogue::Add(rt), Epilogue::Gelu] {
                    be.matmul_fused(xt, wt, bt, epi, fused).unwrap();
                    be.matmul(xt, wt, bt, plain).unwrap();
                    match epi {
                        Epilogue::Add(_) => be.add(rt, plain, plain).unwrap(),
                        _ => be.gelu(plain, plain).unwrap(),
                    }
                    let (f, p) = (read(&mut be, &fused), read(&mut be, &plain));
                    for (i, (a, e)) in f.iter().zip(&p).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            e.to_bits(),
                            "{isa} {wdt} act {act} {m}x{k} @ {n}x{k} {epi:?}: out[{i}] fused {a}, \
                             unfused {e}"
                        );
                    }
                }
            }
        }
    }
}
