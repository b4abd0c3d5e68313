//! cuBLASLt as a dense bf16 GEMM provider, loaded at run time (cudarc's dynamic loading):
//! nothing links against it at build time, and a machine without `libcublasLt.so.13` keeps the
//! hand-written kernels (the backend says so in one line on stderr).
//!
//! Row-major `out[M, N] = x[M, K] @ w[N, K]^T` is, read column-major, `out^T = w^T' x^T'`
//! where a row-major `[R, C]` matrix with row stride `ld` is a column-major `C x R` matrix with
//! leading dimension `ld`. So cuBLASLt runs with m = N, n = M, k = K, A = w (stored K x N,
//! ld = w's row stride, op T), B = x (stored K x M, ld = x's row stride, op N) and D = out
//! (N x M, ld = out's row stride); the bias is per row of D, i.e. per column of out, added in
//! f32 before the one rounding (`CUBLASLT_EPILOGUE_BIAS`). [`LtShape::of`] is that mapping and
//! the host test emulates the column-major call on it. f32 compute, bf16 (or f32) D.
//!
//! One handle and one workspace per backend; descriptors and the heuristic's algorithm are
//! cached per shape (the first call of a shape asks the heuristic, later ones only set the
//! bias pointer), and every call is a plain `cublasLtMatmul` on the backend's stream with the
//! fixed workspace, so it is recorded into CUDA graphs like any kernel.

use super::err;
use crate::error::Result;
use crate::tensor::DType;
use cudarc::cublaslt::sys;
use std::collections::HashMap;
use std::ffi::c_void;

/// Workspace handed to every call (what cuBLAS recommends on Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The column-major call for row-major `out[M, N] = x[M, K] @ w[N, K]^T` (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LtShape {
    /// cuBLAS m, n, k: rows of D (= N), columns of D (= M), the reduction (= K).
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// A = w: stored `a_rows x a_cols` column-major (= K x N), op T.
    pub a_rows: u64,
    pub a_cols: u64,
    pub lda: i64,
    /// B = x: stored `b_rows x b_cols` (= K x M), op N.
    pub b_rows: u64,
    pub b_cols: u64,
    pub ldb: i64,
    /// D = out: `m x n` (= N x M).
    pub ldd: i64,
}

impl LtShape {
    pub fn of(
        m: usize,
        n: usize,
        k: usize,
        x_stride: usize,
        w_stride: usize,
        out_stride: usize,
    ) -> LtShape {
        LtShape {
            m: n as u64,
            n: m as u64,
            k: k as u64,
            a_rows: k as u64,
            a_cols: n as u64,
            lda: w_stride as i64,
            b_rows: k as u64,
            b_cols: m as u64,
            ldb: x_stride as i64,
            ldd: out_stride as i64,
        }
    }
}

/// Largest power of two (up to 256) dividing a device address: the alignment cuBLASLt may
/// assume for an operand (its heuristic default is 256).
pub fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    shape: LtShape,
    out_f32: bool,
    /// None: no bias; Some(true): f32 bias; Some(false): bf16 bias.
    bias_f32: Option<bool>,
    align: [u32; 3],
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

/// The loaded library: a handle, the workspace, and the per-shape plans (None: the heuristic
/// found no algorithm, so that shape stays on the hand-written kernels).
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    _workspace_mem: cudarc::driver::CudaSlice<u8>,
    plans: HashMap<Key, Option<Plan>>,
    pub version: usize,
}

// The handle and descriptors are used from the backend's thread only; the backend is Send.
unsafe impl Send for Lt {}

fn lt_err(what: &str, e: impl std::fmt::Debug) -> crate::error::Error {
    err(format!("cuBLASLt {what}: {e:?}"))
}

impl Lt {
    /// Loads libcublasLt (13.x) and creates a handle and the workspace, or says why not.
    pub fn load(
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> std::result::Result<Lt, String> {
        if !unsafe { sys::is_culib_present() } {
            return Err("libcublasLt.so.13 is not on the loader path".into());
        }
        let version = unsafe { sys::cublasLtGetVersion() };
        if version / 10000 != 13 {
            return Err(format!(
                "found cuBLASLt {}.{}.{}, these bindings are for 13.x",
                version / 10000,
                version / 100 % 100,
                version % 100
            ));
        }
        let handle = cudarc::cublaslt::result::create_handle()
            .map_err(|e| format!("cublasLtCreate failed: {e:?}"))?;
        let mem = match stream.alloc_zeros::<u8>(WORKSPACE_BYTES) {
            Ok(m) => m,
            Err(e) => {
                unsafe {
                    let _ = cudarc::cublaslt::result::destroy_handle(handle);
                }
                return Err(format!(
                    "allocating its {WORKSPACE_BYTES}-byte workspace: {e}"
                ));
            }
        };
        use cudarc::driver::DevicePtr;
        let workspace = mem.device_ptr(stream).0;
        Ok(Lt {
            handle,
            workspace,
            _workspace_mem: mem,
            plans: HashMap::new(),
            version,
        })
    }

    /// "13.1.1" style.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }

    fn make_plan(&self, key: &Key) -> Result<Option<Plan>> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        use sys::cudaDataType_t as T;
        let s = key.shape;
        let out_t = if key.out_f32 {
            T::CUDA_R_32F
        } else {
            T::CUDA_R_16BF
        };
        unsafe {
            let desc = cudarc::cublaslt::result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                T::CUDA_R_32F,
            )
            .map_err(|e| lt_err("matmul descriptor", e))?;
            let set = |attr: D, v: *const c_void, n: usize| {
                cudarc::cublaslt::result::set_matmul_desc_attribute(desc, attr, v, n)
                    .map_err(|e| lt_err("descriptor attribute", e))
            };
            let (op_t, op_n) = (1i32, 0i32); // CUBLAS_OP_T, CUBLAS_OP_N
            set(D::CUBLASLT_MATMUL_DESC_TRANSA, &op_t as *const i32 as _, 4)?;
            set(D::CUBLASLT_MATMUL_DESC_TRANSB, &op_n as *const i32 as _, 4)?;
            if let Some(f32_bias) = key.bias_f32 {
                let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                set(
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epi as *const _ as _,
                    std::mem::size_of_val(&epi),
                )?;
                let bt = if f32_bias {
                    T::CUDA_R_32F
                } else {
                    T::CUDA_R_16BF
                };
                set(
                    D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &bt as *const _ as _,
                    std::mem::size_of_val(&bt),
                )?;
            }
            let layout = |t: T, r: u64, c: u64, ld: i64| {
                cudarc::cublaslt::result::create_matrix_layout(t, r, c, ld)
                    .map_err(|e| lt_err("matrix layout", e))
            };
            let a = layout(T::CUDA_R_16BF, s.a_rows, s.a_cols, s.lda)?;
            let b = layout(T::CUDA_R_16BF, s.b_rows, s.b_cols, s.ldb)?;
            let d = layout(out_t, s.m, s.n, s.ldd)?;
            let pref = cudarc::cublaslt::result::create_matmul_pref()
                .map_err(|e| lt_err("preference", e))?;
            let ws = WORKSPACE_BYTES as u64;
            let setp = |attr: P, v: *const c_void, n: usize| {
                cudarc::cublaslt::result::set_matmul_pref_attribute(pref, attr, v, n)
                    .map_err(|e| lt_err("preference attribute", e))
            };
            setp(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as _,
                8,
            )?;
            let [aa, ab, ad] = key.align;
            setp(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                &aa as *const u32 as _,
                4,
            )?;
            setp(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                &ab as *const u32 as _,
                4,
            )?;
            setp(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                &ad as *const u32 as _,
                4,
            )?;
            setp(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                &ad as *const u32 as _,
                4,
            )?;
            let heur = cudarc::cublaslt::result::get_matmul_algo_heuristic(
                self.handle,
                desc,
                a,
                b,
                d,
                d,
                pref,
            );
            let _ = cudarc::cublaslt::result::destroy_matmul_pref(pref);
            match heur {
                Ok(h) => Ok(Some(Plan {
                    desc,
                    layouts: [a, b, d],
                    algo: h.algo,
                })),
                Err(_) => {
                    let _ = cudarc::cublaslt::result::destroy_matmul_desc(desc);
                    for l in [a, b, d] {
                        let _ = cudarc::cublaslt::result::destroy_matrix_layout(l);
                    }
                    Ok(None)
                }
            }
        }
    }

    /// Enqueues `out = x @ w^T (+ bias)` on `stream`; Ok(false) when cuBLASLt has no algorithm
    /// for this shape and alignment (the caller runs its own kernel).
    #[allow(clippy::too_many_arguments, clippy::not_unsafe_ptr_arg_deref)]
    pub fn matmul(
        &mut self,
        stream: sys::cudaStream_t,
        shape: LtShape,
        x: u64,
        w: u64,
        bias: Option<(u64, DType)>,
        out: u64,
        out_dt: DType,
    ) -> Result<bool> {
        let bias_f32 = match bias {
            None => None,
            Some((_, DType::F32)) => Some(true),
            Some((_, DType::BF16)) if out_dt == DType::BF16 => Some(false),
            Some(_) => return Ok(false),
        };
        let key = Key {
            shape,
            out_f32: match out_dt {
                DType::F32 => true,
                DType::BF16 => false,
                _ => return Ok(false),
            },
            bias_f32,
            align: [alignment(w), alignment(x), alignment(out)],
        };
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(&key)?;
            self.plans.insert(key, plan);
        }
        let Some(plan) = self.plans.get(&key).and_then(|p| p.as_ref()) else {
            return Ok(false);
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        unsafe {
            if let Some((bp, _)) = bias {
                cudarc::cublaslt::result::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bp as *const u64 as _,
                    8,
                )
                .map_err(|e| lt_err("bias pointer", e))?;
            }
            let [a, b, d] = plan.layouts;
            cudarc::cublaslt::result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as _,
                &beta as *const f32 as _,
                w as *const c_void,
                a,
                x as *const c_void,
                b,
                out as *const c_void,
                d,
                out as *mut c_void,
                d,
                &plan.algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream,
            )
            .map_err(|e| lt_err("matmul", e))?;
        }
        Ok(true)
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        unsafe {
            for plan in self.plans.values().flatten() {
                let _ = cudarc::cublaslt::result::destroy_matmul_desc(plan.desc);
                for l in plan.layouts {
                    let _ = cudarc::cublaslt::result::destroy_matrix_layout(l);
                }
            }
            let _ = cudarc::cublaslt::result::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-major call cuBLAS would make, emulated: D[i + j ldd] = sum_l op(A)[i, l]
    /// op(B)[l, j] (+ bias[i]) with op(A)[i, l] = A[l + i lda] (T) and op(B)[l, j] = B[l + j ldb]
    /// (N), over flat buffers exactly as the pointers and leading dimensions address them.
    fn emulate(s: &LtShape, a: &[f64], b: &[f64], bias: Option<&[f64]>, d: &mut [f64]) {
        assert_eq!((s.a_rows, s.b_rows), (s.k, s.k));
        assert_eq!((s.a_cols, s.b_cols), (s.m, s.n));
        for j in 0..s.n as usize {
            for i in 0..s.m as usize {
                let mut acc = 0.0;
                for l in 0..s.k as usize {
                    acc += a[l + i * s.lda as usize] * b[l + j * s.ldb as usize];
                }
                d[i + j * s.ldd as usize] = acc + bias.map_or(0.0, |b| b[i]);
            }
        }
    }

    /// The mapping gives row-major x @ w^T + bias for strided x, w and out (column views of
    /// wider buffers), and leaves the out padding alone.
    #[test]
    fn row_major_tn_maps_onto_the_column_major_call() {
        for (m, n, k, xs, ws, os) in [
            (3usize, 5usize, 7usize, 7usize, 7usize, 5usize),
            (4, 6, 8, 11, 9, 10),
            (1, 3, 2, 2, 5, 3),
            (5, 1, 4, 6, 4, 1),
        ] {
            let x: Vec<f64> = (0..m * xs).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
            let w: Vec<f64> = (0..n * ws).map(|i| ((i * 13 % 7) as f64) - 3.0).collect();
            let bias: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
            let s = LtShape::of(m, n, k, xs, ws, os);
            let mut out = vec![f64::NAN; m * os];
            emulate(&s, &w, &x, Some(&bias), &mut out);
            for r in 0..m {
                for c in 0..os {
                    let got = out[r * os + c];
                    if c < n {
                        let want: f64 =
                            (0..k).map(|l| x[r * xs + l] * w[c * ws + l]).sum::<f64>() + bias[c];
                        assert_eq!(got, want, "{m}x{n}x{k} at ({r}, {c})");
                    } else {
                        assert!(got.is_nan(), "padding column {c} written");
                    }
                }
            }
        }
    }

    #[test]
    fn alignment_of_addresses() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0010), 16);
        assert_eq!(alignment(0x7f00_0000_0a00), 256);
        assert_eq!(alignment(0x7f00_0000_0006), 2);
    }
}
