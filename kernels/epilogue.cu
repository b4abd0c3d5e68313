// A GEMM epilogue as its own pass, for GEMM providers that cannot run it (cuBLASLt's GELU is
// the tanh form, and its C input would add the residual before the matmul's rounding):
// y [M, N] bf16 (p.x, rows x_stride apart) is the provider's round(x @ w^T + bias), and
//   GELU    out = round(gelu(y))
//   ADD     out = round(y + res)
//   SWIGLU  out[:, j] = round(round(silu(y[:, j])) * y[:, F + j]), F = N / 2
// with epilogue.cuh's functions, so the result equals gemm.cu's fused epilogue bit for bit.
// One thread per 8 output columns of a row: 16-byte loads and stores when every row involved
// is 16-byte aligned and the 8 columns are in range (p.pad_ = 1 from the launcher), else per
// element. grid-stride over rows * ceil(cols / 8) units; block = 256.
// CPU twin: src/backend/fused.rs (the op sequence).
#include "common.cuh"
#include "epilogue.cuh"

extern "C" __global__ void __launch_bounds__(256) gemm_epilogue_bf16(ReelGemmParams p) {
    const bool swiglu = p.epi == REEL_EPI_SWIGLU;
    const int half = p.N / 2;
    const int cols = swiglu ? half : p.N;
    const int units = (cols + 7) / 8;
    const bool vec = p.pad_ != 0;
    const __nv_bfloat16* y = reinterpret_cast<const __nv_bfloat16*>(p.x);
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out);
    const int64_t total = (int64_t)p.M * units;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int row = (int)(i / units), col = (int)(i % units) * 8;
        const int64_t yo = (int64_t)row * p.x_stride + col;
        const int64_t oo = (int64_t)row * p.out_stride + col;
        const int64_t ro = (int64_t)row * p.res_stride + col;
        float v[8];
        if (vec && col + 8 <= cols) {
            bf16x8_to_f32(ldg16(y + yo), v);
            if (swiglu) {
                float u[8];
                bf16x8_to_f32(ldg16(y + yo + half), u);
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = epi_swiglu(v[e], u[e], REEL_DT_BF16);
            } else if (p.epi == REEL_EPI_GELU) {
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = epi_gelu(v[e]);
            } else if (p.epi == REEL_EPI_ADD) {
                if (p.res_dt == REEL_DT_BF16) {
                    float r[8];
                    bf16x8_to_f32(ldg16(reinterpret_cast<const __nv_bfloat16*>(p.res) + ro), r);
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] += r[e];
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] += load_f(p.res, ro + e, p.res_dt);
                }
            }
            uint4 pk;
            uint32_t* w = reinterpret_cast<uint32_t*>(&pk);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                w[e] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e])) |
                       ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e + 1])) << 16);
            *reinterpret_cast<uint4*>(out + oo) = pk;
        } else {
            for (int e = 0; e < 8 && col + e < cols; ++e) {
                float a = __bfloat162float(y[yo + e]);
                if (swiglu) {
                    a = epi_swiglu(a, __bfloat162float(y[yo + e + half]), REEL_DT_BF16);
                } else if (p.epi == REEL_EPI_GELU) {
                    a = epi_gelu(a);
                } else if (p.epi == REEL_EPI_ADD) {
                    a += load_f(p.res, ro + e, p.res_dt);
                }
                out[oo + e] = __float2bfloat16_rn(a);
            }
        }
    }
}
