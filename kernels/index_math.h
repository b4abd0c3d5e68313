// Index math shared by the kernels and by the host-side checks (kernels/host_test/
// index_check.cpp, run from a Rust test): page walk, split-KV ranges, attention row maps and
// the mma.sync m16n8k16 / ldmatrix fragment maps. Plain C++ so a host compiler builds it too.
#pragma once
#include <stdint.h>
#include "params.h"

#ifdef __CUDACC__
#define REEL_HD __host__ __device__ __forceinline__
#else
#define REEL_HD inline
#endif

// ---- paged KV (FlashInfer CSR, NHD pages) ----

// kv_len of a sequence with `npages` pages whose last page holds `last_len` tokens.
REEL_HD int paged_kv_len(int npages, int page_size, int last_len) {
    return npages <= 0 ? 0 : (npages - 1) * page_size + last_len;
}

// Element index of (layer, kv, page, slot, head, 0) in [layer][k|v][page][slot][head][d].
REEL_HD int64_t kv_elem_index(int layer, int kv, int page, int slot, int head, int n_pages,
                              int page_size, int kv_heads, int head_dim) {
    return ((((int64_t)(layer * 2 + kv) * n_pages + page) * page_size + slot) * kv_heads + head) *
           (int64_t)head_dim;
}

// Token t of a sequence: position in its page list and slot.
REEL_HD void page_walk(int t, int page_size, int* page_pos, int* slot) {
    *page_pos = t / page_size;
    *slot = t - (t / page_size) * page_size;
}

// ---- split-KV ----

// Split s of `splits` covers [beg, end) of [0, kv_len): equal chunks of ceil(kv_len / splits),
// trailing splits empty when kv_len < splits.
REEL_HD void split_range(int kv_len, int splits, int s, int* beg, int* end) {
    const int chunk = (kv_len + splits - 1) / splits;
    int b = s * chunk, e = b + chunk;
    if (b > kv_len) b = kv_len;
    if (e > kv_len) e = kv_len;
    *beg = b;
    *end = e;
}

// ---- batched steps: rows of B sequences (qo_indptr [B + 1], rising from 0 to T) ----

// The sequence that holds step row t (0 <= t < qo[B]): the last b with qo[b] <= t, so
// sequences without rows (qo[b] == qo[b + 1]) are skipped.
REEL_HD int qo_seq_of_row(const int* qo, int batch, int t) {
    int lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (qo[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Row tiles of a batched paged-attention launch: sequence b owns n_b * group rows
// (r = t * group + g with t its local token), cut into tiles of bm rows, tiles of sequence 0
// first. Tile x is sequence *b's tile starting at its row *r0; false when x is past the last
// tile (the launch covers an upper bound, qo_tiles_bound).
REEL_HD bool qo_tile(const int* qo, int batch, int group, int bm, int x, int* b, int* r0) {
    for (int s = 0; s < batch; ++s) {
        const int tiles = ((qo[s + 1] - qo[s]) * group + bm - 1) / bm;
        if (x < tiles) {
            *b = s;
            *r0 = x * bm;
            return true;
        }
        x -= tiles;
    }
    return false;
}

// Total row tiles of a step (qo_tile's x runs below it).
REEL_HD int qo_tiles_total(const int* qo, int batch, int group, int bm) {
    int n = 0;
    for (int s = 0; s < batch; ++s) n += ((qo[s + 1] - qo[s]) * group + bm - 1) / bm;
    return n;
}

// What the host launches without reading qo_indptr: sum_b ceil(n_b G / bm) <=
// floor((T G + B (bm - 1)) / bm), whatever the split of the T rows over the B sequences.
REEL_HD int qo_tiles_bound(int tokens, int batch, int group, int bm) {
    return (tokens * group + batch * (bm - 1)) / bm;
}

// ---- attention rows ----
// A paged-attention CTA owns rows r = t * group + g of one KV head and one sequence: token t
// (of the sequence's T step rows), q head kv_head * group + g. Query token t sits at position
// kv_len - T + t (bottom-right causal), so it sees keys [0, kv_len - T + t].
REEL_HD int attention_row_token(int r, int group) { return r / group; }
REEL_HD int attention_row_qhead(int r, int group, int kv_head) { return kv_head * group + r % group; }
REEL_HD int attention_causal_end(int kv_len, int tokens, int t) { return kv_len - tokens + t + 1; }

// ---- mma.sync.m16n8k16 (bf16 in, f32 accumulate) fragment maps, from the PTX ISA ----
// g = lane / 4, c = lane % 4.
// C/D: 4 f32 per lane; element i at row g (+8 for i >= 2), col 2c + (i & 1).
REEL_HD int mma_c_row(int lane, int i) { return lane / 4 + (i >= 2 ? 8 : 0); }
REEL_HD int mma_c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }
// A: 4 regs of bf16x2, element e = 2 * reg + half. Reg 0: (g, 2c..), 1: (g + 8, 2c..),
// 2: (g, 2c + 8..), 3: (g + 8, 2c + 8..).
REEL_HD int mma_a_row(int lane, int e) { return lane / 4 + (((e >> 1) & 1) ? 8 : 0); }
REEL_HD int mma_a_col(int lane, int e) { return (lane % 4) * 2 + (e & 1) + ((e >> 2) ? 8 : 0); }
// B (col-major k x n): 2 regs of bf16x2, element e = 2 * reg + half; k = 2c + half (+8 for
// reg 1), n = g.
REEL_HD int mma_b_k(int lane, int e) { return (lane % 4) * 2 + (e & 1) + ((e >> 1) ? 8 : 0); }
REEL_HD int mma_b_n(int lane, int e) { return lane / 4 + 0 * e; }

// ldmatrix.x4: lane l supplies the row address of 8x8 matrix l / 8, row l % 8. Each matrix
// lands in one destination register; thread i receives row i / 4, columns 2 (i % 4) + {0, 1}.
// A tile 16(m) x 16(k), row-major: matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15),
// (m 8-15, k 8-15) -> a0..a3.
REEL_HD int ldsm_a_row(int lane) { return (lane % 8) + ((lane / 8) % 2) * 8; }
REEL_HD int ldsm_a_col(int lane) { return (lane / 16) * 8; }
// B from W rows (n-major, k contiguous), two n8 tiles: matrices (n 0-7, k 0-7), (n 0-7, k 8-15),
// (n 8-15, k 0-7), (n 8-15, k 8-15) -> b0, b1 of n-tile 0, then b0, b1 of n-tile 1.
REEL_HD int ldsm_b_row(int lane) { return (lane % 8) + (lane / 16) * 8; }
REEL_HD int ldsm_b_col(int lane) { return ((lane / 8) % 2) * 8; }

// ---- GEMM tile geometry (constants in params.h) ----
// cp.async chunk `i` (0..BM*BK/8) of a tile: row and first k (16-byte chunks of 8 bf16).
REEL_HD int gemm_chunk_row(int i) { return i / (REEL_GEMM_BK / 8); }
REEL_HD int gemm_chunk_col(int i) { return (i % (REEL_GEMM_BK / 8)) * 8; }

// ---- tensor-core flash attention (kernels/attention_mma.cu; constants REEL_FA_* in params.h) ----

// Element index of key j's head vector in the paged pool, through this sequence's page list.
REEL_HD int64_t paged_row_elem(const int* pages, int j, int layer, int kv, int head, int n_pages,
                               int page_size, int kv_heads, int head_dim) {
    int pp, slot;
    page_walk(j, page_size, &pp, &slot);
    return kv_elem_index(layer, kv, pages[pp], slot, head, n_pages, page_size, kv_heads, head_dim);
}

// smem row stride (bf16) of a Q/K/V tile row of head_dim d.
REEL_HD int fa_lds(int d) { return d + REEL_FA_PAD; }
// cp.async chunk i of a tile with rows of d bf16: row and first column (16-byte chunks of 8).
REEL_HD int fa_chunk_row(int i, int d) { return i / (d / 8); }
REEL_HD int fa_chunk_col(int i, int d) { return (i % (d / 8)) * 8; }

// Heavy tiles first: CTA x of n along the grid takes query tile n - 1 - x (the last query rows
// see the most keys under the causal mask, so they start in the first wave).
REEL_HD int fa_mblock(int bx, int n) { return n - 1 - bx; }

// Key tiles [kb + i * bn, kb + (i + 1) * bn) for i < fa_kv_tiles cover every key a row of the
// CTA can see (keys < kend_max); tiles past it are never loaded (causal skipping).
REEL_HD int fa_kv_tiles(int kb, int kend_max, int bn) {
    return kend_max <= kb ? 0 : (kend_max - kb + bn - 1) / bn;
}
// A tile starting at key j0 needs the per-element mask only if some row of the CTA cannot see
// all of it: its end passes the smallest visible bound (the diagonal tiles and the last tile).
REEL_HD bool fa_tile_masked(int j0, int bn, int kend_min) { return j0 + bn > kend_min; }

// P (the f32 C fragments of S = Q K^T, n-tiles of 8 keys) reused as the A fragment of P V for
// keys [16 kk, 16 kk + 16): A reg r comes from S n-tile 2 kk + (r >> 1), C elements
// (r & 1) * 2 + {0, 1}. Checked against the C and A maps in the host test.
REEL_HD int fa_p_ntile(int kk, int reg) { return 2 * kk + (reg >> 1); }
REEL_HD int fa_p_elem(int reg, int half) { return (reg & 1) * 2 + half; }

// ldmatrix.x4.trans for the B operand of P V from V rows (key-major, d contiguous): matrices
// (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15) -> b0, b1 of
// d-tile 0, then b0, b1 of d-tile 1. Lane l addresses key row ldsm_vt_row(l), column
// ldsm_vt_col(l). With .trans, thread i receives (stored row 2 (i % 4) + {0, 1}, column i / 4)
// of each matrix, i.e. k = 2c + {0, 1}, n = g: the B layout.
REEL_HD int ldsm_vt_row(int lane) { return (lane % 8) + ((lane / 8) % 2) * 8; }
REEL_HD int ldsm_vt_col(int lane) { return (lane / 16) * 8; }

// ---- dense GEMM (kernels/gemm.cu): CTA order, operand row maps ----

// CTA `pid` of a tiles_m x tiles_n grid -> its output tile. Ids walk groups of `group` M tiles
// with the M tile fastest inside a group, so a wave of consecutive CTAs shares few W tiles
// (they stay in L2) and its X tiles come from `group` row blocks. A bijection onto the tiles
// (checked on the host for the model's shapes).
REEL_HD void gemm_tile_of(int pid, int tiles_m, int tiles_n, int group, int* tm, int* tn) {
    const int per_group = group * tiles_n;
    const int first_m = (pid / per_group) * group;
    const int gm = tiles_m - first_m < group ? tiles_m - first_m : group;
    const int in = pid % per_group;
    *tm = first_m + in % gm;
    *tn = in / gm;
}

// SwiGLU through one GEMM: the B tile of output tile tn holds, for each of its bn / 2 output
// features, the gate row and the up row, interleaved in groups of 8 (tile rows 16 q .. 16 q + 7
// are gates of features 8 q .., rows 16 q + 8 .. 16 q + 15 the matching ups). Each mma n8 tile
// is then all gates or all ups, and a thread's C elements of n-tiles 2 i and 2 i + 1 are the
// gate and the up of the same feature. Tile row r -> feature; the physical w row is
// feature + (up ? F : 0) for w = [gate rows F; up rows F].
REEL_HD int swiglu_feature(int tn, int bn, int r) { return tn * (bn / 2) + (r / 16) * 8 + r % 8; }
REEL_HD bool swiglu_is_up(int r) { return (r / 8) % 2 == 1; }

// Bytes of the 16-byte chunk at column k0 + c of a K-long bf16 row that lie inside the row
// (0 past the end): the cp.async src-size, so K tails need no padding in memory.
REEL_HD int gemm_chunk_bytes(int k0, int c, int K) {
    const int left = (K - (k0 + c)) * 2;
    return left <= 0 ? 0 : (left >= 16 ? 16 : left);
}

// ---- gemm_bf16_mma's loads at any row alignment (mma.cuh gemm_load_tile_any) ----
// A tile row's 8-element chunk at column k (a multiple of 8) of a K-long row holds
// gemm_chunk_valid(k, K) real elements (0 past the end); the rest is zero-filled.
REEL_HD int gemm_chunk_valid(int k, int K) {
    const int left = K - k;
    return left <= 0 ? 0 : (left >= 8 ? 8 : left);
}
// The chunk is copied in 16 / granule pieces of `granule` bytes, the largest power of two
// (16, 8, 4, 2) its global byte address is a multiple of: 16 as one cp.async.cg, 8 and 4 as
// cp.async.ca, 2 as plain loads. bf16 rows of any stride start at least 2-byte aligned.
REEL_HD int gemm_granule(unsigned long long addr) {
    return addr % 16 == 0 ? 16 : (addr % 8 == 0 ? 8 : (addr % 4 == 0 ? 4 : 2));
}
// Bytes piece j (covering chunk bytes [j g, j g + g)) reads from global memory when the chunk
// has `valid` real elements: its cp.async src-size (the rest of the piece is zero-filled).
REEL_HD int gemm_piece_bytes(int valid, int granule, int j) {
    const int left = valid * 2 - j * granule;
    return left <= 0 ? 0 : (left >= granule ? granule : left);
}
