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
    // ---- tensor-core flash attention ----
    // cp.async chunks cover a tile of 64 rows x d exactly once; smem rows of d + 8 keep the 8
    // row addresses of every ldmatrix phase in distinct 16-byte bank groups, 16-byte aligned.
    const int fa_dims[] = {80, 128};
    for (int d : fa_dims) {
        static int cov[REEL_FA_BM][128];
        std::memset(cov, 0, sizeof(cov));
        for (int i = 0; i < REEL_FA_BM * d / 8; ++i)
            for (int e = 0; e < 8; ++e) cov[fa_chunk_row(i, d)][fa_chunk_col(i, d) + e]++;
        for (int r = 0; r < REEL_FA_BM; ++r)
            for (int k = 0; k < d; ++k) CHECK(cov[r][k] == 1, "fa chunk d %d (%d,%d)", d, r, k);
        CHECK((REEL_FA_BM * d / 8) % REEL_FA_THREADS == 0, "fa chunks per thread d %d", d);
        for (int base = 0; base + 8 <= REEL_FA_BM; ++base)
            for (int col = 0; col < d; col += 8) {
                int groups[8];
                for (int r = 0; r < 8; ++r) {
                    const int byte = ((base + r) * fa_lds(d) + col) * 2;
                    CHECK(byte % 16 == 0, "fa ldmatrix address not 16-byte aligned");
                    groups[r] = (byte / 16) % 8;
                }
                for (int x = 0; x < 8; ++x)
                    for (int y = x + 1; y < 8; ++y)
                        CHECK(groups[x] != groups[y], "fa bank conflict d %d rows %d/%d", d, base + x, base + y);
            }
    }
    // P reuse: the S C-fragment element each A register of P V takes is the A element it stands for.
    for (int kk = 0; kk < REEL_FA_BN / 16; ++kk)
        for (int lane = 0; lane < 32; ++lane)
            for (int reg = 0; reg < 4; ++reg)
                for (int half = 0; half < 2; ++half) {
                    const int nt = fa_p_ntile(kk, reg), e = fa_p_elem(reg, half), ea = 2 * reg + half;
                    CHECK(nt >= 0 && nt < REEL_FA_BN / 8 && e >= 0 && e < 4, "P source out of range");
                    CHECK(mma_c_row(lane, e) == mma_a_row(lane, ea), "P row lane %d reg %d", lane, reg);
                    CHECK(nt * 8 + mma_c_col(lane, e) == 16 * kk + mma_a_col(lane, ea),
                          "P key lane %d reg %d kk %d", lane, reg, kk);
                }
    // ldmatrix.x4.trans of V: thread i of matrix q receives stored (row 2 (i % 4) + half,
    // column i / 4) of that matrix, whose row r was addressed by lane 8 q + r. That must be the
    // B element (k = key, n = d) of register q % 2 of d-tile q / 2.
    for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 32; ++i)
            for (int half = 0; half < 2; ++half) {
                const int src = 8 * q + 2 * (i % 4) + half;
                const int key = ldsm_vt_row(src), dcol = ldsm_vt_col(src) + i / 4;
                const int e = 2 * (q % 2) + half;
                CHECK(key == mma_b_k(i, e) && dcol == (q / 2) * 8 + mma_b_n(i, e),
                      "ldmatrix.trans V matrix %d lane %d", q, i);
            }
    // Heavy-first tile order is a permutation.
    for (int n = 1; n < 40; ++n) {
        static int hit[64];
        std::memset(hit, 0, sizeof(hit));
        for (int bx = 0; bx < n; ++bx) hit[fa_mblock(bx, n)]++;
        for (int x = 0; x < n; ++x) CHECK(hit[x] == 1, "fa_mblock n %d", n);
    }
    // Causal tiles of the paged kernel: for every CTA (64 rows r = t * G + g, rows past the end
    // clamped to the last one, as the kernel does), the visited key tiles hold every visible
    // (row, key) pair, the last visited tile has a visible key, and an unmasked tile is fully
    // visible to every row. Shapes: G 7 and others, T from 1 to past a tile, kv_len >= T.
    {
        const int Gs[] = {1, 2, 7, 8};
        for (int G : Gs)
            for (int T = 1; T <= 140; T += (T < 20 ? 1 : 13))
                for (int extra = 0; extra <= 200; extra += (extra < 4 ? 1 : 67)) {
                    const int kv = T + extra, R = T * G;
                    const int nblk = (R + REEL_FA_BM - 1) / REEL_FA_BM;
                    for (int bx = 0; bx < nblk; ++bx) {
                        const int r0 = fa_mblock(bx, nblk) * REEL_FA_BM;
                        auto kend = [&](int i) {
                            const int r = r0 + i < R ? r0 + i : R - 1;
                            return attn_causal_end(kv, T, attn_row_token(r, G));
                        };
                        const int kmin = kend(0), kmax = kend(REEL_FA_BM - 1);
                        const int nt = fa_kv_tiles(0, kmax, REEL_FA_BN);
                        int maxk = 0;
                        for (int i = 0; i < REEL_FA_BM; ++i) {
                            CHECK(kend(i) >= kmin && kend(i) <= kmax, "kend order G %d T %d", G, T);
                            if (kend(i) > maxk) maxk = kend(i);
                        }
                        CHECK(nt * REEL_FA_BN >= maxk, "tiles miss keys G %d T %d kv %d", G, T, kv);
                        CHECK(nt >= 1 && (nt - 1) * REEL_FA_BN < maxk, "tile past the diagonal G %d T %d kv %d", G, T, kv);
                        CHECK(kmax <= kv, "keys past kv_len");
                        for (int b = 0; b < nt; ++b) {
                            const int j0 = b * REEL_FA_BN;
                            if (fa_tile_masked(j0, REEL_FA_BN, kmin)) continue;
                            for (int i = 0; i < REEL_FA_BM; ++i)
                                CHECK(j0 + REEL_FA_BN <= kend(i), "unmasked tile %d hides keys of row %d", b, i);
                        }
                    }
                }
        // Varlen: keys [cb, ce) in tiles from cb; only a tile crossing ce is masked.
        for (int cb = 0; cb < 70; cb += 23)
            for (int len = 1; len <= 200; ++len) {
                const int ce = cb + len, nt = fa_kv_tiles(cb, ce, REEL_FA_BN);
                CHECK(nt == (len + REEL_FA_BN - 1) / REEL_FA_BN, "varlen tiles len %d", len);
                for (int b = 0; b < nt; ++b)
                    CHECK(fa_tile_masked(cb + b * REEL_FA_BN, REEL_FA_BN, ce) == (cb + (b + 1) * REEL_FA_BN > ce),
                          "varlen mask len %d tile %d", len, b);
            }
        CHECK(fa_kv_tiles(5, 5, REEL_FA_BN) == 0 && fa_kv_tiles(5, 0, REEL_FA_BN) == 0, "empty key range");
    }
    // Paged key rows through a scrambled page list equal the dense-pool formula.
    {
        const int ps = 16, nkv = 4, d = 128, np = 23, layers = 3;
        int pages[np];
        for (int i = 0; i < np; ++i) pages[i] = (i * 7 + 5) % np;
        for (int layer = 0; layer < layers; ++layer)
            for (int kv = 0; kv < 2; ++kv)
                for (int h = 0; h < nkv; ++h)
                    for (int j = 0; j < np * ps; j += 3) {
                        const long want = ((((long)(layer * 2 + kv) * np + pages[j / ps]) * ps + j % ps) * nkv + h) * d;
                        CHECK(paged_row_elem(pages, j, layer, kv, h, np, ps, nkv, d) == want, "paged_row_elem j %d", j);
                    }
    }
    if (fails) {
        std::printf("%d index checks failed\n", fails);
        return 1;
    }
    std::printf("index_math: all checks passed\n");
    return 0;
}
