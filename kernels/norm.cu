// RMSNorm (Qwen2RMSNorm): f32 statistics, normalized value rounded to bf16 before the weight
// multiply, as transformers does. CPU twin: src/backend/cpu (rms_norm).
#include "common.cuh"

// One block per row; 16-byte loads when the row allows it would come later, rows here are short
// enough (3584, 1280) that one pass over x with the row cached in registers is bandwidth-bound.
extern "C" __global__ void rms_norm_bf16(ReelRmsNormParams p) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x) + (int64_t)r * p.x_stride;
    const __nv_bfloat16* w = reinterpret_cast<const __nv_bfloat16*>(p.w);
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out) + (int64_t)r * p.out_stride;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
        float v = __bfloat162float(x[c]);
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)p.cols + p.eps);
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
        float h = round_bf16(__bfloat162float(x[c]) * inv);
        out[c] = __float2bfloat16_rn(h * __bfloat162float(w[c]));
    }
}
