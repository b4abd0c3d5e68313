// Small-M matmul (decode, M = 1..8): out[M, N] = x[M, K] @ w[N, K]^T (+ bias), x and w bf16,
// f32 accumulation, rounded once at the store. One warp per output column n (a weight row,
// contiguous in K), 8 warps per block, so each weight byte is read once for all M rows.
// grid = (ceil(N / 8), ceil(M / 8)); block = 256. CPU twin: src/backend/cpu (matmul).
#include "common.cuh"

#define GEMV_ROWS 8  // x rows per launch slice (grid.y walks larger M)

__device__ __forceinline__ void gemv_store(const ReelMatmulParams& p, int m, int n, float v) {
    if (p.bias_dt != REEL_DT_NONE) v += load_f(p.bias, n, p.bias_dt);
    store_f(p.out, (int64_t)m * p.out_stride + n, p.out_dt, v);
}

// 16-byte path: needs K % 8 == 0 and 16-byte aligned x/w rows (the launcher checks). Each lane
// takes 8 consecutive k per step; four steps are issued before the first FMA so >= 64 B per
// lane are in flight. x is re-read by all 8 warps of the block and stays in L1.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_v16(ReelMatmulParams p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n = blockIdx.x * 8 + warp;
    const int m0 = blockIdx.y * GEMV_ROWS;
    if (n >= p.N) return;
    const int mc = min(GEMV_ROWS, p.M - m0);
    const __nv_bfloat16* w = reinterpret_cast<const __nv_bfloat16*>(p.w) + (int64_t)n * p.w_stride;
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x) + (int64_t)m0 * p.x_stride;
    float acc[GEMV_ROWS];
#pragma unroll
    for (int m = 0; m < GEMV_ROWS; ++m) acc[m] = 0.0f;
    int k = lane * 8;
    for (; k + 3 * 256 < p.K; k += 4 * 256) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) wv[u] = ldg16(w + k + u * 256);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            float wf[8];
            bf16x8_to_f32(wv[u], wf);
#pragma unroll
            for (int m = 0; m < GEMV_ROWS; ++m) {
                if (m < mc) {
                    float xf[8];
                    bf16x8_to_f32(ldg16(x + (int64_t)m * p.x_stride + k + u * 256), xf);
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[m] = fmaf(wf[e], xf[e], acc[m]);
                }
            }
        }
    }
    for (; k < p.K; k += 256) {
        float wf[8];
        bf16x8_to_f32(ldg16(w + k), wf);
#pragma unroll
        for (int m = 0; m < GEMV_ROWS; ++m) {
            if (m < mc) {
                float xf[8];
                bf16x8_to_f32(ldg16(x + (int64_t)m * p.x_stride + k), xf);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[m] = fmaf(wf[e], xf[e], acc[m]);
            }
        }
    }
    const float mine = warp_sum_rows(acc, lane);
    if (lane < mc) gemv_store(p, m0 + lane, n, mine);
}

// Scalar path for any K, stride, alignment and float type (e.g. the ViT's K = 3420 without
// padding, f32 activations, f16/f32 weights).
extern "C" __global__ void __launch_bounds__(256) gemv_scalar(ReelMatmulParams p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n = blockIdx.x * 8 + warp;
    const int m0 = blockIdx.y * GEMV_ROWS;
    if (n >= p.N) return;
    const int mc = min(GEMV_ROWS, p.M - m0);
    const int64_t wo = (int64_t)n * p.w_stride, xo = (int64_t)m0 * p.x_stride;
    float acc[GEMV_ROWS];
#pragma unroll
    for (int m = 0; m < GEMV_ROWS; ++m) acc[m] = 0.0f;
    for (int k = lane; k < p.K; k += 32) {
        const float wk = load_f(p.w, wo + k, p.w_dt);
#pragma unroll
        for (int m = 0; m < GEMV_ROWS; ++m)
            if (m < mc) acc[m] = fmaf(wk, load_f(p.x, xo + (int64_t)m * p.x_stride + k, p.x_dt), acc[m]);
    }
    const float mine = warp_sum_rows(acc, lane);
    if (lane < mc) gemv_store(p, m0 + lane, n, mine);
}

// ---- Decode GEMV on the per-warp ring (gemv_ring.cuh), a REEL_GEMV candidate: M = 1, bf16
// weights, K % 8 == 0, 16-byte aligned weight rows; x staged as bf16 (bf16 activations) or f32
// (f32/f16 ones). ----
#include "gemv_ring.cuh"

extern "C" __global__ void __launch_bounds__(256, 2) gemv_ring_bf16_xb(ReelGemvParams p) {
    gemv_ring<REEL_GV_BF16, REEL_XS_BF16>(p);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_ring_bf16_xf(ReelGemvParams p) {
    gemv_ring<REEL_GV_BF16, REEL_XS_F32>(p);
}
