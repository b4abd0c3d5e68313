// Attention on CUDA cores (correct first; an mma.sync version is the next step): any float
// q/k/v/out types (bf16 with 16-byte staging loads, f32/f16 with scalar ones), K/V tiles and
// all math in f32, online softmax in the log2 domain (scores pre-scaled by scale * log2 e).
//  - attention_paged_*: causal GQA attention of q [T, Hq, d] over the paged pool for a step of
//    B sequences (rows qo_indptr[b] .. qo_indptr[b+1] are sequence b's last n_b positions),
//    bottom-right causal mask per sequence. A CTA owns BM rows r = t * G + g of one KV head and
//    one sequence (G = Hq / Hkv; the grid's x walks every sequence's row tiles, qo_tile), so
//    K/V tiles staged in smem serve all heads of the group: decode (n_b = 1, G = 7) is one CTA
//    per (sequence, KV head, split) with rows 0..6 live and row 7 padding. Decode splits each
//    sequence's KV range into S fixed chunks (ceil(kv_len / S), read at run time from the page
//    table, so a captured graph stays valid as sequences grow); each split writes normalized
//    fp32 (o, lse2) and attention_merge combines them.
//  - attention_varlen: non-causal attention inside segments [cu[s], cu[s+1]) (ViT windows and
//    frames), grid (q tiles, segment, head).
//  - attention_merge: o = sum_s w_s o_s / sum_s w_s, w_s = exp2(lse_s - max lse).
//  - kv_append: scatter new k/v rows into their sequences' page slots.
// Shapes: head_dim <= 128 (128 for the LLM, 80 for the ViT).
// CPU twins: src/backend/cpu (attention_paged, attention_varlen, kv_append).
#include "common.cuh"

#define TILE REEL_ATTN_TILE
#define DMAX 128
#define KW (DMAX + 1)  // smem floats per K/V row: odd, so lane-per-key reads are conflict-free
#define NWARPS 4

struct RowInfo {
    int64_t q_off;    // element offset of the row's q (and out) head vector
    int64_t o_off;
    int64_t part;     // global row index for split partials (t * Hq + qh)
    int kend;         // keys < kend are visible (absolute key index)
    bool valid;
};

// Element offset of key j's head vector (kv = 0 for K, 1 for V): paged pool or contiguous
// [N, H, d] tensors. `base(kv)` is the device address the offset applies to.
struct PagedSrc {
    uint64_t pool;
    const int* pages;  // this sequence's page list
    int n_pages, page_size, kv_heads, head_dim, layer, head;
    __device__ __forceinline__ uint64_t base(int) const { return pool; }
    __device__ __forceinline__ int64_t key(int j, int kv) const {
        int pp, slot;
        page_walk(j, page_size, &pp, &slot);
        return kv_elem_index(layer, kv, pages[pp], slot, head, n_pages, page_size, kv_heads, head_dim);
    }
};

struct DenseSrc {
    uint64_t k, v;
    int64_t k_stride, v_stride;
    int head, head_dim;
    __device__ __forceinline__ uint64_t base(int kv) const { return kv == 0 ? k : v; }
    __device__ __forceinline__ int64_t key(int j, int kv) const {
        return (int64_t)j * (kv == 0 ? k_stride : v_stride) + (int64_t)head * head_dim;
    }
};

// The shared flash loop. Keys [kb, ke) in tiles of 32; lane = key for Q.K, lane = dim for
// P.V (lane owns dims lane + 32 i). Each warp owns RPW rows; rows[] are this warp's rows.
template <int RPW, typename Src>
__device__ __forceinline__ void flash_loop(const ReelAttentionParams& p, const Src& src, int kb, int ke,
                                           const RowInfo (&rows)[RPW], int split) {
    __shared__ float q_s[NWARPS * RPW][DMAX];
    __shared__ float k_s[TILE][KW];
    __shared__ float v_s[TILE][KW];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int D = p.head_dim;

    // Q rows of this warp, pre-scaled into the log2 domain; invalid rows are zeros.
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr)
        for (int c = lane; c < D; c += 32)
            q_s[warp * RPW + rr][c] =
                rows[rr].valid ? load_f(p.q, rows[rr].q_off + c, p.q_dt) * p.scale_log2 : 0.0f;
    __syncwarp();

    float m[RPW], l[RPW], o[RPW][DMAX / 32];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < DMAX / 32; ++i) o[rr][i] = 0.0f;
    }

    for (int j0 = kb; j0 < ke; j0 += TILE) {
        __syncthreads();  // the previous tile has been consumed
        if (p.vec16) {
            // bf16 rows, 16-byte aligned: 8 elements per load.
            const int DC = D / 8;
            for (int ci = threadIdx.x; ci < TILE * DC; ci += blockDim.x) {
                const int kk = ci / DC, ch = ci - kk * DC, j = j0 + kk;
                float kf[8], vf[8];
                if (j < ke) {
                    bf16x8_to_f32(ldg16(reinterpret_cast<const __nv_bfloat16*>(src.base(0)) + src.key(j, 0) + ch * 8), kf);
                    bf16x8_to_f32(ldg16(reinterpret_cast<const __nv_bfloat16*>(src.base(1)) + src.key(j, 1) + ch * 8), vf);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) kf[e] = vf[e] = 0.0f;
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    k_s[kk][ch * 8 + e] = kf[e];
                    v_s[kk][ch * 8 + e] = vf[e];
                }
            }
        } else {
            for (int ci = threadIdx.x; ci < TILE * D; ci += blockDim.x) {
                const int kk = ci / D, c = ci - kk * D, j = j0 + kk;
                const bool in = j < ke;
                k_s[kk][c] = in ? load_f(src.base(0), src.key(j, 0) + c, p.kv_dt) : 0.0f;
                v_s[kk][c] = in ? load_f(src.base(1), src.key(j, 1) + c, p.kv_dt) : 0.0f;
            }
        }
        __syncthreads();

        // S = Q K^T for this lane's key, all rows of the warp.
        float s[RPW];
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) s[rr] = 0.0f;
        for (int c = 0; c < D; ++c) {
            const float kf = k_s[lane][c];
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr) s[rr] = fmaf(q_s[warp * RPW + rr][c], kf, s[rr]);
        }
        const int j = j0 + lane;
        float pr[RPW];
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) {
            const float sv = (rows[rr].valid && j < ke && j < rows[rr].kend) ? s[rr] : -INFINITY;
            const float m_new = fmaxf(m[rr], warp_max(sv));
            if (m_new == -INFINITY) {  // nothing visible yet in this row (warp-uniform)
                pr[rr] = 0.0f;
                continue;
            }
            const float alpha = exp2f(m[rr] - m_new);  // m = -inf gives 0
            pr[rr] = exp2f(sv - m_new);                // masked keys give 0
            l[rr] = l[rr] * alpha + warp_sum(pr[rr]);
            m[rr] = m_new;
#pragma unroll
            for (int i = 0; i < DMAX / 32; ++i) o[rr][i] *= alpha;
        }
        // O += P V
        for (int kk = 0; kk < TILE; ++kk) {
            float pk[RPW];
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr) pk[rr] = __shfl_sync(0xffffffffu, pr[rr], kk);
#pragma unroll
            for (int i = 0; i < DMAX / 32; ++i) {
                const int c = lane + 32 * i;
                if (c < D) {
                    const float vf = v_s[kk][c];
#pragma unroll
                    for (int rr = 0; rr < RPW; ++rr) o[rr][i] = fmaf(pk[rr], vf, o[rr][i]);
                }
            }
        }
    }

    // Epilogue: normalize; empty rows (l == 0) give o = 0 and lse = -inf.
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        if (!rows[rr].valid) continue;
        const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
        if (p.splits == 1) {
#pragma unroll
            for (int i = 0; i < DMAX / 32; ++i) {
                const int c = lane + 32 * i;
                if (c < D) store_f(p.out, rows[rr].o_off + c, p.out_dt, o[rr][i] * inv);
            }
        } else {
            const int64_t prow = (int64_t)split * p.tokens * p.q_heads + rows[rr].part;
            float* po = reinterpret_cast<float*>(p.part_o) + prow * D;
#pragma unroll
            for (int i = 0; i < DMAX / 32; ++i) {
                const int c = lane + 32 * i;
                if (c < D) po[c] = o[rr][i] * inv;
            }
            if (lane == 0)
                reinterpret_cast<float*>(p.part_lse)[prow] =
                    l[rr] > 0.0f ? m[rr] + log2f(l[rr]) : -INFINITY;
        }
    }
}

// The step's sequence b: its first row, rows, pages and length.
struct SeqView {
    int t0, n, pbeg, kv_len;
};

__device__ __forceinline__ SeqView seq_view(const ReelPagedKv& kv, int b) {
    const int* qo = reinterpret_cast<const int*>(kv.qo_indptr);
    const int* indptr = reinterpret_cast<const int*>(kv.indptr);
    SeqView s;
    s.t0 = qo[b];
    s.n = qo[b + 1] - qo[b];
    s.pbeg = indptr[b];
    s.kv_len = paged_kv_len(indptr[b + 1] - indptr[b], kv.page_size,
                            reinterpret_cast<const int*>(kv.last_page_len)[b]);
    return s;
}

// grid = (qo_tiles_bound(T, B, G, BM), Hkv, splits); block = 128. CTA x is row tile x of the
// step (qo_tile): BM rows of one sequence; CTAs past the last tile exit.
template <int RPW>
__device__ __forceinline__ void attention_paged_impl(const ReelAttentionParams& p) {
    const int BMR = NWARPS * RPW;
    const int warp = threadIdx.x / 32;
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int G = p.q_heads / p.kv_heads;
    int b = 0, r0 = 0;
    // Uniform per CTA and before any barrier.
    if (!qo_tile(reinterpret_cast<const int*>(p.kv.qo_indptr), p.kv.batch, G, BMR, blockIdx.x, &b, &r0))
        return;
    const SeqView sq = seq_view(p.kv, b);
    const int T = sq.n, R = T * G, kv_len = sq.kv_len;
    int kb, ke;
    split_range(kv_len, p.splits, split, &kb, &ke);
    // The CTA's last live row bounds the keys any of its rows can see.
    const int rlast = min(r0 + BMR, R) - 1;
    ke = min(ke, attention_causal_end(kv_len, T, attention_row_token(rlast, G)));

    RowInfo rows[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        const int r = r0 + warp * RPW + rr;
        const int t = attention_row_token(r, G), qh = attention_row_qhead(r, G, kvh);
        const int64_t tg = (int64_t)sq.t0 + t;  // the row of q / out
        rows[rr].valid = r < R;
        rows[rr].q_off = tg * p.q_stride + (int64_t)qh * p.head_dim;
        rows[rr].o_off = tg * p.out_stride + (int64_t)qh * p.head_dim;
        rows[rr].part = tg * p.q_heads + qh;
        rows[rr].kend = attention_causal_end(kv_len, T, t);
    }
    PagedSrc src{p.kv.pool, reinterpret_cast<const int*>(p.kv.indices) + sq.pbeg,
                 p.kv.n_pages, p.kv.page_size, p.kv.kv_heads, p.kv.head_dim, p.kv.layer, kvh};
    flash_loop<RPW>(p, src, kb, max(ke, kb), rows, split);
}

extern "C" __global__ void __launch_bounds__(128) attention_paged_decode(ReelAttentionParams p) {
    attention_paged_impl<2>(p);
}
extern "C" __global__ void __launch_bounds__(128, 1) attention_paged_prefill(ReelAttentionParams p) {
    attention_paged_impl<4>(p);
}

// grid = (ceil(max_seqlen / 16), segments, heads); block = 128.
extern "C" __global__ void __launch_bounds__(128, 1) attention_varlen(ReelAttentionParams p) {
    const int RPW = 4, BMR = NWARPS * RPW;
    const int warp = threadIdx.x / 32;
    const int seg = blockIdx.y, head = blockIdx.z;
    const int* cu = reinterpret_cast<const int*>(p.cu_seqlens);
    const int cb = cu[seg], ce = cu[seg + 1];
    const int r0 = blockIdx.x * BMR;
    if (cb + r0 >= ce) return;  // whole CTA past this segment (uniform: no barrier skipped)
    RowInfo rows[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        const int t = cb + r0 + warp * RPW + rr;
        rows[rr].valid = t < ce;
        rows[rr].q_off = (int64_t)t * p.q_stride + (int64_t)head * p.head_dim;
        rows[rr].o_off = (int64_t)t * p.out_stride + (int64_t)head * p.head_dim;
        rows[rr].part = (int64_t)t * p.q_heads + head;
        rows[rr].kend = ce;
    }
    DenseSrc src{p.k, p.v, p.k_stride, p.v_stride, head, p.head_dim};
    flash_loop<RPW>(p, src, cb, ce, rows, 0);
}

// grid = T * Hq rows; block = 128. Partials are [splits][T * Hq][d] and [splits][T * Hq].
extern "C" __global__ void __launch_bounds__(128) attention_merge(ReelAttentionMergeParams p) {
    const int row = blockIdx.x;
    if (row >= p.rows) return;
    const float* lse = reinterpret_cast<const float*>(p.part_lse);
    const float* po = reinterpret_cast<const float*>(p.part_o);
    float mx = -INFINITY;
    for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, lse[(int64_t)s * p.rows + row]);
    const int t = row / p.q_heads, qh = row % p.q_heads;
    const int64_t oo = (int64_t)t * p.out_stride + (int64_t)qh * p.head_dim;
    for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) {
        float acc = 0.0f, wsum = 0.0f;
        if (mx != -INFINITY) {  // all splits empty: output 0 (never -inf - -inf = NaN)
            for (int s = 0; s < p.splits; ++s) {
                const float ls = lse[(int64_t)s * p.rows + row];
                const float w = exp2f(ls - mx);  // empty split: exp2(-inf) = 0
                wsum += w;
                acc = fmaf(w, po[((int64_t)s * p.rows + row) * p.head_dim + c], acc);
            }
        }
        store_f(p.out, oo + c, p.out_dt, wsum > 0.0f ? acc / wsum : 0.0f);
    }
}

// grid = (T, Hkv); block = 128. Row t of sequence b (qo_seq_of_row) goes to position
// kv_len_b - n_b + (t - qo[b]).
extern "C" __global__ void __launch_bounds__(128) kv_append(ReelKvAppendParams p) {
    const int t = blockIdx.x, h = blockIdx.y;
    if (t >= p.tokens) return;
    const int b = qo_seq_of_row(reinterpret_cast<const int*>(p.kv.qo_indptr), p.kv.batch, t);
    const SeqView sq = seq_view(p.kv, b);
    const int pos = sq.kv_len - sq.n + (t - sq.t0);
    if (pos < 0) return;
    int pp, slot;
    page_walk(pos, p.kv.page_size, &pp, &slot);
    const int page = reinterpret_cast<const int*>(p.kv.indices)[sq.pbeg + pp];
    if (page < 0 || page >= p.kv.n_pages) return;
    const int64_t ko = (int64_t)t * p.k_stride + (int64_t)h * p.kv.head_dim;
    const int64_t vo = (int64_t)t * p.v_stride + (int64_t)h * p.kv.head_dim;
    const int64_t kd = kv_elem_index(p.kv.layer, 0, page, slot, h, p.kv.n_pages, p.kv.page_size,
                                     p.kv.kv_heads, p.kv.head_dim);
    const int64_t vd = kv_elem_index(p.kv.layer, 1, page, slot, h, p.kv.n_pages, p.kv.page_size,
                                     p.kv.kv_heads, p.kv.head_dim);
    for (int c = threadIdx.x; c < p.kv.head_dim; c += blockDim.x) {
        store_f(p.kv.pool, kd + c, p.kv.dt, load_f(p.k, ko + c, p.k_dt));
        store_f(p.kv.pool, vd + c, p.kv.dt, load_f(p.v, vo + c, p.v_dt));
    }
}
