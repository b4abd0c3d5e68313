//! The kernel registry (every kernel the launchers may name, and the module it lives in) and
//! the checked launch path: grid/block/shared-memory limits are asserted on the host before
//! every launch, so a bad shape is an error naming the kernel, not a device fault.

use super::params::*;
use cudarc::driver::sys::CUfunction_attribute as FuncAttr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// Every kernel the launchers use. Launchers can only name kernels through this enum, and the
/// `kernel_names_in_fatbins` test checks each one is present in its embedded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    RmsNorm,
    RopeMrope,
    RopeVision,
    Add,
    Swiglu,
    Gelu,
    Cast,
    Embedding,
    CopyRows16,
    CopyRows4,
    CopyRows1,
    Argmax,
    GemvV16,
    GemvScalar,
    GemmMma,
    AttnPagedDecode,
    AttnPagedPrefill,
    AttnVarlen,
    AttnMerge,
    KvAppend,
    QgemvQ8_0Bf16,
    QgemvQ8_0F32,
    QgemvQ4kBf16,
    QgemvQ4kF32,
    QgemvQ6kBf16,
    QgemvQ6kF32,
    QgemmQ8_0,
    QgemmQ4k,
    QgemmQ6k,
    QEmbedding,
    AttnPagedPrefillMma,
    AttnVarlenMma,
    Sample,
}

impl Kernel {
    pub const ALL: &'static [Kernel] = &[
        Kernel::RmsNorm,
        Kernel::RopeMrope,
        Kernel::RopeVision,
        Kernel::Add,
        Kernel::Swiglu,
        Kernel::Gelu,
        Kernel::Cast,
        Kernel::Embedding,
        Kernel::CopyRows16,
        Kernel::CopyRows4,
        Kernel::CopyRows1,
        Kernel::Argmax,
        Kernel::GemvV16,
        Kernel::GemvScalar,
        Kernel::GemmMma,
        Kernel::AttnPagedDecode,
        Kernel::AttnPagedPrefill,
        Kernel::AttnVarlen,
        Kernel::AttnMerge,
        Kernel::KvAppend,
        Kernel::QgemvQ8_0Bf16,
        Kernel::QgemvQ8_0F32,
        Kernel::QgemvQ4kBf16,
        Kernel::QgemvQ4kF32,
        Kernel::QgemvQ6kBf16,
        Kernel::QgemvQ6kF32,
        Kernel::QgemmQ8_0,
        Kernel::QgemmQ4k,
        Kernel::QgemmQ6k,
        Kernel::QEmbedding,
        Kernel::AttnPagedPrefillMma,
        Kernel::AttnVarlenMma,
        Kernel::Sample,
    ];

    /// (module = kernels/<module>.cu, extern "C" name)
    pub const fn id(self) -> (&'static str, &'static str) {
        match self {
            Kernel::RmsNorm => ("norm", "rms_norm"),
            Kernel::RopeMrope => ("rope", "rope_mrope"),
            Kernel::RopeVision => ("rope", "rope_vision"),
            Kernel::Add => ("elementwise", "add"),
            Kernel::Swiglu => ("elementwise", "swiglu"),
            Kernel::Gelu => ("elementwise", "gelu"),
            Kernel::Cast => ("elementwise", "cast"),
            Kernel::Embedding => ("elementwise", "embedding"),
            Kernel::CopyRows16 => ("elementwise", "copy_rows_16"),
            Kernel::CopyRows4 => ("elementwise", "copy_rows_4"),
            Kernel::CopyRows1 => ("elementwise", "copy_rows_1"),
            Kernel::Argmax => ("argmax", "argmax"),
            Kernel::GemvV16 => ("gemv", "gemv_bf16_v16"),
            Kernel::GemvScalar => ("gemv", "gemv_scalar"),
            Kernel::GemmMma => ("gemm", "gemm_bf16_mma"),
            Kernel::AttnPagedDecode => ("attention", "attn_paged_decode"),
            Kernel::AttnPagedPrefill => ("attention", "attn_paged_prefill"),
            Kernel::AttnVarlen => ("attention", "attn_varlen"),
            Kernel::AttnMerge => ("attention", "attn_merge"),
            Kernel::KvAppend => ("attention", "kv_append"),
            Kernel::QgemvQ8_0Bf16 => ("quant", "qgemv_q8_0_bf16"),
            Kernel::QgemvQ8_0F32 => ("quant", "qgemv_q8_0_f32"),
            Kernel::QgemvQ4kBf16 => ("quant", "qgemv_q4_k_bf16"),
            Kernel::QgemvQ4kF32 => ("quant", "qgemv_q4_k_f32"),
            Kernel::QgemvQ6kBf16 => ("quant", "qgemv_q6_k_bf16"),
            Kernel::QgemvQ6kF32 => ("quant", "qgemv_q6_k_f32"),
            Kernel::QgemmQ8_0 => ("quant", "qgemm_q8_0"),
            Kernel::QgemmQ4k => ("quant", "qgemm_q4_k"),
            Kernel::QgemmQ6k => ("quant", "qgemm_q6_k"),
            Kernel::QEmbedding => ("quant", "qembedding"),
            Kernel::AttnPagedPrefillMma => ("attention_mma", "attn_paged_prefill_mma"),
            Kernel::AttnVarlenMma => ("attention_mma", "attn_varlen_mma"),
            Kernel::Sample => ("sampling", "sample"),
        }
    }

    pub fn name(self) -> &'static str {
        self.id().1
    }
}

// Each launch passes exactly one of these structs by value; they are plain C data.
unsafe impl DeviceRepr for ReelRmsNormParams {}
unsafe impl DeviceRepr for ReelMropeParams {}
unsafe impl DeviceRepr for ReelRopeVisionParams {}
unsafe impl DeviceRepr for ReelEltParams {}
unsafe impl DeviceRepr for ReelEmbeddingParams {}
unsafe impl DeviceRepr for ReelCopyRowsParams {}
unsafe impl DeviceRepr for ReelMatmulParams {}
unsafe impl DeviceRepr for ReelArgmaxParams {}
unsafe impl DeviceRepr for ReelKvAppendParams {}
unsafe impl DeviceRepr for ReelAttnParams {}
unsafe impl DeviceRepr for ReelAttnMergeParams {}
unsafe impl DeviceRepr for ReelQMatmulParams {}
unsafe impl DeviceRepr for ReelQEmbeddingParams {}
unsafe impl DeviceRepr for ReelSampleParams {}

/// A loaded kernel with the limits ptxas gave it.
pub struct LoadedKernel {
    pub func: CudaFunction,
    pub max_threads: u32,
    pub static_smem: u32,
    pub regs: u32,
    pub local_bytes: u32,
    /// Dynamic shared memory the function has been opted in to (> 48 KB needs an attribute).
    pub dyn_smem_optin: u32,
}

pub struct Kernels {
    pub loaded: Vec<LoadedKernel>,
    _modules: Vec<Arc<CudaModule>>,
}

fn fattr(f: &CudaFunction, a: FuncAttr) -> Result<i32, String> {
    unsafe { cudarc::driver::result::function::get_function_attribute(f.cu_function(), a) }
        .map_err(|e| format!("cuFuncGetAttribute: {e}"))
}

impl Kernels {
    /// Loads every embedded module and looks up every kernel in [`Kernel::ALL`]; a missing one
    /// is an error naming it (the build and the launchers disagree).
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, String> {
        let mut modules: Vec<(&str, Arc<CudaModule>)> = Vec::new();
        for (stem, bytes) in super::MODULES {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()))
                .map_err(|e| format!("loading module {stem}: {e}"))?;
            modules.push((stem, m));
        }
        let mut loaded = Vec::new();
        for k in Kernel::ALL {
            let (module, name) = k.id();
            let m = modules
                .iter()
                .find(|(s, _)| *s == module)
                .ok_or_else(|| format!("kernel module {module}.cu is not in this build"))?;
            let func =
                m.1.load_function(name)
                    .map_err(|e| format!("kernel {name} in {module}.cu: {e}"))?;
            loaded.push(LoadedKernel {
                max_threads: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
                    as u32,
                static_smem: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)? as u32,
                regs: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_NUM_REGS)? as u32,
                local_bytes: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)? as u32,
                dyn_smem_optin: 48 * 1024,
                func,
            });
        }
        Ok(Kernels {
            loaded,
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
        })
    }

    pub fn get(&self, k: Kernel) -> &LoadedKernel {
        let i = Kernel::ALL
            .iter()
            .position(|x| *x == k)
            .expect("Kernel::ALL lists every kernel");
        &self.loaded[i]
    }

    fn get_mut(&mut self, k: Kernel) -> &mut LoadedKernel {
        let i = Kernel::ALL
            .iter()
            .position(|x| *x == k)
            .expect("Kernel::ALL lists every kernel");
        &mut self.loaded[i]
    }
}

/// A launch request, checked by [`check_launch`] before it reaches the driver.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub dyn_smem: u32,
}

/// Device limits the launch checks need.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Opt-in shared memory per block (static + dynamic), bytes.
    pub smem_optin: u32,
}

/// Host-side launch asserts (kernels.md §10); pure, so it is unit-tested without a device.
pub fn check_launch(
    k: Kernel,
    l: &Launch,
    max_threads: u32,
    static_smem: u32,
    lim: &Limits,
) -> Result<(), String> {
    let name = k.name();
    let (gx, gy, gz) = l.grid;
    if gx == 0 || gy == 0 || gz == 0 {
        return Err(format!("{name}: empty grid {:?}", l.grid));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(format!(
            "{name}: grid {:?} exceeds the device limits (2^31-1, 65535, 65535)",
            l.grid
        ));
    }
    if l.block == 0 || l.block % 32 != 0 || l.block > 1024 {
        return Err(format!(
            "{name}: block of {} threads is not a multiple of 32 in 32..=1024",
            l.block
        ));
    }
    if l.block > max_threads {
        return Err(format!(
            "{name}: block of {} threads exceeds the kernel's limit {max_threads}",
            l.block
        ));
    }
    if static_smem + l.dyn_smem > lim.smem_optin {
        return Err(format!(
            "{name}: {} B of shared memory exceeds the device's opt-in limit {} B",
            static_smem + l.dyn_smem,
            lim.smem_optin
        ));
    }
    Ok(())
}

impl super::CudaBackend {
    /// Checks and launches kernel `k` with its parameter struct.
    pub(super) fn launch<P: DeviceRepr>(
        &mut self,
        k: Kernel,
        l: Launch,
        params: &P,
    ) -> crate::Result<()> {
        let lim = Limits {
            smem_optin: self.info.smem_optin,
        };
        let lk = self.kernels.get(k);
        check_launch(k, &l, lk.max_threads, lk.static_smem, &lim).map_err(super::err)?;
        if l.dyn_smem > lk.dyn_smem_optin {
            // A raw driver call: make this context current on the calling thread first.
            self.ctx
                .bind_to_thread()
                .map_err(|e| super::err(format!("{}: binding the context: {e}", k.name())))?;
            // Above 48 KB the function must be opted in (cudaFuncSetAttribute) first.
            unsafe {
                cudarc::driver::result::function::set_function_attribute(
                    lk.func.cu_function(),
                    FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    l.dyn_smem as i32,
                )
            }
            .map_err(|e| {
                super::err(format!(
                    "{}: raising the shared-memory limit: {e}",
                    k.name()
                ))
            })?;
            self.kernels.get_mut(k).dyn_smem_optin = l.dyn_smem;
        }
        let lk = self.kernels.get(k);
        let cfg = LaunchConfig {
            grid_dim: l.grid,
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: l.dyn_smem,
        };
        let mut b = self.stream.launch_builder(&lk.func);
        b.arg(params);
        unsafe { b.launch(cfg) }.map_err(|e| super::err(format!("launching {}: {e}", k.name())))?;
        Ok(())
    }
}
