// The elementwise functions that both the standalone kernels (elementwise.cu) and the GEMM
// epilogues (gemm.cu, gemm_wgmma.cu) apply, so a fused epilogue rounds exactly as the unfused
// op sequence does. Inputs are values already rounded to the output type; callers round the
// result once at the store.
#pragma once
#include "common.cuh"

// round(silu(g)) * u; silu in f32 with accurate expf, rounded to the output type.
__device__ __forceinline__ float epi_swiglu(float g, float u, int out_dt) {
    return round_dt(g / (1.0f + expf(-g)), out_dt) * u;
}

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in f64 as 0.5 x erfc(-x / sqrt 2): for x << 0,
// 1 + erf cancels catastrophically in f32 (the result is tiny but must stay accurate).
__device__ __forceinline__ float epi_gelu(float x) {
    const double xd = (double)x;
    return (float)(0.5 * xd * erfc(-xd * 0.70710678118654752440));
}
