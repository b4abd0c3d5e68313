// Decode GEMV (M = 1) on a per-warp cp.async ring: out = epilogue(x @ w^T + bias), with an
// optional RMSNorm prologue on x. Shared by gemv.cu (bf16 weights) and quant.cu (dp4a on Q8_0,
// Q4_K, Q6_K blocks). The arithmetic (window geometry, each lane's work on a unit, the int8
// quantizer of x) lives in gemv_dot.h. A candidate: the op harness checks it on a GPU (no host
// replay yet).
//
// Why a ring: batch-1 decode is a stream of weight bytes, and HBM needs several MB in flight to
// reach its bandwidth (Little's law: ~4.3 TB/s x ~1.5 us). Registers cap what a warp can hold in
// flight; cp.async copies into shared memory do not, so each warp keeps `stages` windows of up
// to 2.3 KB of its row requested while it computes on the oldest. Rows start at any even
// address (Q8_0 and Q6_K blocks are 34 and 210 bytes): the copies are the aligned 16-byte chunks
// around a window, and the lanes read words at 2-byte offsets with funnel shifts.
//
// Work split (launcher: src/backend/cuda/matmul.rs, `plan_ring`): 8 warps per CTA, warp w of
// CTA b owns rows [(8 b + w) R, +R) (R = rows_per_warp, even for the SwiGLU epilogue so a warp
// holds each gate/up pair), streamed back to back through its ring, so the next row's first
// windows are in flight while the previous row finishes. The grid is sized so every CTA is
// resident at once on the device (no tail wave); R grows with N instead.
//
// Per CTA, before the ring is consumed (while the first windows are in flight): x is staged in
// smem, normalized first if norm_w is set (norm.cuh: the same statistic and roundings as the
// rms_norm kernel, so fused and unfused runs give the same bits), as bf16 or f32 for bf16
// weights and as 32-element int8 blocks (gemv_dot.h's q8x) for the dp4a kernels.
//
// Per row: each lane's f32 partial (order: windows, then warp steps, then the unit's own order
// in gemv_dot.h), then the warp's xor tree (16, 8, 4, 2, 1), then lane 0's epilogue.
#pragma once
#include "gemv_dot.h"
#include "norm.cuh"

#define REEL_XS_BF16 0  // x staged as bf16 (bf16 activations)
#define REEL_XS_F32 1   // x staged as f32 (f32 or f16 activations)
#define REEL_XS_Q8 2    // x staged as q8x blocks (dp4a kernels)

__device__ __forceinline__ void ring_cp16(uint8_t* smem, uint64_t gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

__device__ __forceinline__ void ring_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `pending` of this thread's copy groups are outstanding.
__device__ __forceinline__ void ring_wait(int pending) {
    switch (pending) {
        case 0: asm volatile("cp.async.wait_group 0;\n" ::); break;
        case 1: asm volatile("cp.async.wait_group 1;\n" ::); break;
        case 2: asm volatile("cp.async.wait_group 2;\n" ::); break;
        default: asm volatile("cp.async.wait_group 3;\n" ::); break;
    }
}

// Element k of x, normalized when the prologue is on (inv from rms_inv_block).
__device__ __forceinline__ float gv_x(const ReelGemvParams& p, int k, float inv) {
    const float v = load_f(p.x, k, p.x_dt);
    return p.norm_w ? rms_apply(v, inv, load_f(p.norm_w, k, p.norm_dt), p.x_dt) : v;
}

template <int XS>
__device__ __forceinline__ void gv_stage_x(const ReelGemvParams& p, uint8_t* xs, float* scratch) {
    // Uniform across the block: rms_inv_block has barriers.
    const float inv = p.norm_w ? rms_inv_block(p.x, 0, p.K, p.x_dt, p.eps, scratch) : 1.0f;
    if (XS == REEL_XS_BF16) {
        __nv_bfloat16* d = reinterpret_cast<__nv_bfloat16*>(xs);
        for (int k = threadIdx.x; k < p.K; k += blockDim.x) d[k] = __float2bfloat16_rn(gv_x(p, k, inv));
    } else if (XS == REEL_XS_F32) {
        float* d = reinterpret_cast<float*>(xs);
        for (int k = threadIdx.x; k < p.K; k += blockDim.x) d[k] = gv_x(p, k, inv);
    } else {
        // One warp per 32-element block, one element per lane.
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        int8_t* qs = reinterpret_cast<int8_t*>(xs);
        float* xd = reinterpret_cast<float*>(xs + gv_q8x_d_offset(p.K));
        int32_t* s16 = reinterpret_cast<int32_t*>(xs + gv_q8x_s_offset(p.K));
        for (int b = warp; b < p.K / 32; b += REEL_RING_WARPS) {
            const int k = 32 * b + lane;
            const float v = gv_x(p, k, inv);
            float id;
            const float d = gv_q8_scale(warp_max(fabsf(v)), &id);
            const int q = gv_q8_quant(v, id);
            qs[k] = (int8_t)q;
            int s = q;
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) xd[b] = d;
            if ((lane & 15) == 0) s16[2 * b + (lane >> 4)] = s;
        }
    }
}

// One lane's work on the unit at `u` (unit index ku of the row, lane part `part`).
template <int KIND, int XS>
__device__ __forceinline__ float gv_unit(const uint8_t* u, const uint8_t* xs, const GvQ8x& x8, int ku,
                                         int part, int K, float acc) {
    const int k = ku * 256;
    if (KIND == REEL_GV_BF16) {
        const int kk = k + 8 * part;
        if (kk >= K) return acc;  // the row's last unit may be partial (K % 8 == 0)
        return XS == REEL_XS_BF16 ? gv_unit_bf16_xb(u, xs + 2 * kk, part, acc)
                                  : gv_unit_bf16_xf(u, xs + 4 * kk, part, acc);
    } else if (KIND == REEL_QT_Q8_0) {
        return gv_unit_q8_0(u, x8, k, part, K, acc);
    } else if (KIND == REEL_QT_Q4_K) {
        return gv_unit_q4_k(u, x8, k, part, acc);
    } else {
        return gv_unit_q6_k(u, x8, k, part, acc);
    }
}

template <int KIND, int XS>
__device__ __forceinline__ void gemv_ring(const ReelGemvParams& p) {
    extern __shared__ __align__(16) uint8_t gv_smem[];
    __shared__ float scratch[32];
    constexpr int WU = gv_window_units(KIND), UB = gv_unit_bytes(KIND);
    constexpr int LPU = gv_lanes_per_unit(KIND), UPS = 32 / LPU;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int S = p.stages, K = p.K, N = p.N;
    const int units = (K + 255) >> 8;
    const int wpr = (units + WU - 1) / WU;
    const int row0 = (blockIdx.x * REEL_RING_WARPS + warp) * p.rows_per_warp;
    const int nwin = p.rows_per_warp * wpr;
    uint8_t* ring = gv_smem + p.x_bytes + warp * S * REEL_RING_SLOT;

    // Window wi of this warp: row row0 + wi / wpr, units from (wi % wpr) * WU. One copy group per
    // window (empty past the end), so "oldest done" is always wait_group(S - 1).
    auto issue = [&](int wi) {
        const int n = row0 + wi / wpr;
        if (wi < nwin && n < N) {
            const int u0 = (wi % wpr) * WU;
            const QWin win = gv_window(p.w + (uint64_t)n * p.w_stride, KIND, u0, min(WU, units - u0), K);
            uint8_t* slot = ring + (wi % S) * REEL_RING_SLOT;
            for (int c = lane; c < win.nchunks; c += 32) ring_cp16(slot + 16 * c, win.base + 16 * (uint64_t)c);
        }
        ring_commit();
    };
    for (int i = 0; i < S; ++i) issue(i);

    gv_stage_x<XS>(p, gv_smem, scratch);
    __syncthreads();
    const GvQ8x x8 = gv_q8x(gv_smem, K);

    float acc = 0.0f, gate = 0.0f;
    for (int wi = 0; wi < nwin; ++wi) {
        ring_wait(S - 1);
        __syncwarp();  // every lane's copies of the oldest window are visible to the warp
        const int r = wi / wpr, wj = wi - r * wpr, n = row0 + r;
        if (n < N) {
            const int u0 = wj * WU, nu = min(WU, units - u0);
            const uint64_t addr = p.w + (uint64_t)n * p.w_stride + (uint64_t)u0 * UB;
            const uint8_t* base = ring + (wi % S) * REEL_RING_SLOT + (int)(addr & 15);
#pragma unroll 2
            for (int t = 0; t * UPS < nu; ++t) {
                const int s = t * UPS + lane / LPU;
                if (s < nu) acc = gv_unit<KIND, XS>(base + s * UB, gv_smem, x8, u0 + s, lane % LPU, K, acc);
            }
        }
        __syncwarp();  // the slot is free again
        issue(wi + S);
        if (wj == wpr - 1) {
            acc = warp_sum(acc);
            if (n < N && lane == 0) {
                float v = acc;
                if (p.bias_dt != REEL_DT_NONE) v = __fadd_rn(v, load_f(p.bias, n, p.bias_dt));
                if (p.epi == REEL_GV_EPI_RESIDUAL) {
                    v = __fadd_rn(round_dt(v, p.out_dt), load_f(p.res, n, p.res_dt));
                    store_f(p.out, n, p.out_dt, v);
                } else if (p.epi == REEL_GV_EPI_SWIGLU) {
                    if ((n & 1) == 0) {
                        gate = round_dt(v, p.out_dt);
                    } else {
                        const float u = round_dt(v, p.out_dt);
                        const float h = round_dt(gate / (1.0f + expf(-gate)), p.out_dt) * u;
                        store_f(p.out, n >> 1, p.out_dt, h);
                    }
                } else {
                    store_f(p.out, n, p.out_dt, v);
                }
            }
            acc = 0.0f;
        }
    }
}
