// Elementwise ops, embedding gather and indexed row copies. All memory-bound; each kernel walks
// a [rows, cols] view (row strides allow column blocks of wider tensors) with a grid-stride
// loop, converts through f32 and rounds once at the store, as the CPU twins do.
// CPU twins: src/backend/cpu (add, swiglu, gelu, cast, embedding, gather_rows, scatter_rows).
#include "common.cuh"
#include "epilogue.cuh"

template <int OP>
__device__ __forceinline__ float elt_op(float a, float b, int out_dt);

// out = round(a + b)
template <>
__device__ __forceinline__ float elt_op<0>(float a, float b, int) { return a + b; }
// out = round(round(silu(gate)) * up) (epilogue.cuh, shared with the GEMM epilogues).
template <>
__device__ __forceinline__ float elt_op<1>(float g, float u, int out_dt) { return epi_swiglu(g, u, out_dt); }
// exact GELU (epilogue.cuh).
template <>
__device__ __forceinline__ float elt_op<2>(float x, float, int) { return epi_gelu(x); }
// cast
template <>
__device__ __forceinline__ float elt_op<3>(float x, float, int) { return x; }

template <int OP>
__device__ __forceinline__ void elt_kernel(const ReelEltParams& p) {
    const int64_t total = p.rows * p.cols;
    const bool binary = OP <= 1;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / p.cols, c = i - r * p.cols;
        const float a = load_f(p.a, r * p.a_stride + c, p.a_dt);
        const float b = binary ? load_f(p.b, r * p.b_stride + c, p.b_dt) : 0.0f;
        store_f(p.out, r * p.out_stride + c, p.out_dt, elt_op<OP>(a, b, p.out_dt));
    }
}

extern "C" __global__ void add(ReelEltParams p) { elt_kernel<0>(p); }
extern "C" __global__ void swiglu(ReelEltParams p) { elt_kernel<1>(p); }
extern "C" __global__ void gelu(ReelEltParams p) { elt_kernel<2>(p); }
extern "C" __global__ void cast(ReelEltParams p) { elt_kernel<3>(p); }

// grid = tokens; one block copies (and converts) one table row.
extern "C" __global__ void embedding(ReelEmbeddingParams p) {
    const int t = blockIdx.x;
    if (t >= p.tokens) return;
    const int id = reinterpret_cast<const int*>(p.ids)[t];
    const bool ok = id >= 0 && id < p.vocab;
    const int64_t src = (int64_t)(ok ? id : 0) * p.table_stride, dst = (int64_t)t * p.out_stride;
    for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
        const float v = ok ? load_f(p.table, src + c, p.table_dt) : 0.0f;
        store_f(p.out, dst + c, p.out_dt, v);
    }
}

// gather_rows (dst row i <- src row idx[i]) and scatter_rows (dst row idx[i] <- src row i):
// grid = n_idx; one block copies one row in units of U bytes (the launcher picks the widest
// unit that divides the row length, both strides and both base addresses).
template <typename U, bool SCATTER>
__device__ __forceinline__ void index_rows(const ReelRowsParams& p) {
    const int i = blockIdx.x;
    if (i >= p.n_idx) return;
    const int64_t j = reinterpret_cast<const int*>(p.idx)[i];
    const int64_t sr = SCATTER ? i : j, dr = SCATTER ? j : i;
    if (sr < 0 || sr >= p.src_rows || dr < 0 || dr >= p.dst_rows) return;
    const U* s = reinterpret_cast<const U*>(p.src + sr * p.src_stride_bytes);
    U* d = reinterpret_cast<U*>(p.dst + dr * p.dst_stride_bytes);
    const int64_t n = p.row_bytes / (int64_t)sizeof(U);
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) d[c] = s[c];
}

extern "C" __global__ void gather_rows_16(ReelRowsParams p) { index_rows<uint4, false>(p); }
extern "C" __global__ void gather_rows_4(ReelRowsParams p) { index_rows<uint32_t, false>(p); }
extern "C" __global__ void gather_rows_1(ReelRowsParams p) { index_rows<uint8_t, false>(p); }
extern "C" __global__ void scatter_rows_16(ReelRowsParams p) { index_rows<uint4, true>(p); }
extern "C" __global__ void scatter_rows_4(ReelRowsParams p) { index_rows<uint32_t, true>(p); }
extern "C" __global__ void scatter_rows_1(ReelRowsParams p) { index_rows<uint8_t, true>(p); }
