// Host-side checks of kernels/index_math.h (the exact functions the kernels call), run by the
// Rust test `backend::cuda::tests::index_math_host_checks`. Exits nonzero naming the first
// failed property.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <cmath>
#include <vector>
#include "../index_math.h"
#include "check.h"

// ---- host model of attention_mma.cu's CTA loop ----
// Replays fa_cta for one CTA lane by lane with the same index functions: ldmatrix (plain and
// .trans) and mma.sync are emulated from their PTX definitions (thread i of 8x8 matrix q gets
// row i / 4, cols 2 (i % 4) + {0, 1}; .trans the transpose), the quad shuffles as sums over the
// 4 lanes of a row, P split into bf16 hi + lo. The result is compared with an f64 softmax.
static float bf16r(float x) {  // round to nearest even, as __float2bfloat16_rn
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
}
struct Reg2 { float lo, hi; };  // a bf16x2 register, values already bf16
// ldmatrix.x4 from a row-major smem tile with row stride lds; addr(l) gives lane l's (row, col).
template <typename F>
static void emu_ldsm(const float* sm, int lds, F addr, bool trans, Reg2 (*out)[4]) {
    for (int i = 0; i < 32; ++i)
        for (int q = 0; q < 4; ++q) {
            float v[2];
            for (int h = 0; h < 2; ++h) {
                const int mr = trans ? 2 * (i % 4) + h : i / 4, mc = trans ? i / 4 : 2 * (i % 4) + h;
                int r, c;
                addr(8 * q + mr, &r, &c);
                v[h] = sm[r * lds + c + mc];
            }
            out[i][q] = {v[0], v[1]};
        }
}
static void emu_mma(float (*c)[4], Reg2 (*a)[4], Reg2 b0[32], Reg2 b1[32]) {
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        for (int e = 0; e < 8; ++e) A[mma_a_row(l, e)][mma_a_col(l, e)] = e & 1 ? a[l][e / 2].hi : a[l][e / 2].lo;
        for (int e = 0; e < 4; ++e) {
            const Reg2 r = e < 2 ? b0[l] : b1[l];
            B[mma_b_k(l, e)][mma_b_n(l, e)] = e & 1 ? r.hi : r.lo;
        }
    }
    for (int l = 0; l < 32; ++l)
        for (int e = 0; e < 4; ++e) {
            float acc = c[l][e];
            for (int k = 0; k < 16; ++k) acc += A[mma_c_row(l, e)][k] * B[k][mma_c_col(l, e)];
            c[l][e] = acc;
        }
}
// One CTA: rows i (valid(i), q row qrow(i), bound kend(i)), keys [kb, kend_max) read by
// krow(j) / vrow(j) (pointers to d floats). Writes out(i) for valid rows.
template <int D, typename Valid, typename QRow, typename KEnd, typename KRow, typename VRow, typename Out>
static void emu_cta(float sl2, int kb, int kend_min, int kend_max, Valid valid, QRow qrow, KEnd kend,
                    KRow krow, VRow vrow, Out out) {
    const int LDS = fa_lds(D), BM = REEL_FA_BM, BN = REEL_FA_BN;
    std::vector<float> Qs(BM * LDS, 0.f), Ks(BN * LDS), Vs(BN * LDS);
    for (int i = 0; i < BM * D / 8; ++i) {
        const int r = fa_chunk_row(i, D), c = fa_chunk_col(i, D);
        for (int e = 0; e < 8; ++e) Qs[r * LDS + c + e] = valid(r) ? qrow(r)[c + e] : 0.f;
    }
    for (int w = 0; w < 4; ++w) {
        static Reg2 qf[D / 16][32][4];
        for (int ks = 0; ks < D / 16; ++ks)
            emu_ldsm(Qs.data(), LDS, [&](int l, int* r, int* c) { *r = w * 16 + ldsm_a_row(l); *c = ks * 16 + ldsm_a_col(l); }, false, qf[ks]);
        static float o[D / 8][32][4];
        std::memset(o, 0, sizeof(o));
        float m[32][2], l[32][2];
        for (int ln = 0; ln < 32; ++ln) m[ln][0] = m[ln][1] = -INFINITY, l[ln][0] = l[ln][1] = 0.f;
        const int ntiles = fa_kv_tiles(kb, kend_max, BN);
        for (int nb = 0; nb < ntiles; ++nb) {
            const int j0 = kb + nb * BN;
            for (int i = 0; i < BN * D / 8; ++i) {
                const int r = fa_chunk_row(i, D), c = fa_chunk_col(i, D), j = j0 + r;
                for (int e = 0; e < 8; ++e) {
                    Ks[r * LDS + c + e] = j < kend_max ? krow(j)[c + e] : 0.f;
                    Vs[r * LDS + c + e] = j < kend_max ? vrow(j)[c + e] : 0.f;
                }
            }
            static float s[BN / 8][32][4];
            std::memset(s, 0, sizeof(s));
            for (int ks = 0; ks < D / 16; ++ks)
                for (int np = 0; np < BN / 16; ++np) {
                    Reg2 b[32][4];
                    emu_ldsm(Ks.data(), LDS, [&](int ln, int* r, int* c) { *r = np * 16 + ldsm_b_row(ln); *c = ks * 16 + ldsm_b_col(ln); }, false, b);
                    Reg2 b0[32], b1[32], b2[32], b3[32];
                    for (int ln = 0; ln < 32; ++ln) b0[ln] = b[ln][0], b1[ln] = b[ln][1], b2[ln] = b[ln][2], b3[ln] = b[ln][3];
                    emu_mma(s[2 * np], qf[ks], b0, b1);
                    emu_mma(s[2 * np + 1], qf[ks], b2, b3);
                }
            const bool masked = fa_tile_masked(j0, BN, kend_min);
            for (int ln = 0; ln < 32; ++ln) {
                const int g = ln / 4, kr[2] = {kend(w * 16 + g), kend(w * 16 + g + 8)};
                for (int nt = 0; nt < BN / 8; ++nt)
                    for (int e = 0; e < 4; ++e) {
                        float x = s[nt][ln][e] * sl2;
                        if (masked && j0 + nt * 8 + mma_c_col(ln, e) >= kr[e >> 1]) x = -INFINITY;
                        s[nt][ln][e] = x;
                    }
            }
            float mu[32][2];
            for (int h = 0; h < 2; ++h) {
                float mx[32];
                for (int ln = 0; ln < 32; ++ln) {
                    mx[ln] = -INFINITY;
                    for (int nt = 0; nt < BN / 8; ++nt) mx[ln] = fmaxf(mx[ln], fmaxf(s[nt][ln][2 * h], s[nt][ln][2 * h + 1]));
                }
                for (int ln = 0; ln < 32; ++ln) {
                    const int q0 = ln & ~3;  // quad max (shuffle-xor 1, 2)
                    const float qm = fmaxf(fmaxf(mx[q0], mx[q0 + 1]), fmaxf(mx[q0 + 2], mx[q0 + 3]));
                    const float mn = fmaxf(m[ln][h], qm);
                    mu[ln][h] = mn == -INFINITY ? 0.f : mn;
                    const float alpha = exp2f(m[ln][h] - mu[ln][h]);
                    m[ln][h] = mn;
                    l[ln][h] *= alpha;
                    for (int nt = 0; nt < D / 8; ++nt) o[nt][ln][2 * h] *= alpha, o[nt][ln][2 * h + 1] *= alpha;
                }
            }
            for (int ln = 0; ln < 32; ++ln)
                for (int nt = 0; nt < BN / 8; ++nt)
                    for (int e = 0; e < 4; ++e) {
                        const float pe = exp2f(s[nt][ln][e] - mu[ln][e >> 1]);
                        l[ln][e >> 1] += pe;
                        s[nt][ln][e] = pe;
                    }
            for (int kk = 0; kk < BN / 16; ++kk) {
                Reg2 ph[32][4], pl[32][4];
                for (int ln = 0; ln < 32; ++ln)
                    for (int reg = 0; reg < 4; ++reg) {
                        const float x0 = s[fa_p_ntile(kk, reg)][ln][fa_p_elem(reg, 0)];
                        const float x1 = s[fa_p_ntile(kk, reg)][ln][fa_p_elem(reg, 1)];
                        ph[ln][reg] = {bf16r(x0), bf16r(x1)};
                        pl[ln][reg] = {bf16r(x0 - bf16r(x0)), bf16r(x1 - bf16r(x1))};
                    }
                for (int dp = 0; dp < D / 16; ++dp) {
                    Reg2 b[32][4];
                    emu_ldsm(Vs.data(), LDS, [&](int ln, int* r, int* c) { *r = kk * 16 + ldsm_vt_row(ln); *c = dp * 16 + ldsm_vt_col(ln); }, true, b);
                    Reg2 b0[32], b1[32], b2[32], b3[32];
                    for (int ln = 0; ln < 32; ++ln) b0[ln] = b[ln][0], b1[ln] = b[ln][1], b2[ln] = b[ln][2], b3[ln] = b[ln][3];
                    emu_mma(o[2 * dp], ph, b0, b1);
                    emu_mma(o[2 * dp], pl, b0, b1);
                    emu_mma(o[2 * dp + 1], ph, b2, b3);
                    emu_mma(o[2 * dp + 1], pl, b2, b3);
                }
            }
        }
        for (int ln = 0; ln < 32; ++ln)
            for (int h = 0; h < 2; ++h) {
                const int q0 = ln & ~3;
                const float lt = l[q0][h] + l[q0 + 1][h] + l[q0 + 2][h] + l[q0 + 3][h];
                const float inv = lt > 0.f ? 1.f / lt : 0.f;
                const int i = w * 16 + ln / 4 + 8 * h;
                if (!valid(i)) continue;
                for (int nt = 0; nt < D / 8; ++nt) {
                    const int c = nt * 8 + mma_c_col(ln, 2 * h);
                    out(i)[c] = bf16r(o[nt][ln][2 * h] * inv);
                    out(i)[c + 1] = bf16r(o[nt][ln][2 * h + 1] * inv);
                }
            }
    }
}

// Deterministic bf16 values in [-2, 2).
static float rnd(uint64_t& st) {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return bf16r(((st >> 40) / 16777216.0f * 2.f - 1.f) * 2.f);
}

// f64 softmax attention of one query row over keys [kb, ke) -> out, and the harness metric.
static void ref_row(const float* q, int kb, int ke, const float* const* ks, const float* const* vs, int d, float scale, double* o) {
    std::vector<double> sc(ke - kb);
    double mx = -INFINITY;
    for (int j = kb; j < ke; ++j) {
        double a = 0;
        for (int c = 0; c < d; ++c) a += (double)q[c] * ks[j][c];
        sc[j - kb] = a * scale;
        mx = std::max(mx, sc[j - kb]);
    }
    double z = 0;
    for (auto& x : sc) z += (x = std::exp(x - mx));
    for (int c = 0; c < d; ++c) {
        double a = 0;
        for (int j = kb; j < ke; ++j) a += sc[j - kb] / z * vs[j][c];
        o[c] = a;
    }
}

static void check_attention_model() {
    uint64_t st = 0x243f6a8885a308d3ull;
    // Paged causal prefill: G = 7, T = 13 (91 rows: a full and a partial CTA), kv_len 150 on
    // 16-token pages in scrambled order, 2 KV heads, layer 1 of 2.
    {
        const int D = 128, G = 7, hkv = 2, hq = G * hkv, T = 13, kv_len = 150, ps = 16, layers = 2;
        const int npg = (kv_len + ps - 1) / ps, n_pages = 2 * npg + 1;
        std::vector<int> pages(npg);
        for (int i = 0; i < npg; ++i) pages[i] = (n_pages - 1 - 2 * i + n_pages) % n_pages;
        std::vector<float> pool((size_t)layers * 2 * n_pages * ps * hkv * D), q(T * hq * D), out(T * hq * D, NAN);
        for (auto& x : pool) x = rnd(st);
        for (auto& x : q) x = rnd(st);
        const float scale = 1.f / std::sqrt((float)D), sl2 = scale * 1.4426950408889634f;
        double worst = 0, omax = 0;
        for (int kvh = 0; kvh < hkv; ++kvh) {
            const int R = T * G, nblk = (R + REEL_FA_BM - 1) / REEL_FA_BM;
            for (int bx = 0; bx < nblk; ++bx) {
                const int r0 = fa_mblock(bx, nblk) * REEL_FA_BM;
                auto rowc = [&](int i) { return std::min(r0 + i, R - 1); };
                auto qoff = [&](int i) { return (size_t)attention_row_token(rowc(i), G) * hq * D + (size_t)attention_row_qhead(rowc(i), G, kvh) * D; };
                auto kend = [&](int i) { return attention_causal_end(kv_len, T, attention_row_token(rowc(i), G)); };
                emu_cta<D>(sl2, 0, kend(0), kend(REEL_FA_BM - 1), [&](int i) { return r0 + i < R; },
                           [&](int i) { return &q[qoff(i)]; }, kend,
                           [&](int j) { return &pool[paged_row_elem(pages.data(), j, 1, 0, kvh, n_pages, ps, hkv, D)]; },
                           [&](int j) { return &pool[paged_row_elem(pages.data(), j, 1, 1, kvh, n_pages, ps, hkv, D)]; },
                           [&](int i) { return &out[qoff(i)]; });
            }
        }
        std::vector<const float*> ks(kv_len), vs(kv_len);
        std::vector<double> want(T * hq * D);
        for (int t = 0; t < T; ++t)
            for (int h = 0; h < hq; ++h) {
                for (int j = 0; j < kv_len; ++j) {
                    ks[j] = &pool[paged_row_elem(pages.data(), j, 1, 0, h / G, n_pages, ps, hkv, D)];
                    vs[j] = &pool[paged_row_elem(pages.data(), j, 1, 1, h / G, n_pages, ps, hkv, D)];
                }
                ref_row(&q[(t * hq + h) * D], 0, kv_len - T + t + 1, ks.data(), vs.data(), D, scale, &want[(t * hq + h) * D]);
            }
        for (double w : want) omax = std::max(omax, std::fabs(w));
        for (size_t i = 0; i < want.size(); ++i) {
            const double e = std::fabs(out[i] - want[i]) / std::max(std::fabs(want[i]), 1e-3 * omax);
            worst = std::isnan(out[i]) ? INFINITY : std::max(worst, e);
        }
        std::printf("attention model, paged prefill: max err %.3e\n", worst);
        CHECK(worst <= 1.0 / 128, "paged prefill model err %.3e", worst);
    }
    // Batched paged prefill (attention_paged_prefill_mma's CTA map): 4 sequences with 13, 0, 70
    // and 1 step rows over kv_len 150, 40, 70, 9 on scrambled pages of one pool; CTA y takes
    // row tile fa_mblock(y, total) of the step (qo_tile), CTAs past the total do nothing.
    {
        const int D = 128, G = 7, hkv = 2, hq = G * hkv, ps = 16, layers = 2, B = 4;
        const int n[B] = {13, 0, 70, 1}, len[B] = {150, 40, 70, 9};
        int qo[B + 1] = {0}, indptr[B + 1] = {0};
        for (int b = 0; b < B; ++b) {
            qo[b + 1] = qo[b] + n[b];
            indptr[b + 1] = indptr[b] + (len[b] + ps - 1) / ps;
        }
        const int T = qo[B], n_pages = indptr[B] + 3;
        std::vector<int> pages(indptr[B]);
        for (int i = 0; i < indptr[B]; ++i) pages[i] = (i * 5 + 2) % n_pages;
        std::vector<float> pool((size_t)layers * 2 * n_pages * ps * hkv * D), q(T * hq * D), out(T * hq * D, NAN);
        for (auto& x : pool) x = rnd(st);
        for (auto& x : q) x = rnd(st);
        const float scale = 1.f / std::sqrt((float)D), sl2 = scale * 1.4426950408889634f;
        const int total = qo_tiles_total(qo, B, G, REEL_FA_BM);
        const int bound = qo_tiles_bound(T, B, G, REEL_FA_BM);
        CHECK(total <= bound, "tiles %d over the launch bound %d", total, bound);
        for (int kvh = 0; kvh < hkv; ++kvh)
            for (int y = 0; y < bound; ++y) {
                if (y >= total) continue;
                int b = 0, r0 = 0;
                CHECK(qo_tile(qo, B, G, REEL_FA_BM, fa_mblock(y, total), &b, &r0), "tile %d", y);
                const int R = n[b] * G, t0 = qo[b];
                const int* pg = pages.data() + indptr[b];
                auto rowc = [&](int i) { return std::min(r0 + i, R - 1); };
                auto qoff = [&](int i) {
                    return (size_t)(t0 + attention_row_token(rowc(i), G)) * hq * D + (size_t)attention_row_qhead(rowc(i), G, kvh) * D;
                };
                auto kend = [&](int i) { return attention_causal_end(len[b], n[b], attention_row_token(rowc(i), G)); };
                emu_cta<D>(sl2, 0, kend(0), kend(REEL_FA_BM - 1), [&](int i) { return r0 + i < R; },
                           [&](int i) { return &q[qoff(i)]; }, kend,
                           [&](int j) { return &pool[paged_row_elem(pg, j, 1, 0, kvh, n_pages, ps, hkv, D)]; },
                           [&](int j) { return &pool[paged_row_elem(pg, j, 1, 1, kvh, n_pages, ps, hkv, D)]; },
                           [&](int i) { return &out[qoff(i)]; });
            }
        std::vector<const float*> ks(160), vs(160);
        std::vector<double> want(T * hq * D);
        double worst = 0, omax = 0;
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < n[b]; ++i)
                for (int h = 0; h < hq; ++h) {
                    const int* pg = pages.data() + indptr[b];
                    for (int j = 0; j < len[b]; ++j) {
                        ks[j] = &pool[paged_row_elem(pg, j, 1, 0, h / G, n_pages, ps, hkv, D)];
                        vs[j] = &pool[paged_row_elem(pg, j, 1, 1, h / G, n_pages, ps, hkv, D)];
                    }
                    const int t = qo[b] + i;
                    ref_row(&q[(t * hq + h) * D], 0, len[b] - n[b] + i + 1, ks.data(), vs.data(), D, scale, &want[(t * hq + h) * D]);
                }
        for (double w : want) omax = std::max(omax, std::fabs(w));
        for (size_t i = 0; i < want.size(); ++i) {
            const double e = std::fabs(out[i] - want[i]) / std::max(std::fabs(want[i]), 1e-3 * omax);
            worst = std::isnan(out[i]) ? INFINITY : std::max(worst, e);
        }
        std::printf("attention model, batched paged prefill: max err %.3e\n", worst);
        CHECK(worst <= 1.0 / 128, "batched paged prefill model err %.3e", worst);
    }
    // Varlen, d = 80: segments 64, 22, 150 (a window, a short one, three key tiles with a tail).
    {
        const int D = 80, H = 3;
        const int cu[] = {0, 64, 86, 236};
        const int N = cu[3];
        std::vector<float> q(N * H * D), k(N * H * D), v(N * H * D), out(N * H * D, NAN);
        for (auto* a : {&q, &k, &v})
            for (auto& x : *a) x = rnd(st);
        const float scale = 1.f / std::sqrt((float)D), sl2 = scale * 1.4426950408889634f;
        for (int s = 0; s < 3; ++s)
            for (int h = 0; h < H; ++h)
                for (int bx = 0; cu[s] + bx * REEL_FA_BM < cu[s + 1]; ++bx) {
                    const int t0 = cu[s] + bx * REEL_FA_BM, ce = cu[s + 1];
                    auto off = [&](int i) { return (size_t)std::min(t0 + i, ce - 1) * H * D + h * D; };
                    emu_cta<D>(sl2, cu[s], ce, ce, [&](int i) { return t0 + i < ce; }, [&](int i) { return &q[off(i)]; },
                               [&](int) { return ce; }, [&](int j) { return &k[(size_t)j * H * D + h * D]; },
                               [&](int j) { return &v[(size_t)j * H * D + h * D]; }, [&](int i) { return &out[off(i)]; });
                }
        std::vector<double> want(N * H * D);
        std::vector<const float*> ks(N), vs(N);
        double omax = 0, worst = 0;
        for (int s = 0; s < 3; ++s)
            for (int h = 0; h < H; ++h) {
                for (int j = 0; j < N; ++j) ks[j] = &k[(size_t)j * H * D + h * D], vs[j] = &v[(size_t)j * H * D + h * D];
                for (int t = cu[s]; t < cu[s + 1]; ++t)
                    ref_row(&q[(size_t)t * H * D + h * D], cu[s], cu[s + 1], ks.data(), vs.data(), D, scale, &want[(size_t)t * H * D + h * D]);
            }
        for (double w : want) omax = std::max(omax, std::fabs(w));
        for (size_t i = 0; i < want.size(); ++i) {
            const double e = std::fabs(out[i] - want[i]) / std::max(std::fabs(want[i]), 1e-3 * omax);
            worst = std::isnan(out[i]) ? INFINITY : std::max(worst, e);
        }
        std::printf("attention model, varlen d=80: max err %.3e\n", worst);
        CHECK(worst <= 1.0 / 128, "varlen model err %.3e", worst);
    }
}

// ---- host model of gemm_bf16_mma's loads (mma.cuh gemm_load_tile_any) ----
// Replays every CTA of the GEMM over bf16 operands at arbitrary row strides and base offsets:
// each stage's tiles are filled chunk by chunk, piece by piece, with the kernel's own index
// functions (gemm_chunk_row/col, gemm_chunk_valid, gemm_granule, gemm_piece_bytes) and the
// cp.async semantics (src-size bytes copied, the rest of the piece zero-filled; 16-byte pieces
// need 16-byte aligned addresses, 8- and 4-byte pieces their own size); the tile starts each
// stage as NaN so a hole poisons the result. The tile product (the mma part, whose fragments
// are checked above) is summed in f64 and compared exactly with a scalar reference: operands
// are small integers, so every partial sum is exact.
static uint16_t bf16_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return (uint16_t)(u >> 16);  // the test values are exact in bf16
}
static float bf16_val(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
struct EmuOperand {
    std::vector<uint16_t> mem;  // the buffer; element e lives at byte address VBASE + 2 e
    long base;                  // first element of row 0
    long stride;                // elements between rows
    int rows;
};
static const unsigned long long VBASE = 0x7f0000000000ull;  // 256-byte aligned, as cudaMalloc
// One stage's tile of an operand (rows row0.., k in [k0, k0 + BK)), as gemm_load_tile_any fills it.
static void emu_load_tile_any(const EmuOperand& o, int row0, int k0, int K, float tile[REEL_GEMM_BM][REEL_GEMM_BK]) {
    for (int r = 0; r < REEL_GEMM_BM; ++r)
        for (int k = 0; k < REEL_GEMM_BK; ++k) tile[r][k] = NAN;
    for (int it = 0; it < (REEL_GEMM_BM * REEL_GEMM_BK / 8) / REEL_GEMM_THREADS; ++it)
        for (int t = 0; t < REEL_GEMM_THREADS; ++t) {
            const int i = t + it * REEL_GEMM_THREADS;
            const int r = gemm_chunk_row(i), c = gemm_chunk_col(i);
            const int valid = row0 + r < o.rows ? gemm_chunk_valid(k0 + c, K) : 0;
            const long e0 = valid > 0 ? o.base + (long)(row0 + r) * o.stride + k0 + c : 0;
            const unsigned long long addr = VBASE + 2ull * e0;
            const int gran = valid > 0 ? gemm_granule(addr) : 16;
            CHECK(gran == 16 || gran == 8 || gran == 4 || gran == 2, "granule %d", gran);
            CHECK(addr % gran == 0, "piece address %llx not %d-byte aligned", addr, gran);
            // The smem chunk starts 16-byte aligned (rows of REEL_GEMM_LDS bf16), so each piece's
            // destination is aligned to its size.
            CHECK(((r * REEL_GEMM_LDS + c) * 2) % 16 == 0, "smem chunk alignment");
            for (int j = 0; j < 16 / gran; ++j) {
                const int b = gemm_piece_bytes(valid, gran, j);
                CHECK(b >= 0 && b <= gran && b % 2 == 0, "piece bytes %d of %d", b, gran);
                for (int byte = 0; byte < gran; byte += 2) {
                    const int e = (j * gran + byte) / 2;  // element of the chunk
                    float v = 0.0f;
                    if (byte < b) {
                        // Read only real elements of the row, inside the buffer.
                        CHECK(k0 + c + e < K && row0 + r < o.rows, "read past the row: k %d of %d", k0 + c + e, K);
                        CHECK(e0 + e >= 0 && e0 + e < (long)o.mem.size(), "read outside the buffer");
                        v = bf16_val(o.mem[e0 + e]);
                    } else {
                        // Zero-filled bytes are exactly the ones past the row's end or the last row.
                        CHECK(!(row0 + r < o.rows && k0 + c + e < K), "real element k %d zero-filled", k0 + c + e);
                    }
                    tile[r][c + e] = v;
                }
            }
        }
}
static void check_gemm_any(int M, int N, int K, long xbase, long xstride, long wbase, long wstride, uint64_t seed) {
    EmuOperand x{{}, xbase, xstride, M}, w{{}, wbase, wstride, N};
    for (EmuOperand* o : {&x, &w}) {
        o->mem.assign(o->base + (size_t)o->rows * o->stride + 8, bf16_bits(NAN));
        for (int r = 0; r < o->rows; ++r)
            for (int k = 0; k < K; ++k) {
                seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
                o->mem[o->base + (long)r * o->stride + k] = bf16_bits((float)((int)(seed % 9) - 4));
            }
    }
    static float A[REEL_GEMM_BM][REEL_GEMM_BK], B[REEL_GEMM_BN][REEL_GEMM_BK];
    std::vector<double> out((size_t)M * N, NAN);
    const int ktiles = (K + REEL_GEMM_BK - 1) / REEL_GEMM_BK;
    for (int m_blk = 0; m_blk < M; m_blk += REEL_GEMM_BM)
        for (int n_blk = 0; n_blk < N; n_blk += REEL_GEMM_BN) {
            static double acc[REEL_GEMM_BM][REEL_GEMM_BN];
            std::memset(acc, 0, sizeof(acc));
            for (int kt = 0; kt < ktiles; ++kt) {
                emu_load_tile_any(x, m_blk, kt * REEL_GEMM_BK, K, A);
                emu_load_tile_any(w, n_blk, kt * REEL_GEMM_BK, K, B);
                for (int r = 0; r < REEL_GEMM_BM; ++r)
                    for (int n = 0; n < REEL_GEMM_BN; ++n)
                        for (int k = 0; k < REEL_GEMM_BK; ++k) acc[r][n] += (double)A[r][k] * B[n][k];
            }
            for (int r = 0; r < REEL_GEMM_BM && m_blk + r < M; ++r)
                for (int n = 0; n < REEL_GEMM_BN && n_blk + n < N; ++n) out[(size_t)(m_blk + r) * N + n_blk + n] = acc[r][n];
        }
    int bad = 0;
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double want = 0.0;
            for (int k = 0; k < K; ++k)
                want += (double)bf16_val(x.mem[x.base + (long)i * x.stride + k]) * bf16_val(w.mem[w.base + (long)j * w.stride + k]);
            const double got = out[(size_t)i * N + j];
            if (!(got == want) && bad++ < 3)
                CHECK(false, "gemm_any M %d N %d K %d strides %ld/%ld bases %ld/%ld: (%d,%d) = %g, want %g", M, N, K,
                      xstride, wstride, xbase, wbase, i, j, got, want);
        }
    CHECK(bad == 0, "gemm_any M %d N %d K %d: %d wrong outputs", M, N, K, bad);
}
static void check_gemm_any_shapes() {
    // K tails of every length mod 8 and mod 32, contiguous rows (stride K: 16-, 8-, 4- and
    // 2-byte aligned rows depending on K), padded and odd strides, and bases off 16-byte
    // boundaries (column views). M and N cross the 128-wide tiles.
    const int ks[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 100, 3420, 3421};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int K : ks) {
        const bool big = K > 1000;
        const int M = big ? 130 : 131, N = big ? 129 : 257;
        check_gemm_any(M, N, K, 0, K, 0, K, seed++);  // contiguous, as the model's activations
        check_gemm_any(M, N, K, 1, K + 3, 4, K + 2, seed++);
        if (!big) {
            check_gemm_any(M, N, K, 2, K + 1, 3, K + 5, seed++);
            check_gemm_any(17, 9, K, 8, K + 8, 0, (K + 7) / 8 * 8, seed++);
        }
    }
    // The ViT MLP down-projection rows: stride 3420 bf16 = 6840 bytes, so even rows are 16-byte
    // aligned and odd rows 8-byte aligned.
    CHECK(gemm_granule(VBASE + 2ull * 3420 * 0) == 16 && gemm_granule(VBASE + 2ull * 3420 * 1) == 8,
          "ViT down rows alternate 16/8-byte alignment");
    CHECK(gemm_chunk_valid(3416, 3420) == 4 && gemm_chunk_valid(3424, 3420) == 0 && gemm_chunk_valid(8, 3420) == 8,
          "chunk valid counts");
    CHECK(gemm_piece_bytes(4, 16, 0) == 8 && gemm_piece_bytes(4, 8, 1) == 0 && gemm_piece_bytes(5, 8, 1) == 2 &&
              gemm_piece_bytes(8, 4, 3) == 4 && gemm_piece_bytes(0, 16, 0) == 0,
          "piece bytes");
}

int main() {
    check_gemm_any_shapes();
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
                    const int t = attention_row_token(r, G), qh = attention_row_qhead(r, G, h);
                    CHECK(qh / G == h, "row %d maps to q head %d outside group of kv head %d", r, qh, h);
                    cnt[t][qh]++;
                }
                for (int t = 0; t < T; ++t)
                    for (int g = 0; g < G; ++g) CHECK(cnt[t][h * G + g] == 1, "row map G %d T %d", G, T);
                for (int kv = T; kv < T + 20; ++kv)
                    CHECK(attention_causal_end(kv, T, T - 1) == kv && attention_causal_end(kv, T, 0) == kv - T + 1,
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
                            return attention_causal_end(kv, T, attention_row_token(r, G));
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
    // Batched steps: every row belongs to the sequence whose qo range holds it (sequences
    // without rows skipped); row tiles cover each sequence's rows once, in order, never more
    // tiles than the host's launch bound.
    {
        uint64_t st = 0x9e3779b97f4a7c15ull;
        for (int trial = 0; trial < 400; ++trial) {
            const int B = 1 + (int)(st % 9);
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            std::vector<int> qo(B + 1, 0);
            for (int b = 0; b < B; ++b) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                const int r = (int)((st >> 33) % 7);
                qo[b + 1] = qo[b] + (r < 2 ? 0 : r < 5 ? 1 : (int)((st >> 40) % 90));
            }
            const int T = qo[B];
            for (int t = 0; t < T; ++t) {
                const int b = qo_seq_of_row(qo.data(), B, t);
                CHECK(b >= 0 && b < B && qo[b] <= t && t < qo[b + 1], "row %d of qo trial %d -> seq %d", t, trial, b);
            }
            for (int G : {1, 7}) {
                for (int bm : {8, 16, 64}) {
                    const int total = qo_tiles_total(qo.data(), B, G, bm);
                    CHECK(total <= qo_tiles_bound(T, B, G, bm), "tiles %d over bound (T %d B %d)", total, T, B);
                    std::vector<int> seen(T * G, 0);
                    int prev_b = 0, prev_r0 = -1;
                    for (int x = 0; x < total; ++x) {
                        int b = 0, r0 = 0;
                        CHECK(qo_tile(qo.data(), B, G, bm, x, &b, &r0), "tile %d of %d", x, total);
                        CHECK(b > prev_b || (b == prev_b && r0 > prev_r0), "tile order at %d", x);
                        prev_b = b;
                        prev_r0 = r0;
                        const int R = (qo[b + 1] - qo[b]) * G;
                        CHECK(r0 < R && r0 % bm == 0, "tile %d: row %d of %d", x, r0, R);
                        for (int r = r0; r < std::min(r0 + bm, R); ++r) seen[qo[b] * G + r]++;
                    }
                    int b = 0, r0 = 0;
                    CHECK(!qo_tile(qo.data(), B, G, bm, total, &b, &r0), "tile past the total");
                    for (int i = 0; i < T * G; ++i) CHECK(seen[i] == 1, "row %d covered %d times", i, seen[i]);
                }
            }
        }
    }
    check_attention_model();
    if (fails) {
        std::printf("%d index checks failed\n", fails);
        return 1;
    }
    std::printf("index_math: all checks passed\n");
    return 0;
}
