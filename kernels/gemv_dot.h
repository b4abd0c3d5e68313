// The arithmetic of the decode GEMV on the per-warp ring (kernels/gemv_ring.cuh): window
// geometry, what one lane computes from one 256-weight unit in shared memory, and the 32-element
// int8 quantizer of x for the dp4a kernels. Plain C++ that also compiles for the host, so a
// replay of the kernels' exact lane mapping and summation order can be written against it (there
// is none yet: the op harness checks these kernels on a GPU).
//
// Weight kinds: REEL_GV_BF16 (a row is K bf16) or REEL_QT_Q8_0 / _Q4_K / _Q6_K (ggml blocks).
// A unit is 256 consecutive weights of a row; a window is up to gv_window_units whole units of
// one row, copied as the 16-byte aligned chunks that cover it (rows may start at any even
// address), so a unit's data sits at slot + off + s * unit_bytes.
//
// Lanes and units: `gv_lanes_per_unit` lanes share a unit (bf16 32, Q8_0 16, Q4_K 8, Q6_K 16),
// so a warp step covers 32 / lanes_per_unit units; lane l takes unit (step * ups + l / lpu)
// of the window, part l % lpu:
//   bf16  part p: elements 8p..8p+7 (one 16-byte chunk), 8 FMAs in element order.
//   Q8_0  part p: block p / 2, half p % 2 (16 weights): 4 dp4a, then acc = fma(sum, dw * dx, acc).
//   Q4_K  part p: qs chunk p (16 bytes at 16 + 16 p): sub-block 2 (p / 2) from the low nibbles and
//         2 (p / 2) + 1 from the high ones, elements 16 (p % 2) .. + 15 of each: 2 x 4 dp4a,
//         f_j = d * (sc_j * dot_j) - dmin * (m_j * xsum_j), acc = fma(dx_j, f_j, acc), j low first.
//   Q6_K  part p: elements 16 p .. 16 p + 15 (one scale): 4 dp4a on (q - 32),
//         acc = fma(d * dx, sc * dot, acc).
// x for the dp4a kernels ("q8x"): per 32-element block, d = amax / 127 and q = round(x / d) as
// quant::q8_0's activation quantizer (q in -127..127, half away from zero), d kept as its fp16
// rounding (the value the CPU's Q8_0 dot multiplies by); plus the int sum of every 16 quants
// (the Q4_K min term). Layout: qs int8 [K], then d f32 [K / 32], then sum16 i32 [K / 16].
#pragma once
#include "quant_decode.h"

// ---- geometry ----

REEL_QHDC int gv_unit_bytes(int kind) { return kind == REEL_GV_BF16 ? 512 : qt_unit_bytes(kind); }
// Bytes of the first k weights of a row (k a multiple of the block length).
REEL_QHD int64_t gv_bytes_for(int kind, int64_t k) {
    return kind == REEL_GV_BF16 ? 2 * k : qt_row_bytes(kind, k);
}
// Units per window: as many as fit a slot with up to 14 bytes of misalignment in front.
REEL_QHDC int gv_window_units(int kind) {
    return kind == REEL_GV_BF16 ? 4 : (kind == REEL_QT_Q8_0 ? 8 : (kind == REEL_QT_Q4_K ? 16 : 10));
}
REEL_QHDC int gv_lanes_per_unit(int kind) {
    return kind == REEL_GV_BF16 ? 32 : (kind == REEL_QT_Q4_K ? 8 : 16);
}
// Bytes of x staged in smem for K elements (a multiple of 16): bf16 x as bf16, f32/f16 x as f32,
// dp4a kernels as q8x.
REEL_QHDC int64_t gv_q8x_d_offset(int64_t K) { return (K + 15) / 16 * 16; }
REEL_QHDC int64_t gv_q8x_s_offset(int64_t K) { return gv_q8x_d_offset(K) + (K / 32) * 4; }
REEL_QHDC int64_t gv_q8x_bytes(int64_t K) { return (gv_q8x_s_offset(K) + (K / 16) * 4 + 15) / 16 * 16; }

// The chunks holding units [u0, u0 + nu) of the row at byte address `row` (see quant_decode.h's
// QWin): copy base + 16 c for c < nchunks; unit s of the window starts at byte off + s * UB.
REEL_QHD QWin gv_window(uint64_t row, int kind, int u0, int nu, int K) {
    const int ub = gv_unit_bytes(kind);
    const uint64_t addr = row + (uint64_t)u0 * ub;
    int64_t end_w = (int64_t)(u0 + nu) * 256;
    if (end_w > K) end_w = K;
    const int64_t bytes = gv_bytes_for(kind, end_w) - (int64_t)u0 * ub;
    QWin w;
    w.base = addr & ~(uint64_t)15;
    w.off = (int)(addr - w.base);
    w.nchunks = (int)((w.off + bytes + 15) / 16);
    return w;
}

// ---- lane primitives (host and device give the same bits) ----

#ifdef __CUDA_ARCH__
#define GV_FMA(a, b, c) __fmaf_rn(a, b, c)
#else
#include <cmath>
#define GV_FMA(a, b, c) std::fma((float)(a), (float)(b), (float)(c))
#endif

// Little-endian 32-bit word at a 4-byte aligned address.
REEL_QHD uint32_t gv_ld32a(const uint8_t* p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const uint32_t*>(p);
#else
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
#endif
}

// Four little-endian words from a 2-byte aligned address: five aligned loads and funnel
// shifts (reads up to 2 bytes past the 16, which the slot's pad covers).
REEL_QHD void gv_ld128u(const uint8_t* p, uint32_t* w) {
    const uintptr_t a = (uintptr_t)p;
    const uint8_t* q = (const uint8_t*)(a & ~(uintptr_t)3);
    const unsigned sh = (unsigned)(a & 3) * 8;
    uint32_t v[5];
Q_UNROLL
    for (int i = 0; i < 5; ++i) v[i] = gv_ld32a(q + 4 * i);
Q_UNROLL
    for (int i = 0; i < 4; ++i) {
#ifdef __CUDA_ARCH__
        w[i] = __funnelshift_r(v[i], v[i + 1], sh);
#else
        w[i] = sh ? (uint32_t)((((uint64_t)v[i + 1] << 32) | v[i]) >> sh) : v[i];
#endif
    }
}

// Signed 4-way byte dot product plus c.
REEL_QHD int gv_dp4a(uint32_t a, uint32_t b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a((int)a, (int)b, c);
#else
    for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
#endif
}

// Per-byte a - b modulo 256.
REEL_QHD uint32_t gv_vsub4(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    return __vsub4(a, b);
#else
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= (uint32_t)((uint8_t)((a >> (8 * i)) - (b >> (8 * i)))) << (8 * i);
    return r;
#endif
}

REEL_QHD float gv_i2f(int v) { return (float)v; }  // exact: |v| < 2^24 everywhere below

// ---- staged x ----

#ifndef __CUDA_ARCH__
// IEEE f32 -> fp16 bits, round to nearest even (subnormals, overflow to inf, NaN kept).
inline uint32_t gv_f32_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                       // below the smallest normal half (2^-14)
        if (ax < 0x33000000u) return sign;         // below half the smallest subnormal: 0
        const uint32_t e = ax >> 23, man = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;            // 14 + (127 - e) - 1 ... value = man * 2^(e-150)
        // subnormal half = value / 2^-24 = man * 2^(e - 126): shift right by (126 - e)
        const uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), halfw = 1u << (shift - 1);
        const uint32_t r = q + (rem > halfw || (rem == halfw && (q & 1)));
        return sign | r;
    }
    const uint32_t e = (ax >> 23) - 112, man = ax & 0x7fffffu;
    uint32_t h = (e << 10) | (man >> 13);
    const uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // may carry into the exponent: fine
    return sign | h;
}
#endif

// The q8x arrays of staged x (layout in the header comment).
struct GvQ8x {
    const int8_t* qs;
    const float* d;
    const int32_t* s16;
};

REEL_QHD GvQ8x gv_q8x(const uint8_t* base, int K) {
    GvQ8x x;
    x.qs = reinterpret_cast<const int8_t*>(base);
    x.d = reinterpret_cast<const float*>(base + gv_q8x_d_offset(K));
    x.s16 = reinterpret_cast<const int32_t*>(base + gv_q8x_s_offset(K));
    return x;
}

// One 32-element block, as quant::q8_0's activation quantizer: amax (order-free), d = amax/127,
// id = 1/d (0 for an all-zero block), q = round(v * id) half away from zero; d_out is fp16(d).
REEL_QHD float gv_q8_scale(float amax, float* id) {
    const float d = amax / 127.0f;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
#ifdef __CUDA_ARCH__
    return __half2float(__float2half_rn(d));
#else
    return q_half(gv_f32_to_half_bits(d));
#endif
}

REEL_QHD int gv_q8_quant(float v, float id) {
#ifdef __CUDA_ARCH__
    return (int)roundf(__fmul_rn(v, id));
#else
    return (int)std::round(v * id);
#endif
}

// ---- one lane's work on one unit; each returns the updated accumulator ----

// 16 bytes at a 16-byte aligned address.
REEL_QHD void gv_ld128a(const uint8_t* p, uint32_t* w) {
#ifdef __CUDA_ARCH__
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#else
    std::memcpy(w, p, 16);
#endif
}

REEL_QHD float gv_bf16_bits(uint32_t w, int hi) { return q_bits_f(hi ? (w & 0xffff0000u) : (w << 16)); }

// bf16 weights, x staged as bf16: x8 is the lane's 16 bytes of x (elements 8 p .. 8 p + 7).
REEL_QHD float gv_unit_bf16_xb(const uint8_t* u, const uint8_t* x8, int part, float acc) {
    uint32_t w[4], x[4];
    gv_ld128a(u + 16 * part, w);
    gv_ld128a(x8, x);
Q_UNROLL
    for (int e = 0; e < 8; ++e)
        acc = GV_FMA(gv_bf16_bits(w[e >> 1], e & 1), gv_bf16_bits(x[e >> 1], e & 1), acc);
    return acc;
}

// bf16 weights, x staged as f32: x8 is the lane's 32 bytes of x.
REEL_QHD float gv_unit_bf16_xf(const uint8_t* u, const uint8_t* x8, int part, float acc) {
    uint32_t w[4], x[8];
    gv_ld128a(u + 16 * part, w);
    gv_ld128a(x8, x);
    gv_ld128a(x8 + 16, x + 4);
Q_UNROLL
    for (int e = 0; e < 8; ++e) acc = GV_FMA(gv_bf16_bits(w[e >> 1], e & 1), q_bits_f(x[e]), acc);
    return acc;
}

// Q8_0: k = first weight of the unit; only whole blocks below K are read.
REEL_QHD float gv_unit_q8_0(const uint8_t* u, const GvQ8x& x, int k, int part, int K, float acc) {
    const int b = part >> 1, h = part & 1;
    const int kk = k + 32 * b + 16 * h;
    if (kk >= K) return acc;
    const uint8_t* blk = u + 34 * b;
    const float dw = q_half(q_ld16(blk));
    uint32_t w[4];
    gv_ld128u(blk + 2 + 16 * h, w);
    int s = 0;
Q_UNROLL
    for (int i = 0; i < 4; ++i) s = gv_dp4a(w[i], gv_ld32a((const uint8_t*)(x.qs + kk) + 4 * i), s);
    return GV_FMA(gv_i2f(s), q_mul(dw, x.d[kk >> 5]), acc);
}

// Q4_K: sub-block j's 6-bit scale and min from the 12 packed bytes (words s0, s1, s2), as
// get_scale_min_k4, through the 32-bit form of the unpacking (no indexed arrays: a run-time
// index would put them in local memory).
REEL_QHD void gv_q4k_scale_min(uint32_t s0, uint32_t s1, uint32_t s2, int j, int* sc, int* m) {
    const uint32_t sc_w = j < 4 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | (((s0 >> 6) & 0x03030303u) << 4));
    const uint32_t m_w = j < 4 ? (s1 & 0x3F3F3F3Fu) : (((s2 >> 4) & 0x0F0F0F0Fu) | (((s1 >> 6) & 0x03030303u) << 4));
    const int sh = 8 * (j & 3);
    *sc = (int)((sc_w >> sh) & 0xFFu);
    *m = (int)((m_w >> sh) & 0xFFu);
}

REEL_QHD float gv_unit_q4_k(const uint8_t* u, const GvQ8x& x, int k, int part, float acc) {
    const int c = part >> 1, l0 = 16 * (part & 1);
    uint32_t hw[4], q[4];
    gv_ld128u(u, hw);
    gv_ld128u(u + 16 + 32 * c + l0, q);
    const float d = q_half(hw[0] & 0xffffu), dmin = q_half(hw[0] >> 16);
Q_UNROLL
    for (int hi = 0; hi < 2; ++hi) {
        const int j = 2 * c + hi;
        const int kk = k + 32 * j + l0;
        int sc, m;
        gv_q4k_scale_min(hw[1], hw[2], hw[3], j, &sc, &m);
        int dot = 0;
Q_UNROLL
        for (int i = 0; i < 4; ++i)
            dot = gv_dp4a((q[i] >> (4 * hi)) & 0x0F0F0F0Fu, gv_ld32a((const uint8_t*)(x.qs + kk) + 4 * i), dot);
        const float f = q_sub(q_mul(d, gv_i2f(sc * dot)), q_mul(dmin, gv_i2f(m * x.s16[kk >> 4])));
        acc = GV_FMA(x.d[kk >> 5], f, acc);
    }
    return acc;
}

REEL_QHD float gv_unit_q6_k(const uint8_t* u, const GvQ8x& x, int k, int part, float acc) {
    const int e0 = 16 * part;
    const int h = e0 >> 7, qq = (e0 >> 5) & 3, l0 = e0 & 31;
    uint32_t ql[4], qh[4];
    gv_ld128u(u + 64 * h + 32 * (qq & 1) + l0, ql);
    gv_ld128u(u + 128 + 32 * h + l0, qh);
    const float d = q_half(q_ld16(u + 208));
    const int sc = (int)(int8_t)u[192 + (e0 >> 4)];
    const int kk = k + e0;
    int dot = 0;
Q_UNROLL
    for (int i = 0; i < 4; ++i) {
        const uint32_t lo = (ql[i] >> (4 * (qq >> 1))) & 0x0F0F0F0Fu;
        const uint32_t hi = ((qh[i] >> (2 * qq)) & 0x03030303u) << 4;
        dot = gv_dp4a(gv_vsub4(lo | hi, 0x20202020u), gv_ld32a((const uint8_t*)(x.qs + kk) + 4 * i), dot);
    }
    return GV_FMA(q_mul(d, x.d[kk >> 5]), gv_i2f(sc * dot), acc);
}
