// Rotary embeddings. The angle is the fp32 product pos * inv_freq, as torch forms it; cos/sin
// of that fp32 angle are then evaluated in f64 and rounded to f32 (correctly rounded in
// practice, matching the CPU reference bit for bit), never with __sincosf/__sinf: the angle
// reaches 1e5 rad, far outside the intrinsics' [-pi, pi] bound. inv_freq = 1 / f32(theta^e)
// with e = f32(2j) / f32(d) and the power in f64, as the CPU reference builds it.
// ptxas reports a small stack frame (40 bytes at sm_90a) for these kernels: it is the slow path of the accurate
// sin/cos (Payne-Hanek argument reduction for huge arguments), which keeps a small local array;
// it runs only for such angles and is the price of accurate sin/cos. build.rs expects it.
// CPU twins: src/backend/cpu (rope_mrope, rope_vision).
#include "common.cuh"

// 1 / theta^(i / dim): exponent in f32 (torch's arange(0, dim, 2).float() / dim), power in f64
// rounded to f32, reciprocal in f32.
__device__ __forceinline__ float inv_freq(float theta, int i, int dim) {
    const float e = (float)i / (float)dim;
    return 1.0f / (float)pow((double)theta, (double)e);
}

// sin/cos of the f32 angle pos * inv_freq, evaluated in f64 and rounded to f32.
__device__ __forceinline__ void rope_sincos(float pos, float inv, float* s, float* c) {
    const float ang = __fmul_rn(pos, inv);
    double sd, cd;
    sincos((double)ang, &sd, &cd);
    *s = (float)sd;
    *c = (float)cd;
}

// Qwen2.5-VL M-RoPE (chunked [t|h|w] sections, NeoX half split, global inv_freq ladder).
// cos/sin rounded to the output type, then out = round(round(x * cos) + round(rot(x) * sin)).
// grid = (tokens, heads); block = head_dim / 2 threads, one frequency pair each.
extern "C" __global__ void rope_mrope(ReelRopeParams p) {
    const int t = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
    const int half = p.head_dim / 2;
    if (t >= p.tokens || h >= p.heads || j >= half) return;
    const int* pos = reinterpret_cast<const int*>(p.pos);
    const int row = j < p.sec_t ? 0 : (j < p.sec_t + p.sec_h ? 1 : 2);
    const float position = (float)pos[row * p.pos_stride + t];
    float s, c;
    rope_sincos(position, inv_freq(p.theta, 2 * j, p.head_dim), &s, &c);
    c = round_dt(c, p.out_dt);
    s = round_dt(s, p.out_dt);
    const int64_t xo = (int64_t)t * p.x_stride + (int64_t)h * p.head_dim;
    const int64_t oo = (int64_t)t * p.out_stride + (int64_t)h * p.head_dim;
    const float x1 = load_f(p.x, xo + j, p.x_dt), x2 = load_f(p.x, xo + j + half, p.x_dt);
    const int dt = p.out_dt;
    // __fmul_rn/__fadd_rn: no FMA contraction (for f32 outputs round_dt is the identity).
    store_f(p.out, oo + j, dt, __fadd_rn(round_dt(__fmul_rn(x1, c), dt), round_dt(__fmul_rn(-x2, s), dt)));
    store_f(p.out, oo + j + half, dt, __fadd_rn(round_dt(__fmul_rn(x2, c), dt), round_dt(__fmul_rn(x1, s), dt)));
}

// Vision 2-D RoPE (head_dim 80 in Qwen2.5-VL): pair (j, j + d/2); j < d/4 rotates with the
// row position and inv_freq[j], d/4 <= j < d/2 with the column and inv_freq[j - d/4]; the
// ladder is theta^(-2k/(d/2)). All math in f32, one rounding at the store.
// grid = (tokens, heads); block = head_dim / 2 threads.
extern "C" __global__ void rope_vision(ReelRopeParams p) {
    const int t = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
    const int half = p.head_dim / 2, quarter = p.head_dim / 4;
    if (t >= p.tokens || h >= p.heads || j >= half) return;
    const int* pos = reinterpret_cast<const int*>(p.pos);
    const int k = j < quarter ? j : j - quarter;
    const float position = (float)pos[(int64_t)t * p.pos_stride + (j < quarter ? 0 : 1)];
    float s, c;
    rope_sincos(position, inv_freq(p.theta, 2 * k, half), &s, &c);
    const int64_t xo = (int64_t)t * p.x_stride + (int64_t)h * p.head_dim;
    const int64_t oo = (int64_t)t * p.out_stride + (int64_t)h * p.head_dim;
    const float x1 = load_f(p.x, xo + j, p.x_dt), x2 = load_f(p.x, xo + j + half, p.x_dt);
    // __fmul_rn/__fadd_rn keep nvcc from contracting into FMA: torch rounds each product.
    store_f(p.out, oo + j, p.out_dt, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    store_f(p.out, oo + j + half, p.out_dt, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
}
