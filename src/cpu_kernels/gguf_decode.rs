//! Decoding tiled GGUF weights (`gguf_layout`) into 16-lane float32 vectors, one vector per
//! input feature k holding the 16 rows of a tile: the inner step of every quantized product.
//!
//! [`decode_group`] walks the codes of one scale group and hands each k's vector of code values
//! (q - zp, exact small integers) to a consumer closure, which is inlined: the products
//! accumulate straight from registers, the large-batch path writes them to a panel.
//! [`scale_offset`] gives the group's S and O per row. The instruction-set specific part is
//! the [`QuantIsa`] trait: nibbles to floats through a 16-entry table (`vpermps` on AVX-512),
//! the 5th / 6th bit added under a mask, int8 pairs widened.

use super::gguf_layout::{param_offsets, GgufType, TILE};
use super::simd::{Isa, Scalar, LANES};

/// Extra vector operations the quantized products need.
pub trait QuantIsa: Isa {
    /// The 4 vectors of step s of a nibble plane (`p`: its 32 bytes): lane j of vector r is
    /// `table[low 4 bits of q[j][4s+r]]`.
    unsafe fn nibble_step(p: *const u8, table: Self::V) -> [Self::V; 4];
    /// v + amount in the lanes whose bit is set in `mask`.
    unsafe fn add_masked(v: Self::V, mask: u16, amount: Self::V) -> Self::V;
    /// The 2 vectors of an 8-bit pair (`p`: its 32 bytes): lane j of vector e is q[j][2p+e].
    unsafe fn q8_pair(p: *const u8) -> [Self::V; 2];
    /// 16 unsigned bytes as float32.
    unsafe fn load_u8(p: *const u8) -> Self::V;
}

impl QuantIsa for Scalar {
    #[inline(always)]
    unsafe fn nibble_step(p: *const u8, table: Self::V) -> [Self::V; 4] {
        let mut out = [[0f32; LANES]; 4];
        for j in 0..TILE {
            let (lo, hi) = (*p.add(2 * j), *p.add(2 * j + 1));
            out[0][j] = table[(lo & 15) as usize];
            out[1][j] = table[(hi & 15) as usize];
            out[2][j] = table[(lo >> 4) as usize];
            out[3][j] = table[(hi >> 4) as usize];
        }
        out
    }
    #[inline(always)]
    unsafe fn add_masked(v: Self::V, mask: u16, amount: Self::V) -> Self::V {
        let mut out = v;
        for j in 0..LANES {
            if mask & (1 << j) != 0 {
                out[j] += amount[j];
            }
        }
        out
    }
    #[inline(always)]
    unsafe fn q8_pair(p: *const u8) -> [Self::V; 2] {
        let mut out = [[0f32; LANES]; 2];
        for j in 0..TILE {
            out[0][j] = *p.add(2 * j) as i8 as f32;
            out[1][j] = *p.add(2 * j + 1) as i8 as f32;
        }
        out
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> Self::V {
        let mut out = [0f32; LANES];
        for (j, o) in out.iter_mut().enumerate() {
            *o = *p.add(j) as f32;
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::simd::Avx512;
    use super::QuantIsa;
    use std::arch::x86_64::*;

    impl QuantIsa for Avx512 {
        #[inline(always)]
        unsafe fn nibble_step(p: *const u8, table: __m512) -> [__m512; 4] {
            // lane j: the u16 of bytes 2j, 2j+1: bits 0-3 k+0, 4-7 k+2, 8-11 k+1, 12-15 k+3
            let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            [
                _mm512_permutexvar_ps(u, table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<8>(u), table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(u), table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<12>(u), table),
            ]
        }
        #[inline(always)]
        unsafe fn add_masked(v: __m512, mask: u16, amount: __m512) -> __m512 {
            _mm512_mask_add_ps(v, mask, v, amount)
        }
        #[inline(always)]
        unsafe fn q8_pair(p: *const u8) -> [__m512; 2] {
            let u = _mm512_cvtepi16_epi32(_mm256_loadu_si256(p as *const __m256i));
            [
                _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(u))),
                _mm512_cvtepi32_ps(_mm512_srai_epi32::<8>(u)),
            ]
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8) -> __m512 {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
        }
    }
}

/// The type with index `Q` in [`GgufType::ALL`] (kernels take the type as a constant so that
/// each one compiles to its own loop).
#[inline(always)]
pub const fn ty<const Q: u8>() -> GgufType {
    GgufType::ALL[Q as usize]
}

/// The index of `t` in [`GgufType::ALL`].
pub fn type_index(t: GgufType) -> u8 {
    GgufType::ALL.iter().position(|&x| x == t).unwrap() as u8
}

/// Call `$body` with `$q` bound to the constant type index of the runtime type `$t`.
#[macro_export]
macro_rules! with_gguf_type {
    ($t:expr, $q:ident => $body:expr) => {
        match $crate::cpu_kernels::gguf_decode::type_index($t) {
            0 => {
                const $q: u8 = 0;
                $body
            }
            1 => {
                const $q: u8 = 1;
                $body
            }
            2 => {
                const $q: u8 = 2;
                $body
            }
            3 => {
                const $q: u8 = 3;
                $body
            }
            4 => {
                const $q: u8 = 4;
                $body
            }
            5 => {
                const $q: u8 = 5;
                $body
            }
            6 => {
                const $q: u8 = 6;
                $body
            }
            _ => {
                const $q: u8 = 7;
                $body
            }
        }
    };
}

/// The nibble table of a type: entry n is n - zp (the types with offsets: n).
pub fn nibble_table(t: GgufType) -> [f32; 16] {
    let mut out = [0f32; 16];
    for (n, o) in out.iter_mut().enumerate() {
        *o = (n as i32 - t.zero_point()) as f32;
    }
    out
}

/// Hand `f(i, v)` (an `#[inline(always)]` closure: it runs in the caller's instruction set) the code values of group g of a tile block, for i = 0..group: lane j of v is
/// q[j][g * group + i] - zp (Q8_0: the signed code).
///
/// # Safety
/// `blk` must point to a whole tile block of type `ty::<Q>()`; `table` is its [`nibble_table`].
#[inline(always)]
pub unsafe fn decode_group<S: QuantIsa, const Q: u8, F: FnMut(usize, S::V)>(
    blk: *const u8,
    g: usize,
    table: S::V,
    mut f: F,
) {
    let t = ty::<Q>();
    let gk = t.group();
    let bits = t.code_bits();
    let codes = blk.add(t.group_codes(g));
    if bits == 8 {
        // two pairs per step, so that i % 4 is known in each call of `f`
        for s in 0..gk / 4 {
            let a = S::q8_pair(codes.add(2 * s * 32));
            let b = S::q8_pair(codes.add((2 * s + 1) * 32));
            f(4 * s, a[0]);
            f(4 * s + 1, a[1]);
            f(4 * s + 2, b[0]);
            f(4 * s + 3, b[1]);
        }
        return;
    }
    let (sixteen, thirty_two) = (S::splat(16.0), S::splat(32.0));
    let plane0 = codes.add(t.bit_plane(0));
    let plane1 = codes.add(t.bit_plane(1));
    for s in 0..gk / 4 {
        let mut v = S::nibble_step(codes.add(s * 32), table);
        if bits >= 5 {
            let masks = std::ptr::read_unaligned(plane0.add(s * 8) as *const [u16; 4]);
            for r in 0..4 {
                v[r] = S::add_masked(v[r], u16::from_le(masks[r]), sixteen);
            }
        }
        if bits == 6 {
            let masks = std::ptr::read_unaligned(plane1.add(s * 8) as *const [u16; 4]);
            for r in 0..4 {
                v[r] = S::add_masked(v[r], u16::from_le(masks[r]), thirty_two);
            }
        }
        for (r, &vr) in v.iter().enumerate() {
            f(4 * s + r, vr);
        }
    }
}

/// (S, O) of group g of a tile block, per row (O is 0 for the symmetric types).
///
/// # Safety
/// `blk` must point to a whole tile block of type `ty::<Q>()`.
#[inline(always)]
pub unsafe fn scale_offset<S: QuantIsa, const Q: u8>(blk: *const u8, g: usize) -> (S::V, S::V) {
    let t = ty::<Q>();
    let (pd, pm, psc, pmn) = param_offsets(t);
    let d = S::load_f16(blk.add(pd) as *const u16);
    match t {
        GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 => (d, S::zero()),
        GgufType::Q4_1 | GgufType::Q5_1 => (d, S::load_f16(blk.add(pm) as *const u16)),
        GgufType::Q4_K | GgufType::Q5_K => {
            let dmin = S::load_f16(blk.add(pm) as *const u16);
            let sc = S::load_u8(blk.add(psc + TILE * g));
            let mn = S::load_u8(blk.add(pmn + TILE * g));
            (S::mul(d, sc), S::sub(S::zero(), S::mul(dmin, mn)))
        }
        GgufType::Q6_K => (
            S::mul(d, S::load_i8(blk.add(psc + TILE * g) as *const i8)),
            S::zero(),
        ),
    }
}
