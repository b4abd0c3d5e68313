// Matmul and embedding with quantized weights (Q8_0, Q4_K, Q6_K in ggml's block layouts):
// out[M, N] = x[M, K] @ dequant(w)[N, K]^T (+ bias), f32 accumulation, rounded once at the store.
// Weights are decoded exactly as the CPU dequantizers do (quant_decode.h), so the GEMV equals
// "dequantize, then an f32 matmul" up to the order of the f32 sums. CPU twins: src/backend/cpu
// (matmul, embedding) through src/quant. Launchers: src/backend/cuda/matmul.rs (matmul),
// src/backend/cuda/elementwise.rs (embedding_quant).
//
// Decode GEMV (M <= 8): qgemv_<type>_<x type>. One warp per output column n (weight row n),
// 8 warps per block; grid = (ceil(N / 8), ceil(M / 8)), block = 256.
//  - Weights are read once, with 16-byte loads. A row is streamed in windows of whole 256-weight
//    units (qgemv_window_units): the warp copies the 16-byte-aligned chunks covering the window
//    (row starts are only 2-byte aligned: Q8_0 and Q6_K blocks are 34 and 210 bytes) into its
//    private 2 KB smem buffer, 4 chunks per lane, then decodes from smem. The next window's
//    chunks are loaded into registers before the current one is computed, so 64 B per lane stay
//    in flight while the warp does arithmetic.
//  - x is staged in smem (as bf16 for bf16 activations, which keeps the smem traffic per weight
//    at 2 B; as f32 for f32/f16 activations) in chunks of qgemv_chunk(mc) elements, a multiple
//    of 256, so windows never straddle a chunk. M = 1, bf16: K <= 12288 is a single chunk.
//  - Worked example, Q4_K, K = 3584 (14 units of 144 B, row_bytes = 2016), n = 5, block 0,
//    warp 5, M = 1, bf16 x. Window units = 14, chunk = 12288 elements, so one window covers the
//    whole row: row address A = w + 5·2016 = w + 10080 (16-aligned since 10080 = 630·16), off = 0,
//    nchunks = 126. Lane 3 copies chunks 3, 35, 67, 99 (bytes 48.., 560.., 1072.., 1584..).
//    Compute step s = 2 (unit 2, weights 512..767): lane 3 takes unit elements e = 24..31, i.e.
//    k = 512 + 24 .. 512 + 31; in the unit, c = 0, hi = 0, sub-block j = 0, nibbles are the low
//    halves of qs bytes 24..31 (unit bytes 16 + 24 = 40..47, smem bytes 2·144 + 40 = 328..335);
//    x is read from xs[536..543]. After the K loop, the warp's 32 partial sums are reduced with
//    shuffle-xor and lane 0 writes out[0, 5].
//    Q6_K rows are 2940 B for K = 3584: row 5 starts at byte 14700 = 918·16 + 12, so off = 12
//    and the first window (9 units, 1890 B) copies ceil((12 + 1890) / 16) = 119 chunks.
//
// Prefill GEMM (M > 8, bf16 x): qgemm_<type>. The block GEMM of gemm.cu (mma.cuh's gemm_block:
// CTA 128 x 128 x 32, 8 warps as 2 (m) x 4 (n) of 64 x 32, mma.sync m16n8k16 bf16, ldmatrix,
// padded smem rows of 40 bf16), with x copied by 2-stage cp.async and the weight tile dequantized by the threads into smem as
// bf16 (one rounding per weight, the tensor-core operand type). Thread t of a tile decodes 16
// weights: row t / 2 of the tile, k = k0 + 16·(t % 2) .. +15 (one Q8_0 half-block, one Q4_K
// half sub-block, one Q6_K scale group). K is a multiple of 32, so K tiles are always full.
// grid = (ceil(N / 128), ceil(M / 128)); block = 256; static smem 40 KB.
//
// Register/spill budget (ptxas -v, sm_80 and sm_90a, CUDA 13.0): no kernel spills; the
// figures are in the module docs of src/backend/cuda/matmul.rs.
#include "common.cuh"
#include "mma.cuh"
#include "quant_decode.h"
#include "gemv_ring.cuh"

// ---------------------------------------------------------------------------------------------
// Decode GEMV

template <typename XT>
struct XStage;

template <>
struct XStage<__nv_bfloat16> {
    // Copies element i of x (bf16 bits, exact).
    static __device__ __forceinline__ __nv_bfloat16 load(const ReelMatmulParams& p, int64_t i) {
        return reinterpret_cast<const __nv_bfloat16*>(p.x)[i];
    }
    static __device__ __forceinline__ void read8(const __nv_bfloat16* s, float* f) {
        bf16x8_to_f32(*reinterpret_cast<const uint4*>(s), f);
    }
};

template <>
struct XStage<float> {
    static __device__ __forceinline__ float load(const ReelMatmulParams& p, int64_t i) {
        return load_f(p.x, i, p.x_dt);
    }
    static __device__ __forceinline__ void read8(const float* s, float* f) {
        const float4 a = *reinterpret_cast<const float4*>(s);
        const float4 b = *reinterpret_cast<const float4*>(s + 4);
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
        f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    }
};

template <int QT, typename XT>
__device__ __forceinline__ void qgemv(const ReelMatmulParams& p) {
    constexpr int WU = qgemv_window_units(QT), UB = qt_unit_bytes(QT);
    __shared__ __align__(16) uint8_t wbuf[REEL_QGEMV_WARPS][REEL_QGEMV_WIN_BYTES];
    __shared__ __align__(16) XT xs[REEL_QGEMV_X_BYTES / sizeof(XT)];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n = blockIdx.x * REEL_QGEMV_WARPS + warp;
    const int m0 = blockIdx.y * REEL_QGEMV_ROWS;
    const int mc = min(REEL_QGEMV_ROWS, p.M - m0);
    // Warps past N still stage x and meet every barrier; they only skip the weight work.
    const bool active = n < p.N;
    const int KC = qgemv_chunk(mc, (int)sizeof(XT));
    const int chunk_units = KC / 256;
    const int units = (p.K + 255) / 256;
    const uint64_t row = p.w + (uint64_t)(active ? n : 0) * (uint64_t)p.w_stride;
    uint8_t* wb = wbuf[warp];

    float acc[REEL_QGEMV_ROWS];
#pragma unroll
    for (int m = 0; m < REEL_QGEMV_ROWS; ++m) acc[m] = 0.0f;

    // The window whose chunks are in `reg` (prefetched), as (first unit, units, placement).
    int wu0 = 0;
    int wnu = qgemv_window_len(0, WU, chunk_units, units);
    QWin win = qgemv_window(row, QT, 0, wnu, p.K);
    uint4 reg[4];
    if (active) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int c = lane + 32 * r;
            if (c < win.nchunks) reg[r] = ldg16(reinterpret_cast<const void*>(win.base + 16 * (uint64_t)c));
        }
    }

    for (int k0 = 0; k0 < p.K; k0 += KC) {
        const int kc = min(KC, p.K - k0);
        __syncthreads();  // every warp is done with the previous chunk of x
        for (int i = threadIdx.x; i < mc * kc; i += blockDim.x) {
            const int m = i / kc, j = i - m * kc;
            xs[m * KC + j] = XStage<XT>::load(p, (int64_t)(m0 + m) * p.x_stride + k0 + j);
        }
        __syncthreads();
        if (!active) continue;
        const int uend = (k0 + kc + 255) / 256;  // first unit of the next chunk
        while (wu0 < uend) {
            __syncwarp();  // all lanes are done reading the previous window from wb
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int c = lane + 32 * r;
                if (c < win.nchunks) *reinterpret_cast<uint4*>(wb + 16 * c) = reg[r];
            }
            __syncwarp();
            const int cu0 = wu0, cnu = wnu, coff = win.off;
            // Prefetch the next window (possibly in the next chunk of x) into registers.
            wu0 += wnu;
            if (wu0 < units) {
                wnu = qgemv_window_len(wu0, WU, chunk_units, units);
                win = qgemv_window(row, QT, wu0, wnu, p.K);
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int c = lane + 32 * r;
                    if (c < win.nchunks)
                        reg[r] = ldg16(reinterpret_cast<const void*>(win.base + 16 * (uint64_t)c));
                }
            }
            // Lane l takes elements 8l .. 8l + 7 of every unit of the window.
#pragma unroll 2
            for (int s = 0; s < cnu; ++s) {
                const int kb = (cu0 + s) * 256 + lane * 8;
                if (kb < p.K) {  // only the last Q8_0 unit can be partial
                    float w[8];
                    q_decode<QT, 8>(wb + coff + s * UB, lane * 8, w);
                    const int kx = kb - k0;
#pragma unroll
                    for (int m = 0; m < REEL_QGEMV_ROWS; ++m) {
                        if (m < mc) {
                            float xf[8];
                            XStage<XT>::read8(&xs[m * KC + kx], xf);
#pragma unroll
                            for (int e = 0; e < 8; ++e) acc[m] = fmaf(w[e], xf[e], acc[m]);
                        }
                    }
                }
            }
        }
    }

    float mine = warp_sum_rows(acc, lane);
    if (active && lane < mc) {
        if (p.bias_dt != REEL_DT_NONE) mine += load_f(p.bias, n, p.bias_dt);
        store_f(p.out, (int64_t)(m0 + lane) * p.out_stride + n, p.out_dt, mine);
    }
}

#define QGEMV(name, QT, XT)                                                                   \
    extern "C" __global__ void __launch_bounds__(256, 2) name(ReelMatmulParams p) { qgemv<QT, XT>(p); }
QGEMV(qgemv_q8_0_bf16, REEL_QT_Q8_0, __nv_bfloat16)
QGEMV(qgemv_q8_0_f32, REEL_QT_Q8_0, float)
QGEMV(qgemv_q4_k_bf16, REEL_QT_Q4_K, __nv_bfloat16)
QGEMV(qgemv_q4_k_f32, REEL_QT_Q4_K, float)
QGEMV(qgemv_q6_k_bf16, REEL_QT_Q6_K, __nv_bfloat16)
QGEMV(qgemv_q6_k_f32, REEL_QT_Q6_K, float)

// ---------------------------------------------------------------------------------------------
// Decode GEMV with integer dot products (gemv_ring.cuh), a REEL_QGEMV candidate: x quantized
// once per CTA to 32-element int8 blocks in smem, dp4a against the weight blocks read from the
// ring, scales applied per block in f32. Any float activation type; M = 1.

extern "C" __global__ void __launch_bounds__(256, 2) qgemv_dp4a_q8_0(ReelGemvParams p) {
    gemv_ring<REEL_QT_Q8_0, REEL_XS_Q8>(p);
}
extern "C" __global__ void __launch_bounds__(256, 2) qgemv_dp4a_q4_k(ReelGemvParams p) {
    gemv_ring<REEL_QT_Q4_K, REEL_XS_Q8>(p);
}
extern "C" __global__ void __launch_bounds__(256, 2) qgemv_dp4a_q6_k(ReelGemvParams p) {
    gemv_ring<REEL_QT_Q6_K, REEL_XS_Q8>(p);
}

// ---------------------------------------------------------------------------------------------
// Prefill GEMM

// Weight tile (128 x 32) dequantized to bf16: thread t decodes row t / 2, k0 + 16 (t % 2) .. +15.
// Rows >= N are zero-filled.
template <int QT>
__device__ __forceinline__ void q_dequant_w_tile(GemmTile& dst, const ReelMatmulParams& p, int n0,
                                                 int k0) {
    constexpr int UB = qt_unit_bytes(QT);
    const int r = threadIdx.x >> 1, kh = (threadIdx.x & 1) * 16;
    const int n = n0 + r, k = k0 + kh;
    float w[16];
    if (n < p.N) {
        const uint8_t* u = reinterpret_cast<const uint8_t*>(p.w) + (int64_t)n * p.w_stride +
                           (int64_t)(k >> 8) * UB;
        q_decode<QT, 16>(u, k & 255, w);
    } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) w[i] = 0.0f;
    }
    uint32_t packed[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(w[2 * i], w[2 * i + 1]);  // .x = low half
        packed[i] = *reinterpret_cast<const uint32_t*>(&h);
    }
    // &dst[r][kh]: byte offset 80 r + 2 kh with kh in {0, 16}: 16-byte aligned.
    uint4* d = reinterpret_cast<uint4*>(&dst[r][kh]);
    d[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    d[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
}

// A stage: the x tile by cp.async (its group committed first, so the copy overlaps the
// decoding), then the weight tile dequantized by the threads with plain stores.
template <int QT>
struct QuantTiles {
    const ReelMatmulParams& p;
    __device__ __forceinline__ void operator()(GemmTile& a, GemmTile& b, int m_blk, int n_blk,
                                               int k0) const {
        gemm_load_tile(a, reinterpret_cast<const __nv_bfloat16*>(p.x), p.x_stride, m_blk, p.M, k0, p.K);
        cp_async_commit();
        q_dequant_w_tile<QT>(b, p, n_blk, k0);
    }
};

// K % 32 == 0 (launcher), so K tiles are always full.
template <int QT>
__device__ __forceinline__ void qgemm(const ReelMatmulParams& p) {
    gemm_block(p, QuantTiles<QT>{p}, p.K / REEL_GEMM_BK);
}

extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) qgemm_q8_0(ReelMatmulParams p) {
    qgemm<REEL_QT_Q8_0>(p);
}
extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) qgemm_q4_k(ReelMatmulParams p) {
    qgemm<REEL_QT_Q4_K>(p);
}
extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) qgemm_q6_k(ReelMatmulParams p) {
    qgemm<REEL_QT_Q6_K>(p);
}

// ---------------------------------------------------------------------------------------------
// Embedding: grid = tokens, block = 256; thread i decodes weights 8i .. 8i + 7 of the row (then
// 8(i + 256) ..), D a multiple of 32.

template <int QT>
__device__ __forceinline__ void embedding_quant_row(const uint8_t* row, int e0, float* w) {
    constexpr int UB = qt_unit_bytes(QT);
    q_decode<QT, 8>(row + (int64_t)(e0 >> 8) * UB, e0 & 255, w);
}

extern "C" __global__ void __launch_bounds__(256) embedding_quant(ReelEmbeddingQuantParams p) {
    const int t = blockIdx.x;
    if (t >= p.tokens) return;
    const int id = reinterpret_cast<const int*>(p.ids)[t];
    const bool ok = id >= 0 && id < p.vocab;
    const uint8_t* row = reinterpret_cast<const uint8_t*>(p.table) + (int64_t)(ok ? id : 0) * p.row_bytes;
    const int64_t dst = (int64_t)t * p.out_stride;
    for (int e0 = threadIdx.x * 8; e0 < p.dim; e0 += blockDim.x * 8) {
        float w[8];
        if (!ok) {
#pragma unroll
            for (int i = 0; i < 8; ++i) w[i] = 0.0f;
        } else if (p.qtype == REEL_QT_Q8_0) {
            embedding_quant_row<REEL_QT_Q8_0>(row, e0, w);
        } else if (p.qtype == REEL_QT_Q4_K) {
            embedding_quant_row<REEL_QT_Q4_K>(row, e0, w);
        } else {
            embedding_quant_row<REEL_QT_Q6_K>(row, e0, w);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) store_f(p.out, dst + e0 + i, p.out_dt, w[i]);
    }
}
