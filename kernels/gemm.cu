// Prefill matmul on tensor cores (mma.sync, sm_80+). gemm_bf16_mma (end of the file) is the
// default; gemm_bf16_128x128 / gemm_bf16_128x256 are candidates behind REEL_GEMM (gemm.rs), with
// fused epilogues:
//   y = round(x[M, K] @ w[N, K]^T + bias), then out = epi(y) (REEL_EPI_* in params.h).
// bf16 operands, f32 accumulation. Both operands are K-major ("TN"), which is what
// mma.sync.m16n8k16.row.col wants, so neither needs a transpose.
//
// Two tile configurations of the candidates (src/backend/cuda/gemm.rs):
//   gemm_bf16_128x128: CTA 128 x 128 x 32, 8 warps as 2 (m) x 4 (n) of 64 x 32, 4 stages;
//   gemm_bf16_128x256: CTA 128 x 256 x 32, 8 warps as 2 (m) x 4 (n) of 64 x 64, 3 stages.
// Operands reach smem by 16-byte cp.async.cg (zero-filled past M/N, and byte-exact past K:
// the src-size of the last chunk, gemm_chunk_bytes, so K needs no padding as long as rows are
// 16-byte aligned); smem rows are padded to BK + 8 bf16 (80 B: the 8 row addresses of each
// ldmatrix phase fall in distinct bank groups). A multi-stage ring: at iteration kt the CTA waits
// for stage kt, then refills the stage read at kt - 1 with k-tile kt + STAGES - 1 (one barrier
// per k-tile orders both). CTAs walk the tiles in groups of REEL_GEMM_GROUP_M row blocks
// (gemm_tile_of) so W tiles are shared in L2.
//
// Epilogue (bf16 out): each thread writes round(acc + bias) (SwiGLU: the finished output, gate
// and up being n-tiles 2i and 2i + 1 of the same thread, swiglu_feature) into a smem tile that
// reuses the pipeline buffers; then the CTA streams the tile out in 16-byte chunks, reading the
// residual (ADD) in the same chunks and applying GELU / ADD there. f32 outputs are written
// directly from the registers. Guarded at the M and N tails.
// grid = tiles_m * tiles_n CTAs (1-D); block = 256; dynamic smem (the launcher opts in).
// Fragment and address maps: index_math.h, checked in kernels/host_test/index_check.cpp.
#include "common.cuh"
#include "epilogue.cuh"
#include "mma.cuh"

template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct GemmCfg {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, STAGES = STAGES_;
    static constexpr int THREADS = WM * WN * 32;
    static constexpr int WARP_M = BM / WM, WARP_N = BN / WN;
    static constexpr int MI = WARP_M / 16, NI = WARP_N / 8;
    static constexpr int LDS = BK + 8;                       // smem row stride (bf16)
    static constexpr int STAGE_ELEMS = (BM + BN) * LDS;
    static constexpr int PIPE_BYTES = STAGES * STAGE_ELEMS * 2;
    static constexpr int CH = BK / 8;                        // 16-byte chunks per tile row
    static_assert(WARP_N % 16 == 0 && WARP_M % 16 == 0, "warp tiles are whole ldmatrix.x4 blocks");
    static_assert((BM * CH) % THREADS == 0 && (BN * CH) % THREADS == 0, "chunks divide evenly");
};

// Output tile staged in smem: BM rows of (out columns + 8) bf16 (16-byte aligned rows, and
// the 8 row groups of a warp's pair stores land in distinct banks).
template <class C>
__host__ __device__ constexpr int gemm_stage_lds(bool swiglu) { return (swiglu ? C::BN / 2 : C::BN) + 8; }

template <class C>
__host__ __device__ constexpr int gemm_smem_bytes() {
    return C::PIPE_BYTES > C::BM * gemm_stage_lds<C>(false) * 2 ? C::PIPE_BYTES
                                                                : C::BM * gemm_stage_lds<C>(false) * 2;
}

// One stage: A rows [m0, m0 + BM) and the tile's B rows, k in [k0, k0 + BK).
template <class C>
__device__ __forceinline__ void gemm_load_stage(const ReelGemmParams& p, __nv_bfloat16* As, __nv_bfloat16* Bs,
                                                int m0, int tn, int k0, bool swiglu) {
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x);
    const __nv_bfloat16* w = reinterpret_cast<const __nv_bfloat16*>(p.w);
#pragma unroll
    for (int it = 0; it < C::BM * C::CH / C::THREADS; ++it) {
        const int i = threadIdx.x + it * C::THREADS;
        const int r = i / C::CH, c = (i % C::CH) * 8;
        const int bytes = m0 + r < p.M ? gemm_chunk_bytes(k0, c, p.K) : 0;
        const __nv_bfloat16* g = bytes > 0 ? x + (int64_t)(m0 + r) * p.x_stride + k0 + c : x;
        cp_async16_n(As + r * C::LDS + c, g, bytes);
    }
    const int half = p.N / 2;
#pragma unroll
    for (int it = 0; it < C::BN * C::CH / C::THREADS; ++it) {
        const int i = threadIdx.x + it * C::THREADS;
        const int r = i / C::CH, c = (i % C::CH) * 8;
        int wr;
        bool ok;
        if (swiglu) {
            const int f = swiglu_feature(tn, C::BN, r);
            ok = f < half;
            wr = f + (swiglu_is_up(r) ? half : 0);
        } else {
            wr = tn * C::BN + r;
            ok = wr < p.N;
        }
        const int bytes = ok ? gemm_chunk_bytes(k0, c, p.K) : 0;
        const __nv_bfloat16* g = bytes > 0 ? w + (int64_t)wr * p.w_stride + k0 + c : w;
        cp_async16_n(Bs + r * C::LDS + c, g, bytes);
    }
}

template <class C>
__device__ __forceinline__ void gemm_mma(const ReelGemmParams& p) {
    extern __shared__ __align__(16) unsigned char gemm_smem[];
    __nv_bfloat16* const pipe = reinterpret_cast<__nv_bfloat16*>(gemm_smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / C::WN, wn = warp % C::WN;
    const bool swiglu = p.epi == REEL_EPI_SWIGLU;
    int tm, tn;
    gemm_tile_of(blockIdx.x, p.tiles_m, p.tiles_n, REEL_GEMM_GROUP_M, &tm, &tn);
    const int m0 = tm * C::BM;
    const int ktiles = (p.K + C::BK - 1) / C::BK;

    float acc[C::MI][C::NI][4];
#pragma unroll
    for (int i = 0; i < C::MI; ++i)
#pragma unroll
        for (int j = 0; j < C::NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Prologue: k-tiles 0 .. STAGES - 2, one cp.async group each (empty past the end, so the
    // group count stays uniform and wait_group<STAGES - 2> always means "stage kt landed").
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; ++s) {
        if (s < ktiles) {
            __nv_bfloat16* st = pipe + s * C::STAGE_ELEMS;
            gemm_load_stage<C>(p, st, st + C::BM * C::LDS, m0, tn, s * C::BK, swiglu);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<C::STAGES - 2>();
        __syncthreads();  // stage kt visible to all; every warp is done with stage kt - 1
        {
            const int nk = kt + C::STAGES - 1;
            if (nk < ktiles) {
                __nv_bfloat16* st = pipe + (nk % C::STAGES) * C::STAGE_ELEMS;
                gemm_load_stage<C>(p, st, st + C::BM * C::LDS, m0, tn, nk * C::BK, swiglu);
            }
            cp_async_commit();
        }
        const __nv_bfloat16* As = pipe + (kt % C::STAGES) * C::STAGE_ELEMS;
        const __nv_bfloat16* Bs = As + C::BM * C::LDS;
#pragma unroll
        for (int kk = 0; kk < C::BK; kk += 16) {
            uint32_t a[C::MI][4], b[C::NI][2];
#pragma unroll
            for (int mi = 0; mi < C::MI; ++mi) {
                const int r = wm * C::WARP_M + mi * 16 + ldsm_a_row(lane);
                ldsm_x4(As + r * C::LDS + kk + ldsm_a_col(lane), a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
            }
#pragma unroll
            for (int nj = 0; nj < C::NI / 2; ++nj) {
                const int r = wn * C::WARP_N + nj * 16 + ldsm_b_row(lane);
                ldsm_x4(Bs + r * C::LDS + kk + ldsm_b_col(lane), b[2 * nj][0], b[2 * nj][1],
                        b[2 * nj + 1][0], b[2 * nj + 1][1]);
            }
#pragma unroll
            for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < C::NI; ++ni) mma_bf16(acc[mi][ni], a[mi], b[ni]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the output staging tile

    const int half = p.N / 2;
    const int n_out = swiglu ? half : p.N;           // output columns
    const int tile_cols = swiglu ? C::BN / 2 : C::BN;
    const int c0 = tn * tile_cols;                   // first output column of the tile
    const bool has_bias = p.bias_dt != REEL_DT_NONE;

    if (p.out_dt != REEL_DT_BF16) {
        // f32 (or f16) output: straight from the registers, guarded.
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = m0 + wm * C::WARP_M + mi * 16 + mma_c_row(lane, e);
                    const int tc = wn * C::WARP_N + ni * 8 + mma_c_col(lane, e);
                    if (swiglu && (ni & 1)) continue;
                    const int col = swiglu ? c0 + (tc / 16) * 8 + tc % 8 : c0 + tc;
                    if (row >= p.M || col >= n_out) continue;
                    float y = acc[mi][ni][e];
                    if (has_bias) y += load_f(p.bias, col, p.bias_dt);
                    y = round_dt(y, p.out_dt);
                    float v;
                    if (swiglu) {
                        float u = acc[mi][ni + 1 < C::NI ? ni + 1 : ni][e];
                        if (has_bias) u += load_f(p.bias, col + half, p.bias_dt);
                        v = epi_swiglu(y, round_dt(u, p.out_dt), p.out_dt);
                    } else if (p.epi == REEL_EPI_GELU) {
                        v = epi_gelu(y);
                    } else if (p.epi == REEL_EPI_ADD) {
                        v = y + load_f(p.res, (int64_t)row * p.res_stride + col, p.res_dt);
                    } else {
                        v = y;
                    }
                    store_f(p.out, (int64_t)row * p.out_stride + col, p.out_dt, v);
                }
        return;
    }

    // bf16 output. Phase 1: registers -> smem tile (round(acc + bias), or the SwiGLU result).
    const int slds = gemm_stage_lds<C>(swiglu);
    __nv_bfloat16* const Cs = pipe;
#pragma unroll
    for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                if (swiglu && (ni & 1)) continue;
                const int r = wm * C::WARP_M + mi * 16 + mma_c_row(lane, 2 * h);
                const int tc = wn * C::WARP_N + ni * 8 + mma_c_col(lane, 2 * h);  // even
                float v[2];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int oc = swiglu ? (tc / 16) * 8 + tc % 8 + j : tc + j;  // tile out col
                    const int col = c0 + oc < n_out ? c0 + oc : n_out - 1;        // clamp the tail
                    float y = acc[mi][ni][2 * h + j];
                    if (has_bias) y += load_f(p.bias, col, p.bias_dt);
                    y = round_bf16(y);
                    if (swiglu) {
                        float u = acc[mi][ni + 1 < C::NI ? ni + 1 : ni][2 * h + j];
                        if (has_bias) u += load_f(p.bias, col + half, p.bias_dt);
                        y = epi_swiglu(y, round_bf16(u), REEL_DT_BF16);
                    }
                    v[j] = y;
                }
                const int oc = swiglu ? (tc / 16) * 8 + tc % 8 : tc;
                *reinterpret_cast<uint32_t*>(Cs + r * slds + oc) =
                    (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[0])) |
                    ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[1])) << 16);
            }
    __syncthreads();

    // Phase 2: 16-byte chunks of the tile -> out (GELU / ADD applied here), guarded.
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out);
    const bool vec_out = (p.out % 16 == 0) && (p.out_stride % 8 == 0);
    const bool vec_res = p.epi == REEL_EPI_ADD && p.res_dt == REEL_DT_BF16 && (p.res % 16 == 0) &&
                         (p.res_stride % 8 == 0);
    const int chunks = C::BM * (tile_cols / 8);
    for (int i = threadIdx.x; i < chunks; i += C::THREADS) {
        const int r = i / (tile_cols / 8), oc = (i % (tile_cols / 8)) * 8;
        const int row = m0 + r, col = c0 + oc;
        if (row >= p.M || col >= n_out) continue;
        float v[8];
        bf16x8_to_f32(*reinterpret_cast<const uint4*>(Cs + r * slds + oc), v);
        const bool full = col + 8 <= n_out;
        if (p.epi == REEL_EPI_GELU) {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = epi_gelu(v[e]);
        } else if (p.epi == REEL_EPI_ADD) {
            const int64_t ro = (int64_t)row * p.res_stride + col;
            if (vec_res && full) {
                float rv[8];
                bf16x8_to_f32(ldg16(reinterpret_cast<const __nv_bfloat16*>(p.res) + ro), rv);
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] += rv[e];
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if (col + e < n_out) v[e] += load_f(p.res, ro + e, p.res_dt);
            }
        }
        const int64_t oo = (int64_t)row * p.out_stride + col;
        if (vec_out && full) {
            uint4 u;
            uint32_t* w = reinterpret_cast<uint32_t*>(&u);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                w[e] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e])) |
                       ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e + 1])) << 16);
            *reinterpret_cast<uint4*>(out + oo) = u;
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (col + e < n_out) out[oo + e] = __float2bfloat16_rn(v[e]);
        }
    }
}

typedef GemmCfg<128, 128, 32, 2, 4, 4> Cfg128x128;
typedef GemmCfg<128, 256, 32, 2, 4, 3> Cfg128x256;

extern "C" __global__ void __launch_bounds__(256, 2) gemm_bf16_128x128(ReelGemmParams p) {
    gemm_mma<Cfg128x128>(p);
}

extern "C" __global__ void __launch_bounds__(256, 1) gemm_bf16_128x256(ReelGemmParams p) {
    gemm_mma<Cfg128x256>(p);
}

// ---- gemm_bf16_mma: the default dense GEMM (mma.cuh's gemm_block, 128 x 128 x 32, 2 stages) ----
// Both tiles of a stage through gemm_load_tile_any, so any K (K tails zero-filled) and any row
// stride or base alignment (the ViT MLP's K = 3420 rows are 8-byte aligned) runs on tensor
// cores. grid = (ceil(N / 128), ceil(M / 128)); block = REEL_GEMM_THREADS; static smem 40 KB.
struct Bf16AnyTiles {
    const ReelMatmulParams& p;
    __device__ __forceinline__ void operator()(GemmTile& a, GemmTile& b, int m_blk, int n_blk,
                                               int k0) const {
        gemm_load_tile_any(a, reinterpret_cast<const __nv_bfloat16*>(p.x), p.x_stride, m_blk, p.M, k0, p.K);
        gemm_load_tile_any(b, reinterpret_cast<const __nv_bfloat16*>(p.w), p.w_stride, n_blk, p.N, k0, p.K);
        cp_async_commit();
    }
};

extern "C" __global__ void __launch_bounds__(REEL_GEMM_THREADS) gemm_bf16_mma(ReelMatmulParams p) {
    gemm_block(p, Bf16AnyTiles{p}, (p.K + REEL_GEMM_BK - 1) / REEL_GEMM_BK);
}
