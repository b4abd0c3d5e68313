// Host replay of kernels/quant.cu's weight mappings with the exact decoders the kernels call
// (kernels/quant_decode.h). Run by the Rust test `backend::cuda::tests::quant_decode_host_checks`,
// which writes quantized rows to a file, runs this program, and compares each decoded row with
// reel::quant::dequantize_row bit for bit.
//
// usage: quant_check IN OUT
// IN: records of (i32 qtype, i32 K, i32 rows, i32 shift) then rows * row_bytes bytes.
// OUT: per record, 1 + 3 * 3 + 1 + 1 decodings of rows * K f32 each:
//   GEMV windows for x rows mc = 1, 3, 8 and x element sizes 2 and 4 (6 decodings; the rows
//   placed `shift` bytes past a 16-byte boundary), the GEMM tile mapping, the embedding mapping.
// Exits nonzero (printing the first failures) when a structural property breaks: a weight
// decoded twice or never, a window larger than its smem buffer, an x index outside its chunk.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../quant_decode.h"
#include "check.h"

template <int QT>
static void decode8(const uint8_t* u, int e, float* w) { q_decode<QT, 8>(u, e, w); }
template <int QT>
static void decode16(const uint8_t* u, int e, float* w) { q_decode<QT, 16>(u, e, w); }

static void dec(int qt, int n, const uint8_t* u, int e, float* w) {
    if (n == 8) {
        if (qt == REEL_QT_Q8_0) decode8<REEL_QT_Q8_0>(u, e, w);
        else if (qt == REEL_QT_Q4_K) decode8<REEL_QT_Q4_K>(u, e, w);
        else decode8<REEL_QT_Q6_K>(u, e, w);
    } else {
        if (qt == REEL_QT_Q8_0) decode16<REEL_QT_Q8_0>(u, e, w);
        else if (qt == REEL_QT_Q4_K) decode16<REEL_QT_Q4_K>(u, e, w);
        else decode16<REEL_QT_Q6_K>(u, e, w);
    }
}

// The GEMV's per-warp loop (qgemv in quant.cu) for one row: x chunks, windows, 16-byte chunk
// copies into a 2 KB buffer, lane l decoding elements 8l..8l+7 of each unit.
static void gemv_row(int qt, int K, const uint8_t* mem, uint64_t row, int mc, int xbytes, float* out) {
    const int WU = qgemv_window_units(qt), UB = qt_unit_bytes(qt);
    const int KC = qgemv_chunk(mc, xbytes);
    CHECK(KC >= 256 && KC % 256 == 0 && mc * KC * xbytes <= REEL_QGEMV_X_BYTES, "chunk %d for mc %d", KC, mc);
    const int chunk_units = KC / 256, units = (K + 255) / 256;
    std::vector<int> seen(K, 0);
    uint8_t wb[REEL_QGEMV_WIN_BYTES];
    int wu0 = 0, wnu = qgemv_window_len(0, WU, chunk_units, units);
    QWin win = qgemv_window(row, qt, 0, wnu, K);
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = KC < K - k0 ? KC : K - k0;
        const int uend = (k0 + kc + 255) / 256;
        while (wu0 < uend) {
            CHECK(win.nchunks <= 128, "qt %d K %d: %d chunks", qt, K, win.nchunks);
            CHECK(win.base % 16 == 0 && win.off >= 0 && win.off < 16, "window placement");
            std::memset(wb, 0xAB, sizeof wb);  // stale bytes must never be decoded
            for (int c = 0; c < win.nchunks && c < 128; ++c) std::memcpy(wb + 16 * c, mem + win.base + 16 * c, 16);
            const int cu0 = wu0, cnu = wnu, coff = win.off, copied = win.nchunks;
            CHECK(cnu >= 1 && coff + (cnu - 1) * UB + 2 <= 16 * win.nchunks, "window too short");
            wu0 += wnu;
            if (wu0 < units) {
                wnu = qgemv_window_len(wu0, WU, chunk_units, units);
                win = qgemv_window(row, qt, wu0, wnu, K);
            }
            for (int s = 0; s < cnu; ++s) {
                for (int lane = 0; lane < 32; ++lane) {
                    const int kb = (cu0 + s) * 256 + lane * 8;
                    if (kb >= K) continue;
                    const int kx = kb - k0;
                    CHECK(kx >= 0 && kx + 8 <= kc, "x index %d outside chunk [%d, +%d)", kb, k0, kc);
                    // the lane's block (its whole super-block for K-quants) lies inside the
                    // chunks copied for this window
                    const int bl = qt_block_len(qt);
                    const int need = coff + s * UB + (int)qt_row_bytes(qt, ((kb % 256) / bl + 1) * bl);
                    CHECK(need <= 16 * copied, "qt %d K %d: weight %d needs byte %d of %d copied", qt, K, kb, need, 16 * copied);
                    dec(qt, 8, wb + coff + s * UB, lane * 8, out + kb);
                    for (int i = 0; i < 8; ++i) seen[kb + i]++;
                }
            }
        }
    }
    for (int k = 0; k < K; ++k) CHECK(seen[k] == 1, "qt %d K %d mc %d: weight %d decoded %d times", qt, K, mc, k, seen[k]);
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::printf("usage: quant_check IN OUT\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    FILE* out = std::fopen(argv[2], "wb");
    if (!in || !out) {
        std::printf("cannot open files\n");
        return 2;
    }
    int hdr[4];
    int records = 0;
    while (std::fread(hdr, sizeof(int), 4, in) == 4) {
        const int qt = hdr[0], K = hdr[1], rows = hdr[2], shift = hdr[3];
        const int64_t rb = qt_row_bytes(qt, K);
        // rows at `shift` bytes past a 16-byte boundary, padded to whole chunks (as load_weight does)
        const size_t total = (size_t)shift + rb * rows;
        std::vector<uint8_t> mem((total + 15) / 16 * 16 + 16, 0);
        if (std::fread(mem.data() + shift, 1, rb * rows, in) != (size_t)(rb * rows)) {
            std::printf("short record\n");
            return 2;
        }
        std::vector<float> dst((size_t)rows * K);
        const int mcs[3] = {1, 3, 8};
        for (int xbytes = 2; xbytes <= 4; xbytes += 2) {
            for (int mi = 0; mi < 3; ++mi) {
                for (int n = 0; n < rows; ++n)
                    gemv_row(qt, K, mem.data(), (uint64_t)shift + (uint64_t)n * rb, mcs[mi], xbytes, dst.data() + (size_t)n * K);
                std::fwrite(dst.data(), sizeof(float), dst.size(), out);
            }
        }
        // GEMM: thread t of a 32-wide K tile decodes 16 weights at k0 + 16 (t % 2).
        for (int n = 0; n < rows; ++n) {
            const uint8_t* r = mem.data() + shift + (size_t)n * rb;
            for (int k0 = 0; k0 < K; k0 += 32)
                for (int kh = 0; kh < 32; kh += 16) {
                    const int k = k0 + kh;
                    dec(qt, 16, r + (int64_t)(k >> 8) * qt_unit_bytes(qt), k & 255, dst.data() + (size_t)n * K + k);
                }
        }
        std::fwrite(dst.data(), sizeof(float), dst.size(), out);
        // Embedding: thread i decodes 8 weights at 8i.
        for (int n = 0; n < rows; ++n) {
            const uint8_t* r = mem.data() + shift + (size_t)n * rb;
            for (int e0 = 0; e0 < K; e0 += 8)
                dec(qt, 8, r + (int64_t)(e0 >> 8) * qt_unit_bytes(qt), e0 & 255, dst.data() + (size_t)n * K + e0);
        }
        std::fwrite(dst.data(), sizeof(float), dst.size(), out);
        ++records;
    }
    // Window geometry: every type's window plus worst misalignment fits 4 chunks per lane.
    for (int qt = 1; qt <= 3; ++qt) {
        const int wu = qgemv_window_units(qt);
        CHECK(wu >= 1 && 14 + wu * qt_unit_bytes(qt) <= REEL_QGEMV_WIN_BYTES, "qt %d window %d units", qt, wu);
        CHECK((14 + wu * qt_unit_bytes(qt) + 15) / 16 <= 4 * 32, "qt %d window chunks", qt);
    }
    for (int mc = 1; mc <= REEL_QGEMV_ROWS; ++mc)
        for (int xb = 2; xb <= 4; xb += 2) {
            const int kc = qgemv_chunk(mc, xb);
            CHECK(kc >= 256 && kc % 256 == 0 && mc * kc * xb <= REEL_QGEMV_X_BYTES, "chunk mc %d xb %d = %d", mc, xb, kc);
        }
    std::fclose(out);
    if (fails) {
        std::printf("%d checks failed\n", fails);
        return 1;
    }
    std::printf("%d records; all checks passed\n", records);
    return 0;
}
