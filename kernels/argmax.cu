// Row argmax: index of the maximum of each row of x [R, N] (bf16/f16/f32) into out [R] int32.
// Ties go to the lowest index (torch.argmax returns the first occurrence); a NaN counts as the
// maximum, as in torch, so the first NaN wins. CPU twin: src/backend/cpu (argmax).
#include "common.cuh"

// (v, i) beats (w, j)?  NaN > everything; equal values prefer the lower index.
__device__ __forceinline__ bool am_better(float v, int i, float w, int j) {
    const bool vn = v != v, wn = w != w;
    if (vn || wn) return vn && (!wn || i < j);
    return v > w || (v == w && i < j);
}

// One 1024-thread block per row: 152,064 logits are ~300 KB, a few microseconds for one SM,
// and the block-level reduction keeps the tie rule exact without a second pass.
extern "C" __global__ void __launch_bounds__(1024) argmax(ReelArgmaxParams p) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int64_t base = (int64_t)r * p.x_stride;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
        const float v = load_f(p.x, base + c, p.x_dt);
        if (am_better(v, c, best, bi)) { best = v; bi = c; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, best, o);
        const int j = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(w, j, best, bi)) { best = w; bi = j; }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float w = __shfl_xor_sync(0xffffffffu, best, o);
            const int j = __shfl_xor_sync(0xffffffffu, bi, o);
            if (am_better(w, j, best, bi)) { best = w; bi = j; }
        }
        // A row of all -inf keeps bi = INT_MAX from the sentinel: report index 0 like torch.
        if (lane == 0) reinterpret_cast<int*>(p.out)[r] = bi == 0x7fffffff ? 0 : bi;
    }
}
