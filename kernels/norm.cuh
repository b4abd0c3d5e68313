// RMSNorm's row statistic, shared by norm.cu's rms_norm and the GEMVs with a fused norm
// prologue (gemv_ring.cuh), so both compute the same bits: thread t of a 256-thread block sums
// x[t], x[t + 256], ... with fmaf, then block_sum's tree; inv = 1 / sqrt(ss / D + eps) with IEEE
// sqrt and division (not rsqrtf's approximation), as the CPU reference.
#pragma once
#include "common.cuh"

#define REEL_NORM_THREADS 256

// Every thread of a REEL_NORM_THREADS block gets the row's inv; `scratch` holds 32 floats.
__device__ __forceinline__ float rms_inv_block(uint64_t x, int64_t off, int cols, int dt, float eps,
                                               float* scratch) {
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += REEL_NORM_THREADS) {
        const float v = load_f(x, off + c, dt);
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

// Element c of the normalized row: round(round(x * inv) * w), rounded to `dt` (the norm's
// output type) at both points, as transformers' Qwen2RMSNorm in that type.
__device__ __forceinline__ float rms_apply(float x, float inv, float w, int dt) {
    return round_dt(__fmul_rn(round_dt(__fmul_rn(x, inv), dt), w), dt);
}
