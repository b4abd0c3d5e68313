//! Which instruction set the CPU backend's hot kernels use, chosen once at run time.
//!
//! Four paths, each tested against the scalar reference on this machine's CPU when it has them:
//! - `amx`: the `avx512` path, with bf16 GEMMs of more than a few rows on AMX tiles
//!   (`tdpbf16ps`, AMX-BF16) where the CPU has them and the OS lets the process use them.
//! - `avx512`: AVX-512 F/BW/VL with AVX512_VNNI (`vpdpbusd` for the int8 dots of quantized
//!   weights), and AVX512_BF16 (`vdpbf16ps`) for bf16 weights times bf16 activations where the
//!   CPU has it (otherwise bf16 weights are widened to f32 in registers, as for f32 activations).
//! - `avx2`: AVX2 + FMA + F16C (the 256-bit kernels).
//! - `scalar`: plain Rust, the reference the others are compared with.
//!
//! `REEL_CPU_ISA=amx|avx512|avx2|scalar` forces a path (for tests and A/B timing); asking for one the
//! CPU lacks, or an unknown name, is an error where the backend is opened (see [`from_env`]).

use crate::error::{Error, Result};
use std::fmt;
use std::sync::OnceLock;

/// A kernel family, in increasing order of capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    /// AVX-512 plus AMX tiles for the large bf16 GEMMs.
    Amx,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    /// Whether the AVX-512 kernels run (on `amx` every kernel but the large bf16 GEMM's).
    pub fn avx512(self) -> bool {
        self >= Isa::Avx512
    }

    /// Every path this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        let f = features();
        let mut v = Vec::new();
        if f.amx() {
            v.push(Isa::Amx);
        }
        if f.avx512() {
            v.push(Isa::Avx512);
        }
        if f.avx2() {
            v.push(Isa::Avx2);
        }
        v.push(Isa::Scalar);
        v
    }

    /// The best path this CPU can run.
    pub fn best() -> Isa {
        Isa::available()[0]
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        Isa::available().contains(&self)
    }

    /// Whether any SIMD path is on (the ops other than matmul have one SIMD variant, AVX2).
    pub fn simd(self) -> bool {
        self != Isa::Scalar
    }

    /// Every path, best first (whether this CPU runs them or not).
    pub const ALL: [Isa; 4] = [Isa::Amx, Isa::Avx512, Isa::Avx2, Isa::Scalar];

    /// The path's instructions as used on this CPU, for `reel info` and the benches.
    pub fn describe(self) -> String {
        let f = features();
        match self {
            Isa::Scalar => "scalar".into(),
            Isa::Avx2 => "avx2 (avx2+fma+f16c)".into(),
            Isa::Amx => format!(
                "amx (amx_bf16 tiles for bf16 GEMMs of more than 8 rows; otherwise {})",
                Isa::Avx512.describe()
            ),
            Isa::Avx512 => format!(
                "avx512 (avx512f/bw/vl, avx512_vnni{})",
                if f.avx512_bf16 {
                    ", avx512_bf16"
                } else {
                    "; no avx512_bf16: bf16 weights widen to f32"
                }
            ),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            "amx" => Ok(Isa::Amx),
            _ => Err(Error::Other(format!(
                "REEL_CPU_ISA: unknown instruction set `{s}` (expected amx, avx512, avx2 or scalar)"
            ))),
        }
    }
}

/// The x86 features the kernels look at, detected once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    /// AMX-TILE and AMX-BF16, and the OS granted this process the tile state.
    pub amx_bf16: bool,
}

impl Features {
    fn avx2(&self) -> bool {
        self.avx2 && self.fma && self.f16c
    }
    fn avx512(&self) -> bool {
        self.avx2() && self.avx512f && self.avx512bw && self.avx512vl && self.avx512_vnni
    }
    fn amx(&self) -> bool {
        self.avx512() && self.avx512_bf16 && self.amx_bf16
    }
}

pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: is_x86_feature_detected!("avx2"),
                fma: is_x86_feature_detected!("fma"),
                f16c: is_x86_feature_detected!("f16c"),
                avx512f: is_x86_feature_detected!("avx512f"),
                avx512bw: is_x86_feature_detected!("avx512bw"),
                avx512vl: is_x86_feature_detected!("avx512vl"),
                avx512_vnni: is_x86_feature_detected!("avx512vnni"),
                avx512_bf16: is_x86_feature_detected!("avx512bf16"),
                amx_bf16: amx_usable(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Features::default()
        }
    })
}

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22) and the kernel
/// lets this process use the tile data (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, process-wide, so every thread may then run tile instructions).
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether `vdpbf16ps` may be used (the AVX-512 path on a CPU with AVX512_BF16).
pub fn has_bf16_dot(isa: Isa) -> bool {
    isa.avx512() && features().avx512_bf16
}

/// The path `REEL_CPU_ISA` asks for, or the best one when it is unset or empty. Errors name the
/// variable: an unknown value, or a path this CPU cannot run.
pub fn from_env() -> Result<Isa> {
    let Some(v) = std::env::var_os("REEL_CPU_ISA") else {
        return Ok(Isa::best());
    };
    let v = v.to_string_lossy();
    if v.trim().is_empty() {
        return Ok(Isa::best());
    }
    let isa: Isa = v.parse()?;
    if !isa.supported() {
        return Err(Error::Other(format!(
            "REEL_CPU_ISA={v}: this CPU cannot run the {isa} kernels (available: {})",
            Isa::available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(isa)
}

/// [`from_env`], evaluated once; on an error the best path is used and the error printed once
/// (the CLI calls [`from_env`] first, so there the error stops the run instead).
pub fn selected() -> Isa {
    static S: OnceLock<Isa> = OnceLock::new();
    *S.get_or_init(|| match from_env() {
        Ok(i) => i,
        Err(e) => {
            let best = Isa::best();
            eprintln!("warning: {e}; using {best}");
            best
        }
    })
}

/// The peak multiply-add rate of this core on `isa`, measured: independent chains of
/// `vdpbf16ps` (64 FLOP each) where the bf16 dot runs, else of 16- or 8-lane FMAs, for about
/// `secs` seconds. Returns FLOP/s and the instruction, or `None` on the scalar path.
pub fn peak_flops(isa: Isa, secs: f64) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // Twelve independent accumulators cover the latency of every unit measured (more made
        // the compiler spill them).
        const CHAINS: usize = 12;
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn dp(iters: u64) -> f32 {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, a, a);
                }
            }
            acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn fma512(iters: u64) -> f32 {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            let a = _mm512_set1_ps(1e-9);
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, a, a);
                }
            }
            acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma256(iters: u64) -> f32 {
            let mut acc = [_mm256_setzero_ps(); CHAINS];
            let a = _mm256_set1_ps(1e-9);
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, a);
                }
            }
            let mut o = [0f32; 8];
            let s = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
            _mm256_storeu_ps(o.as_mut_ptr(), s);
            o.iter().sum()
        }
        // Four independent tile accumulators, each `tdpbf16ps` 16 × 16 × 32 multiply-adds.
        unsafe fn amx(iters: u64) -> f32 {
            super::gemm::amx::peak_loop(iters);
            0.0
        }
        let (run, flops, name): (unsafe fn(u64) -> f32, f64, _) = match isa {
            Isa::Amx => (amx, (4 * 16 * 16 * 32 * 2) as f64, "tdpbf16ps"),
            Isa::Avx512 if has_bf16_dot(isa) => (dp, (64 * CHAINS) as f64, "vdpbf16ps"),
            Isa::Avx512 => (fma512, (32 * CHAINS) as f64, "512-bit FMA"),
            Isa::Avx2 => (fma256, (16 * CHAINS) as f64, "256-bit FMA"),
            Isa::Scalar => return None,
        };
        // SAFETY: `isa` is one this CPU supports (the backend only selects such).
        Some((unsafe { rate(run, flops, secs) }, name))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, secs);
        None
    }
}

/// Operations per second of `run` (`per_iter` per iteration): calibrated on a short run, then
/// the best of three runs of about `secs` / 3 (another process may take the core for part of one).
///
/// # Safety
/// `run` may run on this CPU.
#[cfg(target_arch = "x86_64")]
unsafe fn rate(run: unsafe fn(u64) -> f32, per_iter: f64, secs: f64) -> f64 {
    let time = |iters: u64| {
        let t = std::time::Instant::now();
        std::hint::black_box(run(iters));
        t.elapsed().as_secs_f64()
    };
    let probe = 20_000;
    let iters = ((secs / 3.0 / time(probe).max(1e-9)) * probe as f64).clamp(1e3, 1e9) as u64;
    let best = (0..3).map(|_| time(iters)).fold(f64::MAX, f64::min);
    per_iter * iters as f64 / best
}

/// One thread's int8 dot peak on `isa`, in operations per second (a multiply and an add per
/// byte product), and the instruction measured: `vpdpbusd` on the AVX-512 paths (what the
/// quantized weights' int8 GEMM and GEMV use), `None` elsewhere.
pub fn peak_int8_ops(isa: Isa, secs: f64) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        const CHAINS: usize = 12;
        // In assembly: the compiler folds the intrinsic's loop over constant operands.
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn dpbusd(iters: u64) -> f32 {
            for _ in 0..iters {
                std::arch::asm!(
                    "vpdpbusd zmm0, zmm12, zmm13",
                    "vpdpbusd zmm1, zmm12, zmm13",
                    "vpdpbusd zmm2, zmm12, zmm13",
                    "vpdpbusd zmm3, zmm12, zmm13",
                    "vpdpbusd zmm4, zmm12, zmm13",
                    "vpdpbusd zmm5, zmm12, zmm13",
                    "vpdpbusd zmm6, zmm12, zmm13",
                    "vpdpbusd zmm7, zmm12, zmm13",
                    "vpdpbusd zmm8, zmm12, zmm13",
                    "vpdpbusd zmm9, zmm12, zmm13",
                    "vpdpbusd zmm10, zmm12, zmm13",
                    "vpdpbusd zmm11, zmm12, zmm13",
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _,
                    options(nostack, nomem)
                );
            }
            0.0
        }
        if !isa.avx512() {
            return None;
        }
        // SAFETY: the AVX-512 paths are only selected on CPUs with AVX512_VNNI.
        let ops = (64 * 2 * CHAINS) as f64;
        Some((unsafe { rate(dpbusd, ops, secs) }, "vpdpbusd"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, secs);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for i in Isa::ALL {
            assert_eq!(i.name().parse::<Isa>().unwrap(), i);
        }
        assert_eq!(" AVX2 ".parse::<Isa>().unwrap(), Isa::Avx2);
        let e = "sse4".parse::<Isa>().unwrap_err().to_string();
        assert!(e.contains("REEL_CPU_ISA") && e.contains("sse4"), "{e}");
    }

    #[test]
    fn available_paths_are_ordered_and_end_in_scalar() {
        let a = Isa::available();
        assert_eq!(*a.last().unwrap(), Isa::Scalar);
        assert!(a.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(Isa::best(), a[0]);
        if a.contains(&Isa::Avx512) {
            assert!(a.contains(&Isa::Avx2));
        }
    }
}
