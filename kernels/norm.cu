// RMSNorm (Qwen2RMSNorm): f32 statistics, the normalized value rounded to the output type
// before the weight multiply, as transformers does. CPU twin: src/backend/cpu (rms_norm).
#include "common.cuh"

// One block per row. Rows here are short (3584, 1280): the second pass re-reads x from L1/L2,
// so the kernel stays one DRAM read + one write per element; loads are scalar for any dtype and
// alignment (the row is ~7 KB, latency dominates, not instruction count).
extern "C" __global__ void __launch_bounds__(256) rms_norm(ReelRmsNormParams p) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int64_t outer = r / p.inner, in = r % p.inner;
    const int64_t xo = outer * p.x_stride + in * p.cols, oo = outer * p.out_stride + in * p.cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
        const float v = load_f(p.x, xo + c, p.x_dt);
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    // IEEE sqrt and division (not rsqrtf's 2-ulp approximation), as the CPU reference.
    const float inv = 1.0f / sqrtf(ss / (float)p.cols + p.eps);
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
        const float h = round_dt(load_f(p.x, xo + c, p.x_dt) * inv, p.out_dt);
        store_f(p.out, oo + c, p.out_dt, h * load_f(p.w, c, p.w_dt));
    }
}
