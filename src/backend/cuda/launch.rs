//! The kernel registry and the checked launch path: grid/block/shared-memory limits are
//! asserted on the host before every launch, so a bad shape is an error naming the kernel, not
//! a device fault.
//!
//! Each launcher file declares the kernels it launches once, with [`kernels!`]: a const per
//! kernel (what its launches name) and the file's `KERNELS` table; `super::KERNEL_TABLES` joins
//! the tables into the registry, which [`Kernels::load`] resolves in the embedded modules and
//! the `kernel_names_in_fatbins` test holds against the fatbins (both ways).

use cudarc::driver::sys::CUfunction_attribute as FuncAttr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

/// A kernel: its module (kernels/<module>.cu) and its extern "C" name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub module: &'static str,
    pub name: &'static str,
}

/// `kernels! { NAME = "module" / "entry"; ... }` declares `pub(crate) const NAME: Kernel` for
/// each kernel and `pub(crate) const KERNELS: &[Kernel]` listing them, in a launcher file.
macro_rules! kernels {
    ($($(#[$doc:meta])* $id:ident = $module:literal / $name:literal;)+) => {
        $($(#[$doc])* pub(crate) const $id: $crate::backend::cuda::launch::Kernel =
            $crate::backend::cuda::launch::Kernel { module: $module, name: $name };)+
        /// Every kernel this file launches (its part of the registry).
        pub(crate) const KERNELS: &[$crate::backend::cuda::launch::Kernel] = &[$($id),+];
    };
}
pub(crate) use kernels;

/// Every kernel of every launcher file.
pub fn all() -> impl Iterator<Item = Kernel> {
    super::KERNEL_TABLES.iter().flat_map(|t| t.iter().copied())
}

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
    loaded: HashMap<&'static str, LoadedKernel>,
    _modules: Vec<Arc<CudaModule>>,
}

fn fattr(f: &CudaFunction, a: FuncAttr) -> Result<i32, String> {
    unsafe { cudarc::driver::result::function::get_function_attribute(f.cu_function(), a) }
        .map_err(|e| format!("cuFuncGetAttribute: {e}"))
}

impl Kernels {
    /// Loads every embedded module and looks up every kernel of the registry; a missing one
    /// is an error naming it (the build and the launchers disagree).
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, String> {
        let mut modules: Vec<(&str, Arc<CudaModule>)> = Vec::new();
        for (stem, bytes) in super::MODULES {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()))
                .map_err(|e| format!("loading module {stem}: {e}"))?;
            modules.push((stem, m));
        }
        let mut loaded = HashMap::new();
        for k in all() {
            let m = modules
                .iter()
                .find(|(s, _)| *s == k.module)
                .ok_or_else(|| format!("kernel module {}.cu is not in this build", k.module))?;
            let func =
                m.1.load_function(k.name)
                    .map_err(|e| format!("kernel {} in {}.cu: {e}", k.name, k.module))?;
            let lk = LoadedKernel {
                max_threads: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
                    as u32,
                static_smem: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)? as u32,
                regs: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_NUM_REGS)? as u32,
                local_bytes: fattr(&func, FuncAttr::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)? as u32,
                dyn_smem_optin: 48 * 1024,
                func,
            };
            if loaded.insert(k.name, lk).is_some() {
                return Err(format!("kernel {} is registered twice", k.name));
            }
        }
        Ok(Kernels {
            loaded,
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
        })
    }

    /// A loaded kernel; None for one whose file's table is missing from `KERNEL_TABLES`.
    pub fn get(&self, k: Kernel) -> Option<&LoadedKernel> {
        self.loaded.get(k.name)
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
    let name = k.name;
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
    if l.block == 0 || !l.block.is_multiple_of(32) || l.block > 1024 {
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
        let unknown = || super::err(format!("{}: kernel not in the registry", k.name));
        let lk = self.kernels.get(k).ok_or_else(unknown)?;
        check_launch(k, &l, lk.max_threads, lk.static_smem, &lim).map_err(super::err)?;
        if l.dyn_smem > lk.dyn_smem_optin {
            // A raw driver call: make this context current on the calling thread first.
            self.ctx
                .bind_to_thread()
                .map_err(|e| super::err(format!("{}: binding the context: {e}", k.name)))?;
            // Above 48 KB the function must be opted in (cudaFuncSetAttribute) first.
            unsafe {
                cudarc::driver::result::function::set_function_attribute(
                    lk.func.cu_function(),
                    FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    l.dyn_smem as i32,
                )
            }
            .map_err(|e| super::err(format!("{}: raising the shared-memory limit: {e}", k.name)))?;
            if let Some(lk) = self.kernels.loaded.get_mut(k.name) {
                lk.dyn_smem_optin = l.dyn_smem;
            }
        }
        let lk = self.kernels.get(k).ok_or_else(unknown)?;
        let cfg = LaunchConfig {
            grid_dim: l.grid,
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: l.dyn_smem,
        };
        let mut b = self.stream.launch_builder(&lk.func);
        b.arg(params);
        unsafe { b.launch(cfg) }.map_err(|e| super::err(format!("launching {}: {e}", k.name)))?;
        Ok(())
    }
}
