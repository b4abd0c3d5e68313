// Rotary embeddings. cos/sin come from the fp32 product pos * inv_freq with accurate sincosf
// (never __sincosf: the angle reaches 1e4+ rad, far outside the intrinsic's [-pi, pi] bound).
// ptxas reports a 32-byte stack frame for these kernels: it is sincosf's slow path (Payne-Hanek
// argument reduction for |x| > 105615), which keeps a small local array; it runs only for such
// large angles and is the price of matching torch's fp32 sin/cos.
// CPU twins: src/backend/cpu (rope_mrope, rope_vision).
#include "common.cuh"

// Qwen2.5-VL M-RoPE (chunked [t|h|w] sections, NeoX half split, global inv_freq ladder).
// cos/sin rounded to the output type, then out = round(round(x * cos) + round(rot(x) * sin)).
// grid = (tokens, heads); block = head_dim / 2 threads, one frequency pair each.
extern "C" __global__ void rope_mrope(ReelMropeParams p) {
    const int t = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
    const int half = p.head_dim / 2;
    if (t >= p.tokens || h >= p.heads || j >= half) return;
    const int* pos = reinterpret_cast<const int*>(p.pos);
    const int row = j < p.sec_t ? 0 : (j < p.sec_t + p.sec_h ? 1 : 2);
    const float position = (float)pos[row * p.pos_stride + t];
    // inv_freq[j] = 1 / theta^(2j/d), computed in fp32 like torch's arange/pow.
    const float inv_freq = 1.0f / powf(p.theta, (float)(2 * j) / (float)p.head_dim);
    float s, c;
    sincosf(position * inv_freq, &s, &c);
    c = round_dt(c, p.out_dt);
    s = round_dt(s, p.out_dt);
    const int64_t xo = (int64_t)t * p.x_stride + (int64_t)h * p.head_dim;
    const int64_t oo = (int64_t)t * p.out_stride + (int64_t)h * p.head_dim;
    const float x1 = load_f(p.x, xo + j, p.x_dt), x2 = load_f(p.x, xo + j + half, p.x_dt);
    const int dt = p.out_dt;
    store_f(p.out, oo + j, dt, round_dt(x1 * c, dt) + round_dt(-x2 * s, dt));
    store_f(p.out, oo + j + half, dt, round_dt(x2 * c, dt) + round_dt(x1 * s, dt));
}

// Vision 2-D RoPE (head_dim 80 in Qwen2.5-VL): pair (j, j + d/2); j < d/4 rotates with the
// row position and inv_freq[j], d/4 <= j < d/2 with the column and inv_freq[j - d/4]; the
// ladder is theta^(-2k/(d/2)). All math in f32, one rounding at the store.
// grid = (tokens, heads); block = head_dim / 2 threads.
extern "C" __global__ void rope_vision(ReelRopeVisionParams p) {
    const int t = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
    const int half = p.head_dim / 2, quarter = p.head_dim / 4;
    if (t >= p.tokens || h >= p.heads || j >= half) return;
    const int* pos = reinterpret_cast<const int*>(p.pos);
    const int k = j < quarter ? j : j - quarter;
    const float position = (float)pos[(int64_t)t * p.pos_stride + (j < quarter ? 0 : 1)];
    const float inv_freq = 1.0f / powf(p.theta, (float)(2 * k) / (float)half);
    float s, c;
    sincosf(position * inv_freq, &s, &c);
    const int64_t xo = (int64_t)t * p.x_stride + (int64_t)h * p.head_dim;
    const int64_t oo = (int64_t)t * p.out_stride + (int64_t)h * p.head_dim;
    const float x1 = load_f(p.x, xo + j, p.x_dt), x2 = load_f(p.x, xo + j + half, p.x_dt);
    // __fmul_rn/__fadd_rn keep nvcc from contracting into FMA: torch rounds each product.
    store_f(p.out, oo + j, p.out_dt, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    store_f(p.out, oo + j + half, p.out_dt, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
}
