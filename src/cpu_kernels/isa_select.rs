//! Run-time choice of the kernels' instruction set: CPU feature detection (AVX-512, AVX512-BF16,
//! AMX-BF16), the portable override, and the AVX-512 context the generic kernel bodies run in
//! (re-exported by `simd`, whose `dispatch!` uses them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);

/// The target features the AVX-512 instantiations are compiled with.
#[macro_export]
macro_rules! avx512_features {
    () => {
        "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2"
    };
}

/// Whether this CPU has every feature of `avx512_features!()`.
pub fn avx512_detected() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU also has AVX512-BF16 (`vdpbf16ps`), used by the quantized products.
pub fn avx512bf16_detected() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            avx512_detected() && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU has AMX tiles for bfloat16 (`amx-bf16`): oneDNN's bfloat16 GEMM then runs on
/// them and beats the quantized panel kernels from a few rows on (`QuantizedTensor.matmul`).
pub fn amx_bf16_detected() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; the OS enables the tile state
            // in XCR0 bits 17-18 (`is_x86_feature_detected!("amx-bf16")` is unstable)
            use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
            unsafe {
                if __cpuid(0).eax < 7 || (__cpuid(1).ecx >> 27) & 1 == 0 {
                    return false;
                }
                let edx = __cpuid_count(7, 0).edx;
                let cpu = (edx >> 22) & 1 == 1 && (edx >> 24) & 1 == 1;
                cpu && (_xgetbv(0) >> 17) & 3 == 3
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the quantized products take their AVX512-BF16 path now.
#[inline]
pub fn use_avx512bf16() -> bool {
    avx512bf16_detected() && !FORCE_PORTABLE.load(Ordering::Relaxed)
}

/// Whether kernels take their AVX-512 path now.
#[inline]
pub fn use_avx512() -> bool {
    avx512_detected() && !FORCE_PORTABLE.load(Ordering::Relaxed)
}

/// Force the portable path (tests of the fallback), or go back to automatic selection.
pub fn set_force_portable(on: bool) {
    FORCE_PORTABLE.store(on, Ordering::Relaxed);
}

/// The instruction set kernels run with now: "avx512" or "portable".
pub fn isa_name() -> &'static str {
    if use_avx512bf16() {
        "avx512bf16"
    } else if use_avx512() {
        "avx512"
    } else {
        "portable"
    }
}

/// Run `f` inside an AVX-512 target-feature context: the generic kernel bodies it calls (all
/// `#[inline(always)]`) are inlined here, and with them the intrinsics. Use through [`dispatch!`].
///
/// # Safety
/// The CPU must have the features of `avx512_features!()` (check [`use_avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2")]
pub unsafe fn run_avx512<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}
