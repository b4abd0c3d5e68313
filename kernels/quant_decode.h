// Quantized-weight decoding shared by kernels/quant.cu and the host checks
// (kernels/host_test/quant_check.cpp, run from a Rust test that compares every mapping with
// reel::quant::dequantize_row bit for bit). Plain C++ so a host compiler builds it too.
//
// The unit of work is 256 consecutive weights of a row ("unit"): one super-block of Q4_K/Q6_K,
// eight blocks of Q8_0. Decoders take a pointer to the unit's first byte and write `N` (8 or 16)
// consecutive weights starting at element e of the unit (e a multiple of N), so a group never
// crosses a Q8_0 block (32), a Q4_K sub-block (32) or a Q6_K scale group (16).
//
// Exactness: every weight is computed with the same f32 operations, in the same order, as the
// CPU dequantizers (src/quant/{q8_0,q4_k,q6_k}.rs): Q8_0 q·d; Q4_K (d·sc)·q − (dmin·m);
// Q6_K (d·sc)·q. Products and differences use explicitly rounded intrinsics on the device, so
// nvcc cannot contract them into an FMA; small integers become floats exactly through the
// 2^23 magic number (one OR and one FADD instead of the quarter-rate I2F).
#pragma once
#include <stdint.h>
#include "params.h"

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define REEL_QHD __host__ __device__ __forceinline__
#define REEL_QHDC __host__ __device__ constexpr
#define Q_UNROLL _Pragma("unroll")
#else
#include <cstring>
#define REEL_QHD inline
#define REEL_QHDC constexpr
#define Q_UNROLL
#endif

// ---- per-type geometry ----

REEL_QHDC int qt_block_len(int qt) { return qt == REEL_QT_Q8_0 ? 32 : 256; }
REEL_QHDC int qt_block_bytes(int qt) {
    return qt == REEL_QT_Q8_0 ? 34 : (qt == REEL_QT_Q4_K ? 144 : 210);
}
// Bytes of one 256-weight unit.
REEL_QHDC int qt_unit_bytes(int qt) { return qt_block_bytes(qt) * (256 / qt_block_len(qt)); }
// Bytes of a row of K weights (K a multiple of the block length).
REEL_QHDC int64_t qt_row_bytes(int qt, int64_t K) {
    return K / qt_block_len(qt) * qt_block_bytes(qt);
}

// ---- scalar helpers (host and device) ----

// Little-endian 16-bit load from an even address.
REEL_QHD uint32_t q_ld16(const uint8_t* p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const uint16_t*>(p);
#else
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
#endif
}

REEL_QHD float q_bits_f(uint32_t b) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(b);
#else
    float f;
    std::memcpy(&f, &b, 4);
    return f;
#endif
}

// IEEE fp16 bits -> f32 (exact; subnormals, inf and NaN included).
REEL_QHD float q_half(uint32_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half((unsigned short)h));
#else
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return q_bits_f(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return q_bits_f(sign | ((exp + 112) << 23) | (man << 13));
    // subnormal: man * 2^-24, exact in f32
    const float v = (float)man * (1.0f / 16777216.0f);
    return sign ? -v : v;
#endif
}

// v (0 <= v < 2^23) minus `bias` as f32, exactly: 2^23 + v is an f32 with v in the mantissa.
REEL_QHD float q_int_f(uint32_t v, float bias_plus_2_23) {
    return q_bits_f(0x4B000000u | v) - bias_plus_2_23;
}
#define Q_2_23 8388608.0f

REEL_QHD float q_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

REEL_QHD float q_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

// ---- decoders: N weights of the unit at `u`, from element e ----

// Q8_0: block e/32 at 34·(e/32); w = q·d. All loads are at even offsets.
template <int N>
REEL_QHD void q8_0_decode(const uint8_t* u, int e, float* w) {
    const uint8_t* b = u + (e >> 5) * 34;
    const float d = q_half(q_ld16(b));
    const uint8_t* q = b + 2 + (e & 31);
Q_UNROLL
    for (int i = 0; i < N; i += 2) {
        const uint32_t v = q_ld16(q + i);
        // int8 q as f32: (q ^ 0x80) is q + 128 in 0..255
        w[i] = q_mul(q_int_f((v & 0xffu) ^ 0x80u, Q_2_23 + 128.0f), d);
        w[i + 1] = q_mul(q_int_f(((v >> 8) & 0xffu) ^ 0x80u, Q_2_23 + 128.0f), d);
    }
}

// Q4_K: element e = 64c + 32·hi + l reads the low (hi = 0) or high nibble of qs[32c + l] with
// the 6-bit (scale, min) of sub-block j = 2c + hi.
template <int N>
REEL_QHD void q4_k_decode(const uint8_t* u, int e, float* w) {
    const float d = q_half(q_ld16(u)), dmin = q_half(q_ld16(u + 2));
    const int c = e >> 6, hi = (e >> 5) & 1, j = 2 * c + hi;
    const uint8_t* s = u + 4;
    uint32_t sc, m;
    if (j < 4) {
        sc = s[j] & 63u;
        m = s[j + 4] & 63u;
    } else {
        sc = (s[j + 4] & 0xFu) | ((uint32_t)(s[j - 4] >> 6) << 4);
        m = (uint32_t)(s[j + 4] >> 4) | ((uint32_t)(s[j] >> 6) << 4);
    }
    const float d1 = q_mul(d, q_int_f(sc, Q_2_23)), m1 = q_mul(dmin, q_int_f(m, Q_2_23));
    const uint8_t* q = u + 16 + 32 * c + (e & 31);
    const int sh = 4 * hi;
Q_UNROLL
    for (int i = 0; i < N; i += 2) {
        const uint32_t v = q_ld16(q + i);
        w[i] = q_sub(q_mul(d1, q_int_f((v >> sh) & 0xFu, Q_2_23)), m1);
        w[i + 1] = q_sub(q_mul(d1, q_int_f((v >> (8 + sh)) & 0xFu, Q_2_23)), m1);
    }
}

// Q6_K: element e = 128h + 32qq + l (l < 32): low 4 bits from ql[64h + 32(qq & 1) + l]
// (nibble qq >> 1), high 2 bits from qh[32h + l] (bits 2qq..2qq+1), scale sc[8h + 2qq + l/16];
// w = (d·sc)·(q − 32).
template <int N>
REEL_QHD void q6_k_decode(const uint8_t* u, int e, float* w) {
    const float d = q_half(q_ld16(u + 208));
    const int h = e >> 7, qq = (e >> 5) & 3, l0 = e & 31;
    const uint8_t* ql = u + 64 * h + 32 * (qq & 1) + l0;
    const uint8_t* qh = u + 128 + 32 * h + l0;
    // int8 scale as f32 (exact), then d·sc as the CPU does
    const uint32_t scb = u[192 + 8 * h + (l0 >> 4) + 2 * qq];
    const float s = q_mul(d, q_int_f(scb ^ 0x80u, Q_2_23 + 128.0f));
    const int lsh = 4 * (qq >> 1), hsh = 2 * qq;
Q_UNROLL
    for (int i = 0; i < N; i += 2) {
        const uint32_t lo = q_ld16(ql + i), hv = q_ld16(qh + i);
        const uint32_t q0 = ((lo >> lsh) & 0xFu) | (((hv >> hsh) & 3u) << 4);
        const uint32_t q1 = ((lo >> (8 + lsh)) & 0xFu) | (((hv >> (8 + hsh)) & 3u) << 4);
        w[i] = q_mul(s, q_int_f(q0, Q_2_23 + 32.0f));
        w[i + 1] = q_mul(s, q_int_f(q1, Q_2_23 + 32.0f));
    }
}

template <int QT, int N>
REEL_QHD void q_decode(const uint8_t* u, int e, float* w) {
    if (QT == REEL_QT_Q8_0) q8_0_decode<N>(u, e, w);
    else if (QT == REEL_QT_Q4_K) q4_k_decode<N>(u, e, w);
    else q6_k_decode<N>(u, e, w);
}

// ---- decode GEMV streaming geometry ----

// Units per smem window: a window plus up to 14 bytes of misalignment (rows start at even
// addresses; the copy starts at the 16-byte boundary below) must fit REEL_QGEMV_WIN_BYTES,
// i.e. at most 4 chunks of 16 B per lane. Q8_0: 7 units (1904 B), Q4_K: 14 (2016 B), Q6_K: 9
// (1890 B).
REEL_QHDC int qgemv_window_units(int qt) { return (REEL_QGEMV_WIN_BYTES - 14) / qt_unit_bytes(qt); }

// Elements of x per smem chunk for `mc` rows of x of `xbytes` bytes each: a multiple of 256
// (so chunks end on unit boundaries), at least 256.
REEL_QHDC int qgemv_chunk(int mc, int xbytes) {
    return (REEL_QGEMV_X_BYTES / xbytes / mc) / 256 * 256;
}

// Units in the window starting at unit u: up to the window size, the end of u's x chunk
// (chunk_units units per chunk) and the end of the row.
REEL_QHD int qgemv_window_len(int u, int wu, int chunk_units, int units) {
    int n = wu;
    if (chunk_units - u % chunk_units < n) n = chunk_units - u % chunk_units;
    if (units - u < n) n = units - u;
    return n;
}

// The 16-byte chunks holding units [u0, u0 + nu) of the row at byte address `row`:
// copy chunks base + 16c for c < nchunks; the window's data starts at byte `off` of the copy.
struct QWin {
    uint64_t base;
    int off;
    int nchunks;
};

REEL_QHD QWin qgemv_window(uint64_t row, int qt, int u0, int nu, int K) {
    const int ub = qt_unit_bytes(qt);
    const uint64_t addr = row + (uint64_t)u0 * ub;
    int64_t end_w = (int64_t)(u0 + nu) * 256;
    if (end_w > K) end_w = K;
    const int64_t bytes = qt_row_bytes(qt, end_w) - (int64_t)u0 * ub;
    QWin w;
    w.base = addr & ~(uint64_t)15;
    w.off = (int)(addr - w.base);
    w.nchunks = (int)((w.off + bytes + 15) / 16);
    return w;
}
