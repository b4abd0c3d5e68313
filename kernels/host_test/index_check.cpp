// Host-side checks of kernels/index_math.h (the exact functions the kernels call), run by the
// Rust test `backend::cuda::tests::index_math_host_checks`. Exits nonzero naming the first
// failed property.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "../index_math.h"

static int fails = 0;
#define CHECK(cond, ...)                      \
    do {                                      \
        if (!(cond)) {                        \
            if (fails < 10) {                 \
                std::printf("FAIL: " __VA_ARGS__); \
                std::printf("\n");            \
            }                                 \
            ++fails;                          \
        }                                     \
    } while (0)

int main() {
    // Split ranges: every token of [0, kv_len) in exactly one split, splits in order.
    static int seen[5000];
    for (int splits = 1; splits <= 70; ++splits) {
        for (int kv = 0; kv <= 1100; kv += (kv < 200 ? 1 : 37)) {
            std::memset(seen, 0, sizeof(int) * (kv + 1));
            int prev_end = 0;
            for (int s = 0; s < splits; ++s) {
                int b, e;
                split_range(kv, splits, s, &b, &e);
                CHECK(b <= e && b >= 0 && e <= kv, "split %d/%d kv %d: [%d,%d)", s, splits, kv, b, e);
                CHECK(b == prev_end || b == e, "split %d/%d kv %d starts at %d after %d", s, splits, kv, b, prev_end);
                if (e > b) prev_end = e;
                for (int t = b; t < e; ++t) seen[t]++;
            }
            for (int t = 0; t < kv; ++t) CHECK(seen[t] == 1, "kv %d splits %d: token %d covered %d times", kv, splits, t, seen[t]);
        }
    }
    // Page walk + element index against the direct formula, for several geometries.
    const int geoms[][4] = {{16, 4, 128, 3}, {1, 2, 8, 2}, {7, 3, 16, 1}, {16, 1, 80, 2}};
    for (const auto& g : geoms) {
        const int ps = g[0], nkv = g[1], d = g[2], layers = g[3];
        const int np = 9;
        for (int t = 0; t < 5 * ps + 3; ++t) {
            int pp, slot;
            page_walk(t, ps, &pp, &slot);
            CHECK(pp * ps + slot == t && slot >= 0 && slot < ps, "page walk t %d ps %d", t, ps);
        }
        // Every (layer, kv, page, slot, head) start is distinct, d apart, and inside the pool.
        const long total = (long)layers * 2 * np * ps * nkv * d;
        long expect = 0;
        for (int l = 0; l < layers; ++l)
            for (int kv = 0; kv < 2; ++kv)
                for (int p = 0; p < np; ++p)
                    for (int s = 0; s < ps; ++s)
                        for (int h = 0; h < nkv; ++h) {
                            const long e = (long)kv_elem_index(l, kv, p, s, h, np, ps, nkv, d);
                            CHECK(e == expect, "kv_elem_index(%d,%d,%d,%d,%d) = %ld, want %ld", l, kv, p, s, h, e, expect);
                            expect += d;
                        }
        CHECK(expect == total, "pool size");
        CHECK(paged_kv_len(0, ps, 0) == 0, "empty kv_len");
        CHECK(paged_kv_len(3, ps, 2) == 2 * ps + 2, "kv_len");
    }
    // Attention rows: rows t * G + g of KV head h cover each (token, q head of h) once; causal end.
    for (int G = 1; G <= 8; ++G)
        for (int T = 1; T <= 5; ++T)
            for (int h = 0; h < 3; ++h) {
                static int cnt[64][64];
                std::memset(cnt, 0, sizeof(cnt));
                for (int r = 0; r < T * G; ++r) {
                    const int t = attn_row_token(r, G), qh = attn_row_qhead(r, G, h);
                    CHECK(qh / G == h, "row %d maps to q head %d outside group of kv head %d", r, qh, h);
                    cnt[t][qh]++;
                }
                for (int t = 0; t < T; ++t)
                    for (int g = 0; g < G; ++g) CHECK(cnt[t][h * G + g] == 1, "row map G %d T %d", G, T);
                for (int kv = T; kv < T + 20; ++kv)
                    CHECK(attn_causal_end(kv, T, T - 1) == kv && attn_causal_end(kv, T, 0) == kv - T + 1,
                          "causal end kv %d T %d", kv, T);
            }
    // mma m16n8k16 fragments: C (16x8), A (16x16), B (16x8) each owned exactly once per warp.
    int c[16][8] = {}, a[16][16] = {}, b[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) c[mma_c_row(lane, i)][mma_c_col(lane, i)]++;
        for (int e = 0; e < 8; ++e) a[mma_a_row(lane, e)][mma_a_col(lane, e)]++;
        for (int e = 0; e < 4; ++e) b[mma_b_k(lane, e)][mma_b_n(lane, e)]++;
    }
    for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 16; ++k) {
            CHECK(a[r][k] == 1, "A (%d,%d) owned %d times", r, k, a[r][k]);
            if (k < 8) {
                CHECK(c[r][k] == 1, "C (%d,%d) owned %d times", r, k, c[r][k]);
                CHECK(b[r][k] == 1, "B (%d,%d) owned %d times", r, k, b[r][k]);
            }
        }
    // ldmatrix.x4 addressing delivers exactly the mma fragments: matrix q (lanes 8q..8q+7 give its
    // row addresses) lands in register q; thread i gets row i / 4, cols 2 (i % 4) + {0, 1}.
    for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 32; ++i)
            for (int half = 0; half < 2; ++half) {
                const int src_lane = 8 * q + i / 4;  // the lane that addressed this row
                // A: element (row, col) of the 16x16 tile
                const int ar = ldsm_a_row(src_lane), ac = ldsm_a_col(src_lane) + 2 * (i % 4) + half;
                const int e = 2 * q + half;
                CHECK(ar == mma_a_row(i, e) && ac == mma_a_col(i, e), "ldmatrix A reg %d lane %d", q, i);
                // B: regs 0,1 -> n-tile 0 (b0, b1); regs 2,3 -> n-tile 1
                const int bn = ldsm_b_row(src_lane), bk = ldsm_b_col(src_lane) + 2 * (i % 4) + half;
                const int tile = q / 2, eb = 2 * (q % 2) + half;
                CHECK(bn == tile * 8 + mma_b_n(i, eb) && bk == mma_b_k(i, eb), "ldmatrix B reg %d lane %d", q, i);
            }
    // Padded smem rows (REEL_GEMM_LDS bf16): the 8 row addresses of every ldmatrix phase fall in
    // distinct 16-byte bank groups (conflict-free), and every address is 16-byte aligned.
    for (int base = 0; base < 128; base += 8)
        for (int col = 0; col < REEL_GEMM_BK; col += 8) {
            int groups[8];
            for (int r = 0; r < 8; ++r) {
                const int byte = ((base + r) * REEL_GEMM_LDS + col) * 2;
                CHECK(byte % 16 == 0, "ldmatrix row address not 16-byte aligned");
                groups[r] = (byte / 16) % 8;
            }
            for (int x = 0; x < 8; ++x)
                for (int y = x + 1; y < 8; ++y) CHECK(groups[x] != groups[y], "bank conflict rows %d/%d", x, y);
        }
    // cp.async chunks cover the BM x BK tile exactly once.
    static int tile[REEL_GEMM_BM][REEL_GEMM_BK];
    std::memset(tile, 0, sizeof(tile));
    for (int i = 0; i < REEL_GEMM_BM * REEL_GEMM_BK / 8; ++i)
        for (int e = 0; e < 8; ++e) tile[gemm_chunk_row(i)][gemm_chunk_col(i) + e]++;
    for (int r = 0; r < REEL_GEMM_BM; ++r)
        for (int k = 0; k < REEL_GEMM_BK; ++k) CHECK(tile[r][k] == 1, "cp.async tile (%d,%d)", r, k);
    // Warp tiles of the GEMM CTA: 8 warps x (4 x 4 mma tiles) cover the 128 x 128 C tile once.
    static int ct[REEL_GEMM_BM][REEL_GEMM_BN];
    std::memset(ct, 0, sizeof(ct));
    for (int warp = 0; warp < REEL_GEMM_THREADS / 32; ++warp)
        for (int lane = 0; lane < 32; ++lane)
            for (int mi = 0; mi < 4; ++mi)
                for (int ni = 0; ni < 4; ++ni)
                    for (int e = 0; e < 4; ++e) {
                        const int row = (warp / 4) * REEL_GEMM_WARP_M + mi * 16 + mma_c_row(lane, e);
                        const int col = (warp % 4) * REEL_GEMM_WARP_N + ni * 8 + mma_c_col(lane, e);
                        ct[row][col]++;
                    }
    for (int r = 0; r < REEL_GEMM_BM; ++r)
        for (int n = 0; n < REEL_GEMM_BN; ++n) CHECK(ct[r][n] == 1, "CTA C (%d,%d) owned %d times", r, n, ct[r][n]);
    if (fails) {
        std::printf("%d index checks failed\n", fails);
        return 1;
    }
    std::printf("index_math: all checks passed\n");
    return 0;
}
