// Kernel parameter structs, shared by host and device. build.rs generates the Rust twins with
// bindgen, so the layouts agree by construction. Plain C: fixed-width types only.
#pragma once
#include <stdint.h>

// RMSNorm over rows: out[r, :] = round(w * round(x[r, :] * rsqrt(mean(x^2) + eps))).
typedef struct ReelRmsNormParams {
    uint64_t x;        // device pointer, [rows, cols]
    uint64_t w;        // [cols]
    uint64_t out;      // [rows, cols]
    int32_t rows;
    int32_t cols;
    int64_t x_stride;  // elements between rows
    int64_t out_stride;
    float eps;
} ReelRmsNormParams;

// M-RoPE on x [T, H, d]; pos [3, T] int32; sections in frequency pairs (t, h, w).
typedef struct ReelMropeParams {
    uint64_t x;
    uint64_t pos;
    uint64_t out;
    int32_t tokens;
    int32_t heads;
    int32_t head_dim;
    int32_t sec_t;
    int32_t sec_h;
    int32_t sec_w;
    int64_t x_stride;   // elements between tokens
    int64_t out_stride;
    float theta;
} ReelMropeParams;
