// Shared device helpers for reel's kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "params.h"
#include "index_math.h"

#define REEL_WARP 32

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The warp totals of R per-lane partial sums (one per row of x in the GEMVs); lane m < R gets
// row m's. Selects rather than indexing acc[lane]: a run-time index would go to local memory.
template <int R>
__device__ __forceinline__ float warp_sum_rows(const float (&acc)[R], int lane) {
    float mine = 0.0f;
#pragma unroll
    for (int m = 0; m < R; ++m) {
        const float s = warp_sum(acc[m]);
        if (lane == m) mine = s;
    }
    return mine;
}

// Block-wide sum; every thread gets the result. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % REEL_WARP, warp = threadIdx.x / REEL_WARP;
    const int nwarps = (blockDim.x + REEL_WARP - 1) / REEL_WARP;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

// Round-to-nearest-even f32 -> bf16 -> f32, as torch does when storing bf16.
__device__ __forceinline__ float round_bf16(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
}

// Rounds an f32 value to the storage type `dt` and back (identity for f32).
__device__ __forceinline__ float round_dt(float x, int dt) {
    if (dt == REEL_DT_BF16) return round_bf16(x);
    if (dt == REEL_DT_F16) return __half2float(__float2half_rn(x));
    return x;
}

// Loads element i of a tensor of type dt as f32. dt is uniform across the launch, so the
// switch costs one predictable branch.
__device__ __forceinline__ float load_f(uint64_t base, int64_t i, int dt) {
    if (dt == REEL_DT_BF16) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
    if (dt == REEL_DT_F16) return __half2float(reinterpret_cast<const __half*>(base)[i]);
    return reinterpret_cast<const float*>(base)[i];
}

// Stores f32 v as type dt (round to nearest even).
__device__ __forceinline__ void store_f(uint64_t base, int64_t i, int dt, float v) {
    if (dt == REEL_DT_BF16) reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
    else if (dt == REEL_DT_F16) reinterpret_cast<__half*>(base)[i] = __float2half_rn(v);
    else reinterpret_cast<float*>(base)[i] = v;
}

// 8 bf16 packed in a 16-byte vector -> 8 f32.
__device__ __forceinline__ void bf16x8_to_f32(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// A 32-bit word holding two bf16 -> (lo, hi) as f32; exact (bf16 is the top half of f32).
__device__ __forceinline__ float2 bf16x2_to_f32(uint32_t w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// Read-only 16-byte global load through the non-coherent path.
__device__ __forceinline__ uint4 ldg16(const void* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
}
