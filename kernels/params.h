// Kernel parameter structs, shared by host and device. build.rs generates the Rust twins with
// bindgen, so the layouts agree by construction. Plain C: fixed-width types only. Every kernel
// takes exactly one of these by value. Pointers are device addresses (u64); strides are in
// elements between consecutive first-dimension rows.
#pragma once
#include <stdint.h>

// Element type codes for activations (kernels convert through f32 with a uniform switch).
#define REEL_DT_F32 0
#define REEL_DT_BF16 1
#define REEL_DT_F16 2
// "no bias" for ReelMatmulParams::bias_dt.
#define REEL_DT_NONE (-1)

// Tokens per KV tile in the attention kernels and the split count of decode attention at
// batch 1 (larger batches use fewer splits: decode_splits in src/backend/cuda/attention.rs).
#define REEL_ATTN_TILE 32
#define REEL_DECODE_SPLITS 64

// GEMM tile geometry (mma.cuh's gemm_block, for gemm.cu and quant.cu; warps are 2 (m) x 4 (n),
// each 64 x 32).
#define REEL_GEMM_BM 128
#define REEL_GEMM_BN 128
#define REEL_GEMM_BK 32
#define REEL_GEMM_LDS 40  // smem row stride in bf16: 80 B keeps ldmatrix rows in distinct banks
#define REEL_GEMM_THREADS 256
#define REEL_GEMM_WARP_M 64
#define REEL_GEMM_WARP_N 32


// RMSNorm over rows: out[r, :] = round(w * round(x[r, :] * rsqrt(mean(x^2) + eps))).
// Row r lives at (r / inner) * stride + (r % inner) * cols: `inner` rows of the last dimension
// per first-dimension slice, so strided rank-3 views ([T, H, d] with a padded T stride) work.
typedef struct ReelRmsNormParams {
    uint64_t x;        // [rows, cols]
    uint64_t w;        // [cols]
    uint64_t out;      // [rows, cols]
    int32_t rows;
    int32_t cols;
    int64_t x_stride;
    int64_t out_stride;
    float eps;
    int32_t x_dt;
    int32_t w_dt;
    int32_t out_dt;
    int32_t inner;
    int32_t pad_;
} ReelRmsNormParams;

// Rotary embeddings on x [T, H, d] (rows x_stride / out_stride apart): rope_mrope with pos
// [3, T] int32 and sections in frequency pairs; rope_vision with pos [T, 2] int32 (row, col).
// pos rows are pos_stride apart.
typedef struct ReelRopeParams {
    uint64_t x;
    uint64_t pos;
    uint64_t out;
    int32_t tokens;
    int32_t heads;
    int32_t head_dim;
    int32_t sec_t;  // rope_mrope only
    int32_t sec_h;
    int32_t sec_w;
    int64_t x_stride;
    int64_t out_stride;
    int64_t pos_stride;
    float theta;
    int32_t x_dt;
    int32_t out_dt;
} ReelRopeParams;

// Elementwise ops over [rows, cols] views (add, swiglu, gelu, cast). b unused by unary ops.
typedef struct ReelEltParams {
    uint64_t a;
    uint64_t b;
    uint64_t out;
    int64_t rows;
    int64_t cols;
    int64_t a_stride;
    int64_t b_stride;
    int64_t out_stride;
    int32_t a_dt;
    int32_t b_dt;
    int32_t out_dt;
    int32_t pad_;
} ReelEltParams;

// out[t, :] = table[ids[t], :]; ids outside [0, vocab) write zeros.
typedef struct ReelEmbeddingParams {
    uint64_t table;
    uint64_t ids;
    uint64_t out;
    int32_t tokens;
    int32_t dim;
    int32_t vocab;
    int32_t table_dt;
    int64_t table_stride;
    int64_t out_stride;
    int32_t out_dt;
    int32_t pad_;
} ReelEmbeddingParams;

// Row copies through an index (gather_rows_*: dst row i <- src row idx[i]; scatter_rows_*:
// dst row idx[i] <- src row i). Strides and row length in bytes; indices out of range skip.
typedef struct ReelRowsParams {
    uint64_t src;
    uint64_t idx;
    uint64_t dst;
    int32_t n_idx;
    int32_t pad_;
    int64_t row_bytes;
    int64_t src_stride_bytes;
    int64_t dst_stride_bytes;
    int64_t src_rows;
    int64_t dst_rows;
} ReelRowsParams;

// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), f32 accumulation, rounded once: every matmul
// kernel (gemv.cu, gemm.cu, quant.cu). The 16-byte GEMV and the GEMM take bf16 x and w; the
// scalar GEMV takes any float types (x_dt, w_dt); the quantized kernels take a REEL_QT_* weight.
typedef struct ReelMatmulParams {
    uint64_t x;
    uint64_t w;
    uint64_t bias;
    uint64_t out;
    int32_t M;
    int32_t N;
    int32_t K;
    int32_t bias_dt;  // REEL_DT_NONE, REEL_DT_BF16, REEL_DT_F16 or REEL_DT_F32
    int64_t x_stride;
    int64_t w_stride;  // float w: elements between rows; quantized w: bytes (rows are contiguous)
    int64_t out_stride;
    int32_t out_dt;   // REEL_DT_BF16 or REEL_DT_F32
    int32_t x_dt;     // qgemv_*_f32 kernels: REEL_DT_F32 or REEL_DT_F16
    int32_t w_dt;     // REEL_DT_* (float w) or REEL_QT_* (quantized w)
    int32_t pad_;
} ReelMatmulParams;

// ---- Dense bf16 GEMM with a fused epilogue (kernels/gemm.cu, gemm_wgmma.cu) ----
// y = round(x[M, K] @ w[N, K]^T + bias) in the output type, then per REEL_EPI_*:
//   NONE   out = y
//   GELU   out = round(gelu(y))                  (exact erf)
//   SWIGLU w holds gate rows [0, F) then up rows [F, 2F) (bias likewise), N = 2F, out [M, F]:
//          out = round(round(silu(y_gate)) * y_up)
//   ADD    out = round(y + res)                  (res [M, N], any float type)
// Each rounding is the one the unfused op sequence makes (matmul, then the elementwise op).
#define REEL_EPI_NONE 0
#define REEL_EPI_GELU 1
#define REEL_EPI_SWIGLU 2
#define REEL_EPI_ADD 3
// CTAs of consecutive ids walk groups of this many M tiles (gemm_tile_of in index_math.h), so
// the W tiles a wave reads stay in L2.
#define REEL_GEMM_GROUP_M 8

typedef struct ReelGemmParams {
    uint64_t x;
    uint64_t w;
    uint64_t bias;
    uint64_t out;
    uint64_t res;       // REEL_EPI_ADD only
    int32_t M;
    int32_t N;          // rows of w (SwiGLU: 2F)
    int32_t K;
    int32_t bias_dt;    // REEL_DT_NONE or a float type
    int64_t x_stride;   // elements; rows 16-byte aligned (the launcher checks)
    int64_t w_stride;
    int64_t out_stride;
    int64_t res_stride;
    int32_t out_dt;     // REEL_DT_BF16 or REEL_DT_F32
    int32_t res_dt;
    int32_t epi;        // REEL_EPI_*
    int32_t tiles_m;    // output tiles of the launch (the grid is tiles_m * tiles_n CTAs)
    int32_t tiles_n;
    int32_t pad_;
} ReelGemmParams;

// Index of the max of each row (lowest index on ties; NaN counts as the maximum, as torch).
typedef struct ReelArgmaxParams {
    uint64_t x;
    uint64_t out;
    int32_t rows;
    int32_t cols;
    int64_t x_stride;
    int32_t x_dt;
    int32_t pad_;
} ReelArgmaxParams;

// The paged pool [layer][k|v][page][slot][kv_head][head_dim] and the step's CSR view of B
// sequences (PagedKv in src/backend/mod.rs): rows qo_indptr[b] .. qo_indptr[b+1] of q / k / v /
// out are sequence b's last n_b tokens; its pages are indices[indptr[b] .. indptr[b+1]] and its
// last page holds last_page_len[b] tokens.
typedef struct ReelPagedKv {
    uint64_t pool;
    uint64_t qo_indptr;   // [B + 1]
    uint64_t indptr;      // [B + 1]
    uint64_t indices;
    uint64_t last_page_len;  // [B]
    int32_t n_pages;
    int32_t page_size;
    int32_t kv_heads;
    int32_t head_dim;
    int32_t layer;
    int32_t dt;   // pool element type (REEL_DT_*)
    int32_t batch;  // B
    int32_t pad_;
} ReelPagedKv;

// Writes row qo_indptr[b] + i of k, v [T, Hkv, d] at position kv_len_b - n_b + i of sequence b.
typedef struct ReelKvAppendParams {
    uint64_t k;
    uint64_t v;
    ReelPagedKv kv;
    int32_t tokens;
    int32_t k_dt;
    int64_t k_stride;
    int64_t v_stride;
    int32_t v_dt;
    int32_t pad_;
} ReelKvAppendParams;

// Flash-style attention (CUDA cores, online softmax in base 2).
// Paged: q [T, Hq, d] holds each sequence's last n_b positions (ReelPagedKv), causal
// bottom-right per sequence; a CTA's rows all belong to one sequence (qo_tile in index_math.h).
// Varlen: q, k, v [N, H, d], non-causal inside segments [cu[s], cu[s+1]).
// With splits > 1 each split writes normalized fp32 partials (o, lse2) that the merge kernel
// combines; with splits == 1 the kernel writes out directly.
typedef struct ReelAttentionParams {
    uint64_t q;
    uint64_t k;           // varlen only
    uint64_t v;           // varlen only
    uint64_t out;
    uint64_t cu_seqlens;  // varlen only
    uint64_t part_o;      // [splits][rows][d] f32, rows = T * Hq
    uint64_t part_lse;    // [splits][rows] f32, log2 domain
    ReelPagedKv kv;       // paged only
    int32_t tokens;       // T (paged) or N (varlen)
    int32_t q_heads;
    int32_t kv_heads;     // varlen: == q_heads
    int32_t head_dim;
    int32_t splits;
    int32_t segments;     // varlen only
    int64_t q_stride;
    int64_t k_stride;
    int64_t v_stride;
    int64_t out_stride;
    float scale_log2;     // softmax scale * log2(e)
    int32_t q_dt;
    int32_t kv_dt;        // k/v (varlen) or pool (paged) element type
    int32_t out_dt;
    int32_t vec16;        // K/V rows are bf16, 16-byte aligned, head_dim % 8 == 0
    int32_t pad_;
} ReelAttentionParams;

// Merges split partials: one block per (token, q head) row.
typedef struct ReelAttentionMergeParams {
    uint64_t part_o;
    uint64_t part_lse;
    uint64_t out;
    int32_t rows;     // T * Hq
    int32_t q_heads;
    int32_t head_dim;
    int32_t splits;
    int64_t out_stride;
    int32_t out_dt;
    int32_t pad_;
} ReelAttentionMergeParams;

// ---- Quantized weights: kernels/quant.cu, launchers src/backend/cuda/matmul.rs, elementwise.rs -
// Weight types (ggml block layouts, fp16 scales): Q8_0 34 B / 32 weights, Q4_K 144 B / 256,
// Q6_K 210 B / 256 (ReelMatmulParams::w_dt). Rows are w_stride bytes apart; the base must be
// 2-byte aligned and the buffer padded to a multiple of 16 B (the GEMV reads whole aligned
// 16-byte chunks around each row).
#define REEL_QT_Q8_0 1
#define REEL_QT_Q4_K 2
#define REEL_QT_Q6_K 3
// Decode GEMV: 8 warps per block, one warp per output column (weight row), up to QGEMV_ROWS
// rows of x per launch slice (grid.y). Each warp streams its row through a private smem window
// of QGEMV_WIN_BYTES (4 x 16 B per lane); x is staged in QGEMV_X_BYTES of smem in K chunks.
#define REEL_QGEMV_ROWS 8
#define REEL_QGEMV_WARPS 8
#define REEL_QGEMV_WIN_BYTES 2048
#define REEL_QGEMV_X_BYTES 24576
// Prefill GEMM (M > QGEMV_ROWS, bf16 x): mma.cuh's 128 x 128 x 32 block GEMM, with the weight
// tile dequantized to bf16 in smem instead of copied.

// out[t, :] = dequant(table[ids[t], :]); ids outside [0, vocab) write zeros.
typedef struct ReelEmbeddingQuantParams {
    uint64_t table;
    uint64_t ids;
    uint64_t out;
    int64_t row_bytes;
    int64_t out_stride;
    int32_t tokens;
    int32_t dim;
    int32_t vocab;
    int32_t qtype;
    int32_t out_dt;
    int32_t pad_;
} ReelEmbeddingQuantParams;

// ---- Tensor-core flash attention (kernels/attention_mma.cu) ----
// bf16 q/k/v/out, ReelAttentionParams. A CTA of REEL_FA_THREADS threads (4 warps x 16 rows) owns
// REEL_FA_BM query rows and walks the keys in tiles of REEL_FA_BN; smem rows are head_dim + 8
// bf16 (an odd number of 16-byte chunks for head_dim 80 and 128, so ldmatrix is conflict-free).
// Dynamic smem: Q tile + 2 stages of K and V tiles = (BM + 4 BN) * (head_dim + 8) * 2 bytes.
#define REEL_FA_BM 64
#define REEL_FA_BN 64
#define REEL_FA_THREADS 128
#define REEL_FA_PAD 8
#define REEL_FA_PAGED_D 128  // head_dim of attention_paged_prefill_mma (the LLM)
#define REEL_FA_VARLEN_D 80  // head_dim of attention_varlen_mma (the ViT)
// ---- sampling (kernels/sampling.cu) ---------------------------------------------------------
// One block per row of logits [rows, cols]; the sampling arguments are 8 int32 words in device
// memory (SampleArgs in src/backend/mod.rs), so a captured graph samples with whatever the host
// wrote before the replay. out[r] = token id, or -1 when the row cannot be sampled.
#define REEL_SAMPLE_THREADS 512
#define REEL_SAMPLE_ARGS 8

// Row r reads its arguments at args + r * args_stride (args_stride REEL_SAMPLE_ARGS for a set
// per row, 0 for one set shared by every row).
typedef struct ReelSampleParams {
    uint64_t x;
    uint64_t args;
    uint64_t out;
    int64_t x_stride;
    int32_t rows;
    int32_t cols;
    int32_t x_dt;
    int32_t args_stride;
} ReelSampleParams;

// ---- Decode GEMV on a per-warp cp.async ring (kernels/gemv_ring.cuh; launcher
// src/backend/cuda/decode.rs), a candidate behind REEL_GEMV / REEL_QGEMV ----
// out = epilogue(x[K] @ w[N, K]^T + bias) for one row of x (M = 1). 256 threads = 8 warps; warp
// w of CTA b takes weight rows [(8 b + w) * rows_per_warp, +rows_per_warp) and streams each row
// through `stages` smem slots of REEL_RING_SLOT bytes in windows of whole 256-weight units
// (cp.async, 16-byte chunks, so any 2-byte row alignment works). x is staged once per CTA
// (optionally RMS-normalized first): as bf16/f32 for bf16 weights, as 32-element int8 blocks
// for the dp4a kernels of quantized weights. Dynamic smem: x_bytes + 8 * stages * SLOT.
// The launcher runs the plain epilogue without the norm prologue (matmul at M = 1).
#define REEL_GV_BF16 0   // weight kind codes besides REEL_QT_* (1..3)
#define REEL_RING_SLOT 2320  // 2304 B of window (16 Q4_K units) + 16 B read-ahead pad
#define REEL_RING_WARPS 8
#define REEL_RING_MAX_STAGES 4
#define REEL_GV_EPI_PLAIN 0     // out[n] = round(acc + bias[n])
#define REEL_GV_EPI_RESIDUAL 1  // out[n] = round(round(acc + bias[n]) + res[n])
#define REEL_GV_EPI_SWIGLU 2    // rows 2i, 2i+1 are (gate, up): out[i] = round(round(silu(g)) * u)

typedef struct ReelGemvParams {
    uint64_t x;       // [K] activation (x_dt)
    uint64_t w;       // weight rows, w_stride bytes apart (bf16 elements or ggml blocks)
    uint64_t bias;    // [N] (bias_dt) or 0
    uint64_t norm_w;  // [K] RMSNorm weight (norm_dt), or 0: no norm prologue
    uint64_t res;     // [N] residual (res_dt), REEL_GV_EPI_RESIDUAL only
    uint64_t out;     // [N], or [N / 2] for REEL_GV_EPI_SWIGLU (out_dt)
    int64_t w_stride;
    int32_t N;
    int32_t K;
    int32_t x_dt;
    int32_t bias_dt;   // REEL_DT_NONE without bias
    int32_t norm_dt;
    int32_t res_dt;
    int32_t out_dt;
    int32_t epi;       // REEL_GV_EPI_*
    int32_t rows_per_warp;
    int32_t stages;    // 1..REEL_RING_MAX_STAGES
    int32_t x_bytes;   // bytes of staged x at the start of dynamic smem (multiple of 16)
    float eps;         // RMSNorm epsilon
} ReelGemvParams;
