// sm_80+ tensor-core building blocks shared by gemm.cu, quant.cu and attention_mma.cu:
// 16-byte cp.async with zero-fill, its group commit/wait, ldmatrix.x4 and mma.sync m16n8k16
// (bf16 in, f32 accumulate); and the 128 x 128 x 32 block GEMM (k-loop and epilogue) of gemm.cu
// and quant.cu, templated on how a stage's tiles reach shared memory. Fragment and address maps
// live in index_math.h.
#pragma once
#include <stdint.h>
#include "common.cuh"

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = valid ? 16 : 0;  // src-size 0: nothing is read, the 16 bytes are zero-filled
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#endif
}

// 16-byte cp.async that reads only the first `bytes` (0..16) of the source and zero-fills the
// rest: K tails of rows that are 16-byte aligned but not a whole number of chunks long.
__device__ __forceinline__ void cp_async16_n(void* smem, const void* gmem, int bytes) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldsm_x4(const void* smem, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s));
#endif
}

// c += a b; a: the 4 A registers, b: the 2 B registers.
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, const uint32_t* b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- Block GEMM: out[M, N] = x[M, K] @ w[N, K]^T (+ bias), one 128 x 128 tile per CTA ----
// CTA tile BM x BN x BK = 128 x 128 x 32; 8 warps as 2 (m) x 4 (n), warp tile 64 x 32 = 4 x 4 mma
// tiles (64 f32 accumulators per thread); 2 smem stages, rows padded to 40 bf16 (80 B) so the 8
// row addresses of each ldmatrix phase hit distinct bank groups; ldmatrix.x4 for A and B.
// grid = (ceil(N / 128), ceil(M / 128)); block = REEL_GEMM_THREADS; static smem 40 KB.
//
// `Tiles` fills one stage: `tiles(A, B, m_blk, n_blk, k0)` puts x[m_blk.., k0..k0+BK) in A and
// w[n_blk.., k0..k0+BK) in B (both K-major, zeros past M, N and K) and commits exactly one
// cp.async group; whatever it writes with plain stores must be written before it returns.
// P is a params struct with M, N, bias, bias_dt, out, out_stride and out_dt.
typedef __nv_bfloat16 GemmTile[REEL_GEMM_BM][REEL_GEMM_LDS];
static_assert(REEL_GEMM_BM == REEL_GEMM_BN, "GemmTile serves both operands");

// Copies one 128 x 32 tile of a K-major matrix into smem; rows >= rows_total and k >= K are
// zero-filled. 512 chunks of 16 B, two per thread.
__device__ __forceinline__ void gemm_load_tile(GemmTile& dst, const __nv_bfloat16* src, int64_t stride,
                                               int row0, int rows_total, int k0, int K) {
#pragma unroll
    for (int it = 0; it < (REEL_GEMM_BM * REEL_GEMM_BK / 8) / REEL_GEMM_THREADS; ++it) {
        const int i = threadIdx.x + it * REEL_GEMM_THREADS;
        const int r = gemm_chunk_row(i), c = gemm_chunk_col(i);
        const bool valid = row0 + r < rows_total && k0 + c < K;
        const __nv_bfloat16* g = valid ? src + (int64_t)(row0 + r) * stride + k0 + c : src;
        cp_async16(&dst[r][c], g, valid);
    }
}

// cp.async of `cp` (4 or 8) bytes through L1 that reads the first `bytes` (0..cp) of the
// source and zero-fills the rest (cp.async.cg takes only 16).
template <int CP>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem, int bytes) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(CP), "r"(bytes));
#endif
}

// gemm_load_tile for any K and any row alignment (rows 2-byte aligned, as every bf16 row is):
// each 8-element chunk keeps its real elements (gemm_chunk_valid) and is copied in pieces of
// the largest granule its global address allows (gemm_granule): one 16-byte cp.async.cg, two
// 8-byte or four 4-byte cp.async.ca, or eight plain 2-byte loads (odd strides), each piece
// reading only its in-range bytes (gemm_piece_bytes). 16-byte aligned rows with K % 8 == 0 take
// exactly gemm_load_tile's copies. Plain stores land before the function returns, as
// gemm_block asks.
__device__ __forceinline__ void gemm_load_tile_any(GemmTile& dst, const __nv_bfloat16* src, int64_t stride,
                                                   int row0, int rows_total, int k0, int K) {
#pragma unroll
    for (int it = 0; it < (REEL_GEMM_BM * REEL_GEMM_BK / 8) / REEL_GEMM_THREADS; ++it) {
        const int i = threadIdx.x + it * REEL_GEMM_THREADS;
        const int r = gemm_chunk_row(i), c = gemm_chunk_col(i);
        const int valid = row0 + r < rows_total ? gemm_chunk_valid(k0 + c, K) : 0;
        const __nv_bfloat16* g = valid > 0 ? src + (int64_t)(row0 + r) * stride + k0 + c : src;
        const int gran = valid > 0 ? gemm_granule((unsigned long long)g) : 16;
        __nv_bfloat16* s = &dst[r][c];
        if (gran == 16) {
            cp_async16_n(s, g, gemm_piece_bytes(valid, 16, 0));
        } else if (gran == 8) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int b = gemm_piece_bytes(valid, 8, j);
                cp_async_ca<8>(s + 4 * j, b > 0 ? g + 4 * j : src, b);
            }
        } else if (gran == 4) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int b = gemm_piece_bytes(valid, 4, j);
                cp_async_ca<4>(s + 2 * j, b > 0 ? g + 2 * j : src, b);
            }
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) s[e] = e < valid ? g[e] : __float2bfloat16_rn(0.0f);
        }
    }
}

template <class P, class Tiles>
__device__ __forceinline__ void gemm_block(const P& p, const Tiles& tiles, int ktiles) {
    __shared__ __align__(16) GemmTile As[2];
    __shared__ __align__(16) GemmTile Bs[2];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 4, wn = warp % 4;
    const int m_blk = blockIdx.y * REEL_GEMM_BM, n_blk = blockIdx.x * REEL_GEMM_BN;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    tiles(As[0], Bs[0], m_blk, n_blk, 0);
    for (int kt = 0; kt < ktiles; ++kt) {
        const int st = kt & 1;
        if (kt + 1 < ktiles) {
            // The other stage was last read in iteration kt - 1, which ended with a barrier.
            tiles(As[st ^ 1], Bs[st ^ 1], m_blk, n_blk, (kt + 1) * REEL_GEMM_BK);
            cp_async_wait<1>();  // stage kt has landed; kt + 1 may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // stage kt (cp.async and plain stores) visible to all
#pragma unroll
        for (int kk = 0; kk < REEL_GEMM_BK; kk += 16) {
            uint32_t a[4][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                const int r = wm * REEL_GEMM_WARP_M + mi * 16 + ldsm_a_row(lane);
                ldsm_x4(&As[st][r][kk + ldsm_a_col(lane)], a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
            }
#pragma unroll
            for (int nj = 0; nj < 2; ++nj) {
                const int r = wn * REEL_GEMM_WARP_N + nj * 16 + ldsm_b_row(lane);
                ldsm_x4(&Bs[st][r][kk + ldsm_b_col(lane)], b[2 * nj][0], b[2 * nj][1],
                        b[2 * nj + 1][0], b[2 * nj + 1][1]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], a[mi], b[ni]);
        }
        __syncthreads();
    }

    // Epilogue: bias in f32, one rounding, guarded scalar stores (tails in M and N).
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = m_blk + wm * REEL_GEMM_WARP_M + mi * 16 + mma_c_row(lane, e);
                const int col = n_blk + wn * REEL_GEMM_WARP_N + ni * 8 + mma_c_col(lane, e);
                if (row < p.M && col < p.N) {
                    float v = acc[mi][ni][e];
                    if (p.bias_dt != REEL_DT_NONE) v += load_f(p.bias, col, p.bias_dt);
                    store_f(p.out, (int64_t)row * p.out_stride + col, p.out_dt, v);
                }
            }
        }
    }
}
