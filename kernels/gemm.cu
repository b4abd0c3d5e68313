// Prefill matmul on tensor cores: out[M, N] = x[M, K] @ w[N, K]^T (+ bias), bf16 operands,
// f32 accumulation, rounded once at the store. Both operands are K-major ("TN"), which is what
// mma.sync.m16n8k16.row.col wants, so neither needs a transpose. The block GEMM (tiling, k-loop,
// epilogue) is mma.cuh's gemm_block; this file copies both tiles of a stage with 2-stage
// cp.async.cg 16-byte copies, zero-filled for the M/N/K tails.
// Requires K % 8 == 0 and 16-byte aligned rows (the launcher checks; others use the GEMV path).
// Fragment and address maps live in index_math.h and are checked on the host.
// grid = (ceil(N / 128), ceil(M / 128)); block = 256; static smem 40 KB.
#include "common.cuh"
#include "mma.cuh"

// Both tiles of a stage by cp.async, one group.
struct Bf16Tiles {
    const ReelMatmulParams& p;
    __device__ __forceinline__ void operator()(GemmTile& a, GemmTile& b, int m_blk, int n_blk,
                                               int k0) const {
        gemm_load_tile(a, reinterpret_cast<const __nv_bfloat16*>(p.x), p.x_stride, m_blk, p.M, k0, p.K);
        gemm_load_tile(b, reinterpret_cast<const __nv_bfloat16*>(p.w), p.w_stride, n_blk, p.N, k0, p.K);
        cp_async_commit();
    }
};

extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) gemm_bf16_mma(ReelMatmulParams p) {
    gemm_block(p, Bf16Tiles{p}, (p.K + REEL_GEMM_BK - 1) / REEL_GEMM_BK);
}
