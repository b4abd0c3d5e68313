// Token sampling on the device: greedy argmax, or temperature -> top-k -> top-p -> draw, exactly
// as src/backend/sample.rs (sample_row) defines it. Weights are integers
// (floor(exp(s - m) * 2^40), with an exp written as explicit round-to-nearest multiplies and
// fmas), so every sum is exact and the token equals the CPU twin's bit for bit, whatever the
// reduction order.
//
// One 512-thread block per row; row r reads its own arguments (args + r * args_stride, or one
// shared set with stride 0), so every sequence of a batch samples with its own parameters.
// Passes over the row (from L2 after the first):
//   1. max / argmax / NaN / +inf;
//   2. top-k: a 4-pass radix select (8 bits per pass) of the k-th largest key, by count;
//   3. top-p: the candidates' total weight Z, then a 4-pass radix select by weight of the cutoff
//      key, and how many of the tokens tied at it are kept (lowest indices first);
//   4. the draw: kept totals per warp range, then per sub-range of the chosen range, then per
//      element of the chosen sub-range; each level is a scan in one warp and a ballot for the
//      first range whose cumulative kept weight exceeds the target.
// Every pass but the first reads the row at most once more; the grid and the work per block are
// fixed, so the kernel can sit in a captured decode graph.
#include "common.cuh"

typedef unsigned long long u64;

// A 128-bit threshold (hi, lo); kept as two words so no 128-bit temporaries reach ptxas.
struct Thr {
    u64 hi, lo;
};

// (v << shift) < t, for shift 0 or 32.
__device__ __forceinline__ bool below(u64 v, int shift, Thr t) {
    const u64 hi = shift ? v >> 32 : 0, lo = shift ? v << 32 : v;
    return hi < t.hi || (hi == t.hi && lo < t.lo);
}

#define S_NT REEL_SAMPLE_THREADS
#define S_NW (S_NT / 32)
#define S_FULL 0xffffffffu

// Order-preserving image of an f32 (sample::sample_key).
__device__ __forceinline__ unsigned s_key(float s) {
    const unsigned b = __float_as_uint(s);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float s_unkey(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// exp(d) for d in [-28, 0] with the operation sequence of sample::sample_exp.
__device__ __forceinline__ float s_exp(float d) {
    const float n = rintf(__fmul_rn(d, __uint_as_float(0x3fb8aa3bu)));
    float r = fmaf(-n, __uint_as_float(0x3f317200u), d);
    r = fmaf(-n, __uint_as_float(0x35bfbe8eu), r);
    float p = __uint_as_float(0x39500d01u);
    p = fmaf(p, r, __uint_as_float(0x3ab60b61u));
    p = fmaf(p, r, __uint_as_float(0x3c088889u));
    p = fmaf(p, r, __uint_as_float(0x3d2aaaabu));
    p = fmaf(p, r, __uint_as_float(0x3e2aaaabu));
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    return __fmul_rn(p, __uint_as_float((unsigned)((int)n + 127) << 23));
}

// floor(exp(s - m) * 2^40); 0 below exp(-28).
__device__ __forceinline__ u64 s_weight(float s, float m) {
    const float d = __fsub_rn(s, m);
    if (!(d >= -28.0f)) return 0;
    return __float2ull_rz(__fmul_rn(s_exp(d), 1099511627776.0f));
}

// splitmix64's finalizer over seed + (step + 1) * golden, high half (SampleArgs / sample_hash).
__device__ __forceinline__ unsigned s_hash(u64 seed, unsigned step) {
    u64 z = seed + ((u64)step + 1ull) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (unsigned)(z >> 32);
}

struct SampleRow {
    uint64_t x;
    int64_t base;
    int n;
    int dt;
    float t;
    float m;
    __device__ __forceinline__ float score(int i) const {
        return __fdiv_rn(load_f(x, base + i, dt), t);
    }
};

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(S_FULL, v, o);
    return v;
}

// Warp-wide (max, lowest index among equal maxima); every lane gets the pair.
__device__ __forceinline__ void warp_argmax(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(S_FULL, best, o);
        const int j = __shfl_xor_sync(S_FULL, bi, o);
        if (w > best || (w == best && j < bi)) {
            best = w;
            bi = j;
        }
    }
}

__device__ __forceinline__ unsigned warp_sum_u32(unsigned v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(S_FULL, v, o);
    return v;
}

struct SampleSmem {
    unsigned h_cnt[256];
    u64 h_w[256];
    u64 part_w[32];
    unsigned part_c[32];
    float red_v[S_NW];
    int red_i[S_NW];
    // Broadcasts.
    unsigned sel_key;
    unsigned sel_cnt;
    u64 sel_above;
    u64 b_w;
    unsigned b_c;
    int b_seg;
};

// The smallest candidate key kappa (candidates: key >= lo) with W(key > kappa) * 2^shift < thr,
// where W counts tokens (by_weight false) or sums their weights. Returns kappa; *above =
// W(key > kappa), *cnt = how many candidates have key kappa. Requires 0 * 2^shift < thr.
// Bins are walked from the top: "mass above" only grows on the way down, so the chosen bin is
// the lowest non-empty one that still satisfies the rule.
__device__ __forceinline__ unsigned radix_select(const SampleRow& row, unsigned lo, bool by_weight, int shift,
                                 Thr thr, SampleSmem& sm, u64* above_out, unsigned* cnt_out) {
    unsigned prefix = 0, mask = 0;
    u64 above = 0;
    unsigned cnt = 0;
    for (int pass = 0; pass < 4; ++pass) {
        const int sh = 24 - 8 * pass;
        for (int b = threadIdx.x; b < 256; b += S_NT) {
            sm.h_cnt[b] = 0;
            sm.h_w[b] = 0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < row.n; i += S_NT) {
            const float s = row.score(i);
            const unsigned k = s_key(s);
            if (k < lo || ((k ^ prefix) & mask) != 0) continue;
            const unsigned b = (k >> sh) & 255u;
            atomicAdd(&sm.h_cnt[b], 1u);
            if (by_weight) {
                const u64 w = s_weight(s, row.m);
                if (w != 0) atomicAdd(&sm.h_w[b], w);
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int l = threadIdx.x;
            // Lane l owns bins 255 - 8l down to 248 - 8l, so lanes ascend as bins descend.
            u64 tot = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int b = 255 - 8 * l - j;
                tot += by_weight ? sm.h_w[b] : (u64)sm.h_cnt[b];
            }
            u64 incl = tot;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u64 t = __shfl_up_sync(S_FULL, incl, o);
                if (l >= o) incl += t;
            }
            u64 run = above + (incl - tot);
            int found = -1;
            u64 found_above = 0;
            unsigned found_cnt = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int b = 255 - 8 * l - j;
                const unsigned c = sm.h_cnt[b];
                if (c != 0 && below(run, shift, thr)) {
                    found = b;
                    found_above = run;
                    found_cnt = c;
                }
                run += by_weight ? sm.h_w[b] : (u64)c;
            }
            const unsigned bal = __ballot_sync(S_FULL, found >= 0);
            // bal != 0: the top non-empty bin has "above" from the previous level, which passed.
            const int src = 31 - __clz(bal);
            if (l == src) {
                sm.sel_key = (unsigned)found;
                sm.sel_above = found_above;
                sm.sel_cnt = found_cnt;
            }
        }
        __syncthreads();
        prefix |= sm.sel_key << sh;
        mask |= 255u << sh;
        above = sm.sel_above;
        cnt = sm.sel_cnt;
        __syncthreads();  // everyone has read sel_* before the next pass rewrites them
    }
    *above_out = above;
    *cnt_out = cnt;
    return prefix;
}

// One warp: lane l holds a range's (weight of keys > kstar, count of keys == kstar); bases are
// the totals before lane 0's range. Returns the first lane whose cumulative kept weight exceeds
// `target` (ties at kstar kept up to n_keep, in index order) and that lane's exclusive bases, or
// -1 with the totals after lane 31 in the bases.
__device__ __forceinline__ int first_exceeding(u64 v, unsigned c, u64* bw, unsigned* bc,
                                               u64 wstar, unsigned n_keep, u64 target) {
    const int l = threadIdx.x & 31;
    u64 iv = v;
    unsigned ic = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 tv = __shfl_up_sync(S_FULL, iv, o);
        const unsigned tc = __shfl_up_sync(S_FULL, ic, o);
        if (l >= o) {
            iv += tv;
            ic += tc;
        }
    }
    const unsigned ce = min(*bc + ic, n_keep);
    const u64 end = *bw + iv + wstar * (u64)ce;
    const unsigned bal = __ballot_sync(S_FULL, end > target);
    if (bal == 0) {
        *bw += __shfl_sync(S_FULL, iv, 31);
        *bc += __shfl_sync(S_FULL, ic, 31);
        return -1;
    }
    const int f = __ffs(bal) - 1;
    *bw += __shfl_sync(S_FULL, iv - v, f);
    *bc += __shfl_sync(S_FULL, ic - c, f);
    return f;
}

// The (weight above kstar, ties at kstar) of elements [a, b), strided by `step` from a + off.
__device__ __forceinline__ void range_sums(const SampleRow& row, int a, int b, int off, int step,
                                           unsigned kstar, u64* v, unsigned* c) {
    u64 sv = 0;
    unsigned sc = 0;
    for (int i = a + off; i < b; i += step) {
        const float s = row.score(i);
        const unsigned k = s_key(s);
        if (k > kstar) sv += s_weight(s, row.m);
        else if (k == kstar) ++sc;
    }
    *v = sv;
    *c = sc;
}

extern "C" __global__ void __launch_bounds__(S_NT, 1) sample(ReelSampleParams p) {
    __shared__ SampleSmem sm;
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = p.cols;
    const int* a = reinterpret_cast<const int*>(p.args) + (int64_t)r * p.args_stride;
    int* out = reinterpret_cast<int*>(p.out);
    const float temp = __int_as_float(a[0]);
    const unsigned top_k = (unsigned)a[1];
    const float top_p = __int_as_float(a[2]);
    const bool greedy = !(temp > 0.0f);
    SampleRow row{p.x, (int64_t)r * p.x_stride, n, p.x_dt, temp, 0.0f};

    // 1. max (of the scores) / argmax with the lowest index on ties / NaN / +inf.
    float best = -INFINITY;
    int bi = 0x7fffffff;
    int nan = 0, pinf = 0;
    for (int i = tid; i < n; i += S_NT) {
        float v = load_f(p.x, row.base + i, p.x_dt);
        nan |= v != v;
        if (!greedy) v = __fdiv_rn(v, temp);
        pinf |= v == INFINITY;
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
    warp_argmax(best, bi);
    if (lane == 0) {
        sm.red_v[warp] = best;
        sm.red_i[warp] = bi;
    }
    nan = __syncthreads_or(nan);
    pinf = __syncthreads_or(pinf);
    if (warp == 0) {
        best = lane < S_NW ? sm.red_v[lane] : -INFINITY;
        bi = lane < S_NW ? sm.red_i[lane] : 0x7fffffff;
        warp_argmax(best, bi);
        if (lane == 0) {
            sm.red_v[0] = best;
            sm.red_i[0] = bi;
        }
    }
    __syncthreads();
    best = sm.red_v[0];
    bi = sm.red_i[0];
    if (nan) {
        if (tid == 0) out[r] = -1;
        return;
    }
    if (greedy) {
        // A row of -inf only: index 0, like torch.argmax.
        if (tid == 0) out[r] = bi == 0x7fffffff ? 0 : bi;
        return;
    }
    if (pinf || best == -INFINITY) {
        if (tid == 0) out[r] = -1;
        return;
    }
    row.m = best;

    // 2. top-k: candidates are the keys >= the k-th largest (ties with it stay).
    unsigned kth = 0;
    if (top_k > 0 && top_k < (unsigned)n) {
        u64 above;
        unsigned cnt;
        kth = radix_select(row, 0, false, 0, Thr{0, (u64)top_k}, sm, &above, &cnt);
    }

    // 3. top-p: the cutoff key and how many of its ties stay.
    unsigned kstar = kth, n_keep = 0xffffffffu;
    if (top_p < 1.0f) {
        u64 z = 0;
        for (int i = tid; i < n; i += S_NT) {
            const float s = row.score(i);
            if (s_key(s) >= kth) z += s_weight(s, row.m);
        }
        z = warp_sum_u64(z);
        if (lane == 0) sm.part_w[warp] = z;
        __syncthreads();
        z = 0;
        for (int w = 0; w < S_NW; ++w) z += sm.part_w[w];
        __syncthreads();
        const u64 p32 = __float2ull_rz(__fmul_rn(fmaxf(top_p, 0.0f), 4294967296.0f));
        Thr thr{__umul64hi(p32, z), p32 * z};
        if (thr.hi == 0 && thr.lo == 0) thr.lo = 1;  // the best token always stays
        u64 m_above;
        unsigned n_eq;
        kstar = radix_select(row, kth, true, 32, thr, sm, &m_above, &n_eq);
        const u64 ws = s_weight(s_unkey(kstar), row.m);
        // Ties at kstar in index order: the j-th has m_above + j * ws ranked before it.
        if (ws == 0) {
            n_keep = n_eq;
        } else {
            unsigned lo = 1, hi = n_eq;
            while (lo < hi) {
                const unsigned mid = lo + (hi - lo + 1) / 2;
                if (below(m_above + (u64)(mid - 1) * ws, 32, thr)) lo = mid;
                else hi = mid - 1;
            }
            n_keep = lo;
        }
    }
    const u64 wstar = s_weight(s_unkey(kstar), row.m);

    // 4. The draw. Level 1: S_NW warp ranges.
    const int r1 = (n + S_NW - 1) / S_NW;
    {
        u64 v;
        unsigned c;
        range_sums(row, warp * r1, min(n, (warp + 1) * r1), lane, 32, kstar, &v, &c);
        v = warp_sum_u64(v);
        c = warp_sum_u32(c);
        if (lane == 0) {
            sm.part_w[warp] = v;
            sm.part_c[warp] = c;
        }
    }
    __syncthreads();
    if (warp == 0) {
        const u64 v = lane < S_NW ? sm.part_w[lane] : 0;
        const unsigned c = lane < S_NW ? sm.part_c[lane] : 0;
        const u64 tw = warp_sum_u64(v);
        const unsigned tc = warp_sum_u32(c);
        const u64 total = tw + wstar * (u64)min(tc, n_keep);
        const unsigned draw = (a[7] & 1)
            ? (unsigned)a[6]
            : s_hash((u64)(unsigned)a[3] | ((u64)(unsigned)a[4] << 32), (unsigned)a[5]);
        // floor(draw * total / 2^32) < 2^58.
        const u64 target = (__umul64hi((u64)draw, total) << 32) | (((u64)draw * total) >> 32);
        u64 bw = 0;
        unsigned bc = 0;
        const int f = first_exceeding(v, c, &bw, &bc, wstar, n_keep, target);
        if (lane == 0) {
            sm.b_seg = f;
            sm.b_w = bw;
            sm.b_c = bc;
            sm.sel_above = target;
        }
    }
    __syncthreads();
    const int seg = sm.b_seg;
    if (seg < 0) {  // unreachable with exact sums; never leave the output stale
        if (tid == 0) out[r] = -1;
        return;
    }
    // Level 2: the chosen warp range in 32 sub-ranges, two per warp, each read coalesced.
    const int lo1 = seg * r1, hi1 = min(n, lo1 + r1);
    const int r2 = (hi1 - lo1 + 31) / 32;
    for (int sub = warp; sub < 32; sub += S_NW) {
        u64 v;
        unsigned c;
        const int a2 = lo1 + sub * r2;
        range_sums(row, a2, min(hi1, a2 + r2), lane, 32, kstar, &v, &c);
        v = warp_sum_u64(v);
        c = warp_sum_u32(c);
        if (lane == 0) {
            sm.part_w[sub] = v;
            sm.part_c[sub] = c;
        }
    }
    __syncthreads();
    if (warp != 0) return;
    const u64 target = sm.sel_above;
    u64 bw = sm.b_w;
    unsigned bc = sm.b_c;
    const int f2 = first_exceeding(sm.part_w[lane], sm.part_c[lane], &bw, &bc, wstar, n_keep,
                                   target);
    int token = -1;
    if (f2 >= 0) {
        // Level 3: the elements of the chosen sub-range, 32 at a time.
        const int lo2 = lo1 + f2 * r2, hi2 = min(hi1, lo2 + r2);
        for (int c0 = lo2; c0 < hi2; c0 += 32) {
            const int i = c0 + lane;
            u64 v = 0;
            unsigned c = 0;
            if (i < hi2) {
                const float s = row.score(i);
                const unsigned k = s_key(s);
                if (k > kstar) v = s_weight(s, row.m);
                else if (k == kstar) c = 1;
            }
            const int f3 = first_exceeding(v, c, &bw, &bc, wstar, n_keep, target);
            if (f3 >= 0) {
                token = c0 + f3;
                break;
            }
        }
    }
    if (lane == 0) out[r] = token;
}
