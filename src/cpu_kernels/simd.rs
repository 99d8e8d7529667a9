//! 16-lane float32 vectors over two instruction sets: AVX-512 ([`Avx512`], picked at run time)
//! and portable arrays ([`Scalar`], any CPU), plus the storage element types (f32, [`Bf16`],
//! [`F16`]) with their exact conversions.
//!
//! Kernel bodies are generic over [`Isa`] and marked `#[inline(always)]`; the AVX-512 copy is
//! instantiated inside a `#[target_feature(enable = AVX512_FEATURES)]` function so that the
//! intrinsics inline. Conversions to 16-bit types round to nearest even, like torch.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Lanes per vector.
pub const LANES: usize = 16;

pub use super::elem::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, Bf16, Elem, F16};

/// A 16-lane float32 vector unit. All methods are unsafe: pointers must be valid for the lanes
/// they touch (`_n` variants: the first `n <= 16` lanes; the others read as 0 / are not written).
pub trait Isa: Copy + Send + Sync + 'static {
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// a * b + c (fused where the ISA has it: only for sums whose rounding is free to differ).
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn reduce_add(a: Self::V) -> f32;
    unsafe fn reduce_max(a: Self::V) -> f32;
    /// Lane i = the sum of the lanes of v[i] (sixteen horizontal sums at once).
    unsafe fn reduce16(v: &[Self::V; LANES]) -> Self::V;
    /// Bit i set where a[i] > b[i].
    unsafe fn gt_mask(a: Self::V, b: Self::V) -> u32;
    /// e^x per lane (relative error ~1e-7; x <= -104 gives 0).
    unsafe fn exp(a: Self::V) -> Self::V;
    /// silu(x) = x / (1 + e^-x) per lane.
    unsafe fn silu(a: Self::V) -> Self::V;
    /// tanh(x) per lane (relative error ~2e-7).
    unsafe fn tanh(a: Self::V) -> Self::V;
    unsafe fn load_f32(p: *const f32) -> Self::V;
    unsafe fn load_f32_n(p: *const f32, n: usize) -> Self::V;
    unsafe fn store_f32(p: *mut f32, v: Self::V);
    unsafe fn store_f32_n(p: *mut f32, v: Self::V, n: usize);
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    unsafe fn load_bf16_n(p: *const u16, n: usize) -> Self::V;
    unsafe fn store_bf16(p: *mut u16, v: Self::V);
    unsafe fn store_bf16_n(p: *mut u16, v: Self::V, n: usize);
    unsafe fn load_f16(p: *const u16) -> Self::V;
    unsafe fn load_f16_n(p: *const u16, n: usize) -> Self::V;
    /// 16 signed bytes as float32.
    unsafe fn load_i8(p: *const i8) -> Self::V;
    unsafe fn store_f16(p: *mut u16, v: Self::V);
    unsafe fn store_f16_n(p: *mut u16, v: Self::V, n: usize);

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        Self::splat(0.0)
    }
}

/// Prefetch the cache lines of `bytes` bytes from `p` into L1 (a no-op off x86-64; any address
/// is fine, prefetches never fault).
#[inline(always)]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let mut off = 0;
        while off < bytes {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

pub use super::isa_select::*;

/// Call a generic kernel body with the instruction set in use: `dispatch!(f::<T>(args...))` runs
/// `f::<Avx512, T>(args...)` in an AVX-512 context when the CPU has it, else
/// `f::<Scalar, T>(args...)`. The body is an `unsafe fn` whose first generic is the [`Isa`].
#[macro_export]
macro_rules! dispatch {
    ($f:ident ( $($arg:expr),* $(,)? )) => {
        $crate::dispatch!(@go $f [] ($($arg),*))
    };
    ($f:ident :: < $($g:tt),+ > ( $($arg:expr),* $(,)? )) => {
        $crate::dispatch!(@go $f [$($g),+] ($($arg),*))
    };
    (@go $f:ident [$($g:tt),*] ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::cpu_kernels::simd::use_avx512() {
                unsafe {
                    $crate::cpu_kernels::simd::run_avx512(
                        #[inline(always)]
                        || $f::<$crate::cpu_kernels::simd::Avx512 $(, $g)*>($($arg),*),
                    )
                }
            } else {
                unsafe { $f::<$crate::cpu_kernels::simd::Scalar $(, $g)*>($($arg),*) }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            unsafe { $f::<$crate::cpu_kernels::simd::Scalar $(, $g)*>($($arg),*) }
        }
    }};
}

/// tanh of each element with the instruction set in use (the unit tests' view of [`Isa::tanh`]).
#[cfg(test)]
pub fn dispatch_tanh_for_tests(xs: &[f32]) -> Vec<f32> {
    #[inline(always)]
    unsafe fn go<S: Isa>(xs: &[f32], out: &mut [f32]) {
        for (x, o) in xs.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let v = S::tanh(S::load_f32_n(x.as_ptr(), x.len()));
            S::store_f32_n(o.as_mut_ptr(), v, o.len());
        }
    }
    let mut out = vec![0.0; xs.len()];
    crate::dispatch!(go(xs, &mut out));
    out
}

// ---- portable implementation ----------------------------------------------------------------

/// Portable 16-lane arrays (the compiler vectorizes what it can for the baseline target).
#[derive(Clone, Copy)]
pub struct Scalar;

macro_rules! lanes {
    (|$i:ident| $e:expr) => {{
        let mut out = [0.0f32; LANES];
        for $i in 0..LANES {
            out[$i] = $e;
        }
        out
    }};
}

impl Isa for Scalar {
    type V = [f32; LANES];
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        lanes!(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        lanes!(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        lanes!(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        lanes!(|i| a[i] / b[i])
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        lanes!(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        lanes!(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn reduce_add(a: Self::V) -> f32 {
        // pairwise, like the vector reduction
        let mut v = a;
        let mut w = LANES;
        while w > 1 {
            w /= 2;
            for i in 0..w {
                v[i] += v[i + w];
            }
        }
        v[0]
    }
    #[inline(always)]
    unsafe fn reduce_max(a: Self::V) -> f32 {
        a.iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }
    #[inline(always)]
    unsafe fn reduce16(v: &[Self::V; LANES]) -> Self::V {
        lanes!(|i| Self::reduce_add(v[i]))
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self::V, b: Self::V) -> u32 {
        let mut m = 0u32;
        for i in 0..LANES {
            m |= ((a[i] > b[i]) as u32) << i;
        }
        m
    }
    #[inline(always)]
    unsafe fn exp(a: Self::V) -> Self::V {
        lanes!(|i| a[i].exp())
    }
    #[inline(always)]
    unsafe fn silu(a: Self::V) -> Self::V {
        lanes!(|i| a[i] / (1.0 + (-a[i]).exp()))
    }
    #[inline(always)]
    unsafe fn tanh(a: Self::V) -> Self::V {
        lanes!(|i| a[i].tanh())
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> Self::V {
        std::ptr::read_unaligned(p as *const [f32; LANES])
    }
    #[inline(always)]
    unsafe fn load_f32_n(p: *const f32, n: usize) -> Self::V {
        let mut out = [0.0f32; LANES];
        std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), n.min(LANES));
        out
    }
    #[inline(always)]
    unsafe fn store_f32(p: *mut f32, v: Self::V) {
        std::ptr::write_unaligned(p as *mut [f32; LANES], v)
    }
    #[inline(always)]
    unsafe fn store_f32_n(p: *mut f32, v: Self::V, n: usize) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, n.min(LANES));
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        let h = std::ptr::read_unaligned(p as *const [u16; LANES]);
        lanes!(|i| bf16_to_f32(h[i]))
    }
    #[inline(always)]
    unsafe fn load_bf16_n(p: *const u16, n: usize) -> Self::V {
        lanes!(|i| if i < n { bf16_to_f32(*p.add(i)) } else { 0.0 })
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: Self::V) {
        for (i, &x) in v.iter().enumerate() {
            *p.add(i) = f32_to_bf16(x);
        }
    }
    #[inline(always)]
    unsafe fn store_bf16_n(p: *mut u16, v: Self::V, n: usize) {
        for (i, &x) in v.iter().enumerate().take(n) {
            *p.add(i) = f32_to_bf16(x);
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        lanes!(|i| f16_to_f32(*p.add(i)))
    }
    #[inline(always)]
    unsafe fn load_f16_n(p: *const u16, n: usize) -> Self::V {
        lanes!(|i| if i < n { f16_to_f32(*p.add(i)) } else { 0.0 })
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::V {
        lanes!(|i| *p.add(i) as f32)
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: Self::V) {
        for (i, &x) in v.iter().enumerate() {
            *p.add(i) = f32_to_f16(x);
        }
    }
    #[inline(always)]
    unsafe fn store_f16_n(p: *mut u16, v: Self::V, n: usize) {
        for (i, &x) in v.iter().enumerate().take(n) {
            *p.add(i) = f32_to_f16(x);
        }
    }
}

// ---- AVX-512 implementation -----------------------------------------------------------------

/// AVX-512 (F, BW, VL, DQ) with FMA and F16C; only valid where [`avx512_detected`] is true.
#[derive(Clone, Copy)]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    if n >= LANES {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bf16_pack(v: __m512) -> __m256i {
    let u = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
    let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
        lsb,
    ));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0)))
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    type V = __m512;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn reduce_add(a: Self::V) -> f32 {
        _mm512_reduce_add_ps(a)
    }
    #[inline(always)]
    unsafe fn reduce_max(a: Self::V) -> f32 {
        _mm512_reduce_max_ps(a)
    }
    #[inline(always)]
    unsafe fn reduce16(v: &[Self::V; LANES]) -> Self::V {
        // pairs of keys: per 128-bit lane [a0+a2, b0+b2, a1+a3, b1+b3]
        let mut t = [_mm512_setzero_ps(); 8];
        for (i, x) in t.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *x = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        }
        // quads: per 128-bit lane, the lane's partial sum of keys 4i..4i+3
        let mut u = [_mm512_setzero_ps(); 4];
        for (i, x) in u.iter_mut().enumerate() {
            let (a, b) = (t[2 * i], t[2 * i + 1]);
            *x = _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xee>(a, b),
            );
        }
        // across 128-bit lanes
        let w0 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(u[0], u[1]),
            _mm512_shuffle_f32x4::<0xdd>(u[0], u[1]),
        );
        let w1 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(u[2], u[3]),
            _mm512_shuffle_f32x4::<0xdd>(u[2], u[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(w0, w1),
            _mm512_shuffle_f32x4::<0xdd>(w0, w1),
        )
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self::V, b: Self::V) -> u32 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) as u32
    }
    #[inline(always)]
    unsafe fn exp(a: Self::V) -> Self::V {
        // Cephes expf: e^x = 2^n * e^r, n = round(x / ln2), |r| <= ln2 / 2, degree-6 polynomial.
        let x = _mm512_min_ps(
            _mm512_max_ps(a, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(88.72283),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.000_000_1e-1));
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
    }
    #[inline(always)]
    unsafe fn silu(a: Self::V) -> Self::V {
        let e = Self::exp(_mm512_sub_ps(_mm512_setzero_ps(), a));
        _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }
    #[inline(always)]
    unsafe fn tanh(a: Self::V) -> Self::V {
        // Cephes tanhf: an odd polynomial for |x| < 0.625, else 1 - 2 / (e^2|x| + 1) with the sign
        // of x (e^2|x| saturates at ~3.4e38, which gives exactly 1)
        let z = _mm512_mul_ps(a, a);
        let mut p = _mm512_set1_ps(-5.704_988_7e-3);
        p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.063_908_9e-2));
        p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.373_971_6e-2));
        p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.333_144_2e-1));
        p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.333_328_2e-1));
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), a, a);
        let ax = _mm512_abs_ps(a);
        let e = Self::exp(_mm512_add_ps(ax, ax));
        let big = _mm512_sub_ps(
            _mm512_set1_ps(1.0),
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, _mm512_set1_ps(1.0))),
        );
        // copy the sign of x onto |tanh|
        let sign = _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(i32::MIN));
        let big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, _mm512_set1_ps(0.625));
        _mm512_mask_blend_ps(is_small, big, small)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> Self::V {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_f32_n(p: *const f32, n: usize) -> Self::V {
        _mm512_maskz_loadu_ps(mask16(n), p)
    }
    #[inline(always)]
    unsafe fn store_f32(p: *mut f32, v: Self::V) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_f32_n(p: *mut f32, v: Self::V, n: usize) {
        _mm512_mask_storeu_ps(p, mask16(n), v)
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn load_bf16_n(p: *const u16, n: usize) -> Self::V {
        let h = _mm256_maskz_loadu_epi16(mask16(n), p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: Self::V) {
        _mm256_storeu_si256(p as *mut __m256i, bf16_pack(v))
    }
    #[inline(always)]
    unsafe fn store_bf16_n(p: *mut u16, v: Self::V, n: usize) {
        _mm256_mask_storeu_epi16(p as *mut i16, mask16(n), bf16_pack(v))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_f16_n(p: *const u16, n: usize) -> Self::V {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n), p as *const i16))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::V {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn store_f16(p: *mut u16, v: Self::V) {
        _mm256_storeu_si256(
            p as *mut __m256i,
            _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
        )
    }
    #[inline(always)]
    unsafe fn store_f16_n(p: *mut u16, v: Self::V, n: usize) {
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_mask_storeu_epi16(p as *mut i16, mask16(n), h)
    }
}
