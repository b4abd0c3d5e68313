// Prefill matmul on tensor cores: out[M, N] = x[M, K] @ w[N, K]^T (+ bias), bf16 operands,
// f32 accumulation, rounded once at the store. Both operands are K-major ("TN"), which is what
// mma.sync.m16n8k16.row.col wants, so neither needs a transpose.
// Design ("simple and correct first"): CTA 128 x 128 x 32, 8 warps as 2 (m) x 4 (n), warp tile
// 64 x 32 = 4 x 4 mma tiles (64 f32 accumulators per thread); 2-stage cp.async.cg 16-byte
// copies with zero-fill for the M/N/K tails; smem rows padded to 40 bf16 (80 B) so the 8 row
// addresses of each ldmatrix phase hit distinct bank groups; ldmatrix.x4 for A and B.
// Requires K % 8 == 0 and 16-byte aligned rows (the launcher checks; others use the GEMV path).
// Fragment and address maps live in index_math.h and are checked on the host.
// grid = (ceil(N / 128), ceil(M / 128)); block = 256; static smem 40 KB.
#include "common.cuh"
#include "mma.cuh"

#define BM REEL_GEMM_BM
#define BN REEL_GEMM_BN
#define BK REEL_GEMM_BK
#define LDS REEL_GEMM_LDS

// Copies one BM x BK (or BN x BK) tile of a K-major matrix into smem; rows >= rows_total and
// k >= K are zero-filled. 512 chunks of 16 B, two per thread.
__device__ __forceinline__ void load_tile(__nv_bfloat16 (*dst)[LDS], const __nv_bfloat16* src,
                                          int64_t stride, int row0, int rows_total, int k0, int K) {
#pragma unroll
    for (int it = 0; it < (BM * BK / 8) / REEL_GEMM_THREADS; ++it) {
        const int i = threadIdx.x + it * REEL_GEMM_THREADS;
        const int r = gemm_chunk_row(i), c = gemm_chunk_col(i);
        const bool valid = row0 + r < rows_total && k0 + c < K;
        const __nv_bfloat16* g = valid ? src + (int64_t)(row0 + r) * stride + k0 + c : src;
        cp_async16(&dst[r][c], g, valid);
    }
}

extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) gemm_bf16_mma(ReelMatmulParams p) {
    __shared__ __align__(16) __nv_bfloat16 As[2][BM][LDS];
    __shared__ __align__(16) __nv_bfloat16 Bs[2][BN][LDS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 4, wn = warp % 4;
    const int m_blk = blockIdx.y * BM, n_blk = blockIdx.x * BN;
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x);
    const __nv_bfloat16* w = reinterpret_cast<const __nv_bfloat16*>(p.w);

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int ktiles = (p.K + BK - 1) / BK;
    load_tile(As[0], x, p.x_stride, m_blk, p.M, 0, p.K);
    load_tile(Bs[0], w, p.w_stride, n_blk, p.N, 0, p.K);
    cp_async_commit();

    for (int kt = 0; kt < ktiles; ++kt) {
        const int st = kt & 1;
        if (kt + 1 < ktiles) {
            // The other stage was last read in iteration kt - 1, which ended with a barrier.
            load_tile(As[st ^ 1], x, p.x_stride, m_blk, p.M, (kt + 1) * BK, p.K);
            load_tile(Bs[st ^ 1], w, p.w_stride, n_blk, p.N, (kt + 1) * BK, p.K);
            cp_async_commit();
            cp_async_wait<1>();  // tile kt has landed; kt + 1 may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
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
