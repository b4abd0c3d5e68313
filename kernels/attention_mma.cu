// Flash attention on tensor cores (bf16 q/k/v/out, f32 accumulation and softmax), sm_80+:
//  - attention_paged_prefill_mma: causal GQA prefill of q [T, Hq, 128] over the paged pool for
//    a step of B sequences (each its last n_b positions, ReelPagedKv), bottom-right mask per
//    sequence. A CTA owns 64 rows r = t * G + g of one KV head and one sequence (G = Hq / Hkv,
//    as attention_paged_* in attention.cu), so each K/V tile staged in smem serves the whole
//    group; heavy (late) row tiles are scheduled first.
//  - attention_varlen_mma: non-causal attention inside segments [cu[s], cu[s+1]) of q, k, v
//    [N, H, 80] (ViT windows and full-attention slices), grid (q tiles, segment, head).
// The f32/f16 paths and other head dims stay on the CUDA-core kernels in attention.cu.
//
// Per CTA: 4 warps, warp w owns query rows 16 w .. 16 w + 15 of the 64-row tile. Q is staged
// once (cp.async) and held as A fragments in registers; K/V tiles of 64 keys are gathered row
// by row (page by page for the pool) with cp.async.cg into 2 smem stages, so tile n + 1 loads
// while tile n computes. Per tile: S = Q K^T (mma.sync m16n8k16, f32), scores scaled into the
// log2 domain (scale * log2 e, one multiply), online softmax (running max m and sum l per row,
// exp2f), then O = alpha O + P V. Keys past a row's causal end or the segment end get -inf; the
// per-element mask runs only on tiles that straddle a bound (fa_tile_masked), and tiles wholly
// above the diagonal are never visited (fa_kv_tiles). Rows past the end are computed on zero Q
// and never stored.
//
// Numerics: P is split into bf16 hi + lo parts (hi = bf16(p), lo = bf16(p - hi)) and both are
// multiplied with V, so P V carries ~16 mantissa bits of P instead of 8. The CPU reference is
// f64 softmax with one rounding at the output, and the harness bound (2^-6 relative with a
// floor of 1e-3 of the largest output) is dominated by near-zero outputs; a numpy model of
// this kernel on the harness shapes gives 0.58-1.0 with a single bf16 P (HF eager also rounds
// the normalized P to bf16, FlashAttention the unnormalized one) and 0.0077 with hi + lo,
// one output ulp. The second P V mma costs 1/3 more tensor work. l is the sum of the f32 p.
//
// mma.sync.m16n8k16.row.col bf16 fragments (PTX ISA), lane = 4 g + c (g = lane / 4, c = lane % 4):
//   A 16x16 (row-major, 4 regs of bf16x2): a0 = (row g, k 2c..2c+1), a1 = (g + 8, 2c..),
//       a2 = (g, 2c + 8..), a3 = (g + 8, 2c + 8..)                  [mma_a_row/mma_a_col]
//   B 16x8 (k x n, 2 regs): b0 = (k 2c..2c+1, n g), b1 = (k 2c + 8.., n g) [mma_b_k/mma_b_n]
//   C 16x8 (4 f32): c0, c1 = (row g, cols 2c, 2c + 1), c2, c3 = (row g + 8, same cols)
//                                                                  [mma_c_row/mma_c_col]
// Lower 16 bits of a bf16x2 register hold the lower k (or col) index.
// How each operand is fed:
//   S = Q K^T: A = Q rows (ldmatrix.x4 of the 16x16 block at rows 16 w, cols 16 ks:
//     ldsm_a_row/col); B(k = d, n = key) = K[key][d], key-major with d contiguous, exactly the
//     gemm's W layout: one ldmatrix.x4 at (ldsm_b_row, ldsm_b_col) gives b0, b1 of two n-tiles.
//   Each thread's C elements of S: row g (c0, c1) and g + 8 (c2, c3), keys nt * 8 + 2c + {0,1}.
//     Row max/sum need only the 4 lanes of a quad (same g): shuffle-xor 1 and 2.
//   P V: A = P for keys 16 kk..: the C layout of S n-tiles 2 kk and 2 kk + 1 is the A layout
//     (a0 = S[2kk] c0,c1; a1 = S[2kk] c2,c3; a2 = S[2kk+1] c0,c1; a3 = S[2kk+1] c2,c3:
//     fa_p_ntile/fa_p_elem), so P never leaves registers. B(k = key, n = d) = V[key][d] is
//     k-major, so ldmatrix .trans (ldsm_vt_row/col) delivers b0, b1 of two d-tiles.
//   O: C layout, d-tiles of 8: thread holds rows g, g + 8 and cols nt * 8 + 2c + {0, 1}.
// Every map above is an index_math.h function checked in kernels/host_test/index_check.cpp.
//
// Shared memory (dynamic, > 48 KB: the launcher opts in): Q 64 x (d + 8) + 2 x (K, V) 64 x
// (d + 8) bf16 = 85 KB at d = 128, 55 KB at d = 80: two CTAs per SM on sm_90 (both d) and on
// sm_80 at d = 80, one on sm_80 at d = 128 and on sm_86/89. Registers (ptxas 13.0, no spills):
// 235 (d = 128) and 176 (d = 80) on sm_90a, 230 and 183 on sm_80; __launch_bounds__(128, 2)
// caps them at 255, and 2 x 128 x 235 fits the 64K register file.
// CPU twins: src/backend/cpu (attention_paged, attention_varlen).
#include "common.cuh"
#include "mma.cuh"

#define BM REEL_FA_BM
#define BN REEL_FA_BN
#define NT REEL_FA_THREADS

__device__ __forceinline__ void fa_ldsm(const void* smem, uint32_t (&r)[4]) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

__device__ __forceinline__ void fa_ldsm_t(const void* smem, uint32_t (&r)[4]) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

// c += a b, m16n8k16, bf16 in, f32 accumulate. b0, b1 are the two B registers.
__device__ __forceinline__ void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two f32 -> bf16x2 (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return l | (h << 16);
}

// Key rows of the paged pool (this KV head, through the page list) or of dense k/v.
struct FaPagedKeys {
    const __nv_bfloat16* pool;
    const int* pages;
    int layer, head, n_pages, page_size, kv_heads;
    template <int D>
    __device__ __forceinline__ const __nv_bfloat16* row(int j, int kv) const {
        return pool + paged_row_elem(pages, j, layer, kv, head, n_pages, page_size, kv_heads, D);
    }
};

struct FaDenseKeys {
    const __nv_bfloat16* k;
    const __nv_bfloat16* v;
    int64_t k_stride, v_stride;
    int head;
    template <int D>
    __device__ __forceinline__ const __nv_bfloat16* row(int j, int kv) const {
        return kv == 0 ? k + (int64_t)j * k_stride + (int64_t)head * D
                       : v + (int64_t)j * v_stride + (int64_t)head * D;
    }
};

// Query rows of a paged CTA (one sequence): tile row i is r = r0 + i -> the sequence's token
// r / G (step row t0 + r / G), q head kvh * G + r % G.
struct FaPagedRows {
    int r0, rows, group, kv_head, kv_len, tokens, t0;
    int64_t q_stride, o_stride;
    __device__ __forceinline__ bool valid(int i) const { return r0 + i < rows; }
    __device__ __forceinline__ int64_t off(int i, int64_t stride) const {
        const int r = min(r0 + i, rows - 1);
        return ((int64_t)t0 + attention_row_token(r, group)) * stride +
               (int64_t)attention_row_qhead(r, group, kv_head) * (REEL_FA_PAGED_D);
    }
    // Rows past the end take the last row's bound, so they stay finite and unmasked enough.
    __device__ __forceinline__ int kend(int i) const {
        return attention_causal_end(kv_len, tokens, attention_row_token(min(r0 + i, rows - 1), group));
    }
};

// Query rows of a varlen CTA: tile row i is token t0 + i of a segment ending at ce.
struct FaSegRows {
    int t0, ce, head;
    int64_t q_stride, o_stride;
    __device__ __forceinline__ bool valid(int i) const { return t0 + i < ce; }
    __device__ __forceinline__ int64_t off(int i, int64_t stride) const {
        return (int64_t)min(t0 + i, ce - 1) * stride + (int64_t)head * (REEL_FA_VARLEN_D);
    }
    __device__ __forceinline__ int kend(int) const { return ce; }
};

// The flash loop for one CTA: keys [kb, kend_max) in tiles of BN; row i sees keys < kend(i);
// kend_min is the smallest bound over the CTA's rows.
template <int D, typename Keys, typename Rows>
__device__ __forceinline__ void fa_cta(const ReelAttentionParams& p, const Keys& keys, const Rows& rows,
                                       int kb, int kend_min, int kend_max) {
    constexpr int LDS = D + REEL_FA_PAD;
    constexpr int CH = D / 8;  // 16-byte chunks per row
    static_assert(D % 16 == 0, "head_dim must be a multiple of 16");
    static_assert((BM * CH) % NT == 0 && (BN * CH) % NT == 0, "tile chunks must divide evenly");
    extern __shared__ __align__(16) unsigned char fa_smem_raw[];
    __nv_bfloat16* const Qs = reinterpret_cast<__nv_bfloat16*>(fa_smem_raw);
    __nv_bfloat16* const Ks = Qs + BM * LDS;      // [2][BN][LDS]
    __nv_bfloat16* const Vs = Ks + 2 * BN * LDS;  // [2][BN][LDS]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const __nv_bfloat16* q = reinterpret_cast<const __nv_bfloat16*>(p.q);
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out);

    // Q tile; rows past the end are zero-filled.
#pragma unroll
    for (int it = 0; it < BM * CH / NT; ++it) {
        const int i = tid + it * NT;
        const int r = fa_chunk_row(i, D), c = fa_chunk_col(i, D);
        cp_async16(Qs + r * LDS + c, q + rows.off(r, p.q_stride) + c, rows.valid(r));
    }
    cp_async_commit();

    const int ntiles = fa_kv_tiles(kb, kend_max, BN);
    // K/V tile starting at key j0 into stage st; keys >= kend_max are zero-filled (they are
    // masked, and zero V keeps 0 * V finite).
    auto load_kv = [&](int st, int j0) {
#pragma unroll
        for (int it = 0; it < BN * CH / NT; ++it) {
            const int i = tid + it * NT;
            const int r = fa_chunk_row(i, D), c = fa_chunk_col(i, D);
            const int j = j0 + r;
            const bool ok = j < kend_max;
            const int jj = ok ? j : kb;  // a valid address even when nothing is read
            cp_async16(Ks + (st * BN + r) * LDS + c, keys.template row<D>(jj, 0) + c, ok);
            cp_async16(Vs + (st * BN + r) * LDS + c, keys.template row<D>(jj, 1) + c, ok);
        }
    };
    if (ntiles > 0) load_kv(0, kb);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // Q fragments for the warp's 16 rows, all D / 16 k-steps.
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
        fa_ldsm(Qs + (warp * 16 + ldsm_a_row(lane)) * LDS + ks * 16 + ldsm_a_col(lane), qf[ks]);

    const int g = lane / 4;
    const int kend_r[2] = {rows.kend(warp * 16 + g), rows.kend(warp * 16 + g + 8)};
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[nt][e] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sl2 = p.scale_log2;

    for (int nb = 0; nb < ntiles; ++nb) {
        const int st = nb & 1, j0 = kb + nb * BN;
        if (nb + 1 < ntiles) {
            // Stage st ^ 1 was last read in iteration nb - 1, which ended with a barrier.
            load_kv(st ^ 1, j0 + BN);
            cp_async_commit();
            cp_async_wait<1>();  // tile nb has landed; nb + 1 may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __nv_bfloat16* Kt = Ks + st * BN * LDS;
        const __nv_bfloat16* Vt = Vs + st * BN * LDS;

        // S = Q K^T: 16 rows x BN keys per warp.
        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                uint32_t b[4];
                fa_ldsm(Kt + (np * 16 + ldsm_b_row(lane)) * LDS + ks * 16 + ldsm_b_col(lane), b);
                fa_mma(s[2 * np], qf[ks], b[0], b[1]);
                fa_mma(s[2 * np + 1], qf[ks], b[2], b[3]);
            }
        }

        // Scores in the log2 domain; -inf past each row's bound on straddling tiles.
        const bool masked = fa_tile_masked(j0, BN, kend_min);
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[nt][e] * sl2;
                if (masked && j0 + nt * 8 + mma_c_col(lane, e) >= kend_r[e >> 1]) x = -INFINITY;
                s[nt][e] = x;
            }

        // Online softmax, rows g (h = 0) and g + 8 (h = 1).
        float mu[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[h], mx);
            // A row with nothing visible yet keeps max -inf: use 0 so that no -inf - -inf = NaN
            // appears (alpha and p are then exp2(-inf) = 0).
            mu[h] = m_new == -INFINITY ? 0.0f : m_new;
            const float alpha = exp2f(m[h] - mu[h]);
            m[h] = m_new;
            l[h] *= alpha;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                o[nt][2 * h] *= alpha;
                o[nt][2 * h + 1] *= alpha;
            }
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float pe = exp2f(s[nt][e] - mu[e >> 1]);
                l[e >> 1] += pe;  // this thread's partial row sum; the quad sums at the end
                s[nt][e] = pe;
            }

        // O += P V with P = hi + lo (bf16 each).
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t ph[4], pl[4];
#pragma unroll
            for (int reg = 0; reg < 4; ++reg) {
                const float x0 = s[fa_p_ntile(kk, reg)][fa_p_elem(reg, 0)];
                const float x1 = s[fa_p_ntile(kk, reg)][fa_p_elem(reg, 1)];
                ph[reg] = fa_pack(x0, x1);
                const float2 hv = bf16x2_to_f32(ph[reg]);
                pl[reg] = fa_pack(x0 - hv.x, x1 - hv.y);  // exact in f32
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                fa_ldsm_t(Vt + (kk * 16 + ldsm_vt_row(lane)) * LDS + dp * 16 + ldsm_vt_col(lane), b);
                fa_mma(o[2 * dp], ph, b[0], b[1]);
                fa_mma(o[2 * dp], pl, b[0], b[1]);
                fa_mma(o[2 * dp + 1], ph, b[2], b[3]);
                fa_mma(o[2 * dp + 1], pl, b[2], b[3]);
            }
        }
        __syncthreads();  // stage st is overwritten by the load issued next iteration
    }

    // Epilogue: O / l (the quad's partial sums added first), one bf16 rounding, 4-byte stores.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float lt = l[h];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        const int i = warp * 16 + g + 8 * h;
        if (!rows.valid(i)) continue;
        __nv_bfloat16* orow = out + rows.off(i, p.out_stride);
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            const int c = nt * 8 + mma_c_col(lane, 2 * h);
            *reinterpret_cast<uint32_t*>(orow + c) = fa_pack(o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
        }
    }
}

// grid = (Hkv, qo_tiles_bound(T, B, G, 64)); block = 128; dyn smem = (64 + 4 * 64) * 136 * 2 B.
// x (fastest in launch order) is the KV head, so the heavy-first order of the row tiles holds
// across all heads: the last wave is the light (early-token) tiles of every head. y counts the
// step's row tiles (qo_tile) backwards; CTAs past the last tile exit.
extern "C" __global__ void __launch_bounds__(NT, 2) attention_paged_prefill_mma(ReelAttentionParams p) {
    const int kvh = blockIdx.x;
    const int G = p.q_heads / p.kv_heads;
    const int* qo = reinterpret_cast<const int*>(p.kv.qo_indptr);
    const int total = qo_tiles_total(qo, p.kv.batch, G, BM);
    if ((int)blockIdx.y >= total) return;  // uniform per CTA, before any barrier
    int b = 0, r0 = 0;
    qo_tile(qo, p.kv.batch, G, BM, fa_mblock(blockIdx.y, total), &b, &r0);
    const int* indptr = reinterpret_cast<const int*>(p.kv.indptr);
    const int pbeg = indptr[b], npages = indptr[b + 1] - indptr[b];
    const int T = qo[b + 1] - qo[b];
    const int kv_len =
        paged_kv_len(npages, p.kv.page_size, reinterpret_cast<const int*>(p.kv.last_page_len)[b]);
    FaPagedRows rows{r0, T * G, G, kvh, kv_len, T, qo[b], p.q_stride, p.out_stride};
    const int kend_min = rows.kend(0), kend_max = rows.kend(BM - 1);
    FaPagedKeys keys{reinterpret_cast<const __nv_bfloat16*>(p.kv.pool),
                     reinterpret_cast<const int*>(p.kv.indices) + pbeg,
                     p.kv.layer, kvh, p.kv.n_pages, p.kv.page_size, p.kv.kv_heads};
    fa_cta<REEL_FA_PAGED_D>(p, keys, rows, 0, kend_min, kend_max);
}

// grid = (ceil(max_seqlen / 64), segments, heads); block = 128; dyn smem = 320 * 88 * 2 B.
extern "C" __global__ void __launch_bounds__(NT, 2) attention_varlen_mma(ReelAttentionParams p) {
    const int seg = blockIdx.y, head = blockIdx.z;
    const int* cu = reinterpret_cast<const int*>(p.cu_seqlens);
    const int cb = cu[seg], ce = cu[seg + 1];
    const int t0 = cb + blockIdx.x * BM;
    if (t0 >= ce) return;  // whole CTA past this segment (uniform: no barrier skipped)
    FaSegRows rows{t0, ce, head, p.q_stride, p.out_stride};
    FaDenseKeys keys{reinterpret_cast<const __nv_bfloat16*>(p.k),
                     reinterpret_cast<const __nv_bfloat16*>(p.v), p.k_stride, p.v_stride, head};
    fa_cta<REEL_FA_VARLEN_D>(p, keys, rows, cb, ce, ce);
}
