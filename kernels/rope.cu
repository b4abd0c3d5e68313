// Multimodal rotary embedding (Qwen2.5-VL M-RoPE, chunked [t|h|w] sections, NeoX half split).
// cos/sin from the fp32 product pos * inv_freq with accurate sincosf (never __sincosf: theta
// reaches 1e4+ rad), rounded to bf16, applied with a rounding after each product and the sum,
// as transformers does in bf16. CPU twin: src/backend/cpu (rope_mrope).
#include "common.cuh"

// grid = (tokens, heads); block = head_dim / 2 threads, one frequency pair each.
extern "C" __global__ void rope_mrope_bf16(ReelMropeParams p) {
    const int t = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
    const int half = p.head_dim / 2;
    if (t >= p.tokens || h >= p.heads || j >= half) return;
    const int* pos = reinterpret_cast<const int*>(p.pos);
    const int row = j < p.sec_t ? 0 : (j < p.sec_t + p.sec_h ? 1 : 2);
    const float position = (float)pos[row * p.tokens + t];
    // inv_freq[j] = theta^(-2j/d), computed in fp32 like torch's arange/pow.
    const float inv_freq = 1.0f / powf(p.theta, (float)(2 * j) / (float)p.head_dim);
    float s, c;
    sincosf(position * inv_freq, &s, &c);
    c = round_bf16(c);
    s = round_bf16(s);
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x) + (int64_t)t * p.x_stride + h * p.head_dim;
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out) + (int64_t)t * p.out_stride + h * p.head_dim;
    const float x1 = __bfloat162float(x[j]), x2 = __bfloat162float(x[j + half]);
    out[j] = __float2bfloat16_rn(round_bf16(x1 * c) + round_bf16(-x2 * s));
    out[j + half] = __float2bfloat16_rn(round_bf16(x2 * c) + round_bf16(x1 * s));
}
