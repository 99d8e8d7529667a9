//! bfloat16 code pairs for `vdpbf16ps`, shared by the large-batch panels (`gguf_gemm_bf16`) and the
//! streaming product of 2-8 rows (`gguf_gemv_bf16`): a group of a tiled GGUF block decoded straight
//! to bfloat16 pairs (lane j of a pair vector holds column j's codes for k and k + 1), and the pair
//! dot product itself, `vdpbf16ps` or, for tests on CPUs without AVX512-BF16, its float32
//! emulation (two FMAs; only the instruction differs).
//!
//! 4- to 6-bit codes become a 16-bit index into a table of bfloat16 codes (`vpermw`, `vpermt2w`
//! for 6 bits; the bit planes are interleaved by `pdep`, so callers need BMI2); Q8_0's bytes are
//! already in pair order and become float32 whose high halves one `vpermt2w` gathers. The codes
//! are small integers, exact in bfloat16, the same as `gguf_decode::decode_group`'s.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::elem::f32_to_bf16;
use super::gguf_decode::ty;
use super::gguf_layout::GgufType;
use super::simd::bf16_to_f32;

/// A pair dot product: `vdpbf16ps` or its float32 emulation.
pub(super) trait PairDot {
    type X: Copy;
    /// The bfloat16 pair at `p`, in every lane.
    unsafe fn bcast(p: *const u16) -> Self::X;
    /// acc + w.even * x.even + w.odd * x.odd per 32-bit lane.
    unsafe fn dot(acc: __m512, w: __m512i, x: Self::X) -> __m512;
}

pub(super) struct Native;
pub(super) struct Emulated;

impl PairDot for Native {
    type X = __m512i;
    #[inline(always)]
    unsafe fn bcast(p: *const u16) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512, w: __m512i, x: __m512i) -> __m512 {
        _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(w),
            std::mem::transmute::<__m512i, __m512bh>(x),
        )
    }
}

impl PairDot for Emulated {
    type X = (__m512, __m512);
    #[inline(always)]
    unsafe fn bcast(p: *const u16) -> (__m512, __m512) {
        (
            _mm512_set1_ps(bf16_to_f32(*p)),
            _mm512_set1_ps(bf16_to_f32(*p.add(1))),
        )
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512, w: __m512i, x: (__m512, __m512)) -> __m512 {
        let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
        let odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(-65536)));
        _mm512_fmadd_ps(odd, x.1, _mm512_fmadd_ps(even, x.0, acc))
    }
}

/// Group g of an 8-bit tile block (Q8_0) to bfloat16 pairs, `store(i, v)` for pair i: its
/// 32 bytes are already in pair order (column j's k, k + 1 at bytes 2j, 2j + 1), so each
/// byte becomes a float32 and `vpermt2w` keeps the high halves (exact: |q| <= 128).
#[inline(always)]
pub(super) unsafe fn byte_pairs<const Q: u8>(
    blk: *const u8,
    g: usize,
    mut store: impl FnMut(usize, __m512i),
) {
    let t = ty::<Q>();
    let codes = blk.add(t.group_codes(g));
    let high_halves = _mm512_loadu_si512(HIGH_HALVES.as_ptr() as *const _);
    for i in 0..t.group() / 2 {
        let p = codes.add(i * 32);
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            p.add(16) as *const __m128i
        )));
        store(
            i,
            _mm512_permutex2var_epi16(
                _mm512_castps_si512(lo),
                high_halves,
                _mm512_castps_si512(hi),
            ),
        );
    }
}

/// Word i: 2i + 1, the high half of 32-bit lane i of a two-vector table.
const HIGH_HALVES: [u16; 32] = {
    let mut w = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        w[i] = 2 * i as u16 + 1;
        i += 1;
    }
    w
};

/// The bfloat16 code of each 6-bit index (entries 0-31, 32-63): idx - zp, exact.
#[inline(always)]
pub(super) unsafe fn code_index_tables(t: GgufType) -> (__m512i, __m512i) {
    let mut words = [0u16; 64];
    for (n, w) in words.iter_mut().enumerate() {
        *w = f32_to_bf16((n as i32 - t.zero_point()) as f32);
    }
    (
        _mm512_loadu_si512(words.as_ptr() as *const _),
        _mm512_loadu_si512(words.as_ptr().add(32) as *const _),
    )
}

/// Bit j of `a` and of `b` to bits 2j and 2j + 1 (the two values of lane j's pair).
#[target_feature(enable = "bmi2")]
unsafe fn interleave(a: u16, b: u16) -> u32 {
    _pdep_u32(u16::from_le(a) as u32, 0x5555_5555) | _pdep_u32(u16::from_le(b) as u32, 0xAAAA_AAAA)
}

/// Group g of a 4-, 5- or 6-bit tile block straight to bfloat16 pairs, `store(i, v)` for
/// pair i of the group: each value's nibble (plus 16 and 32 from its bit planes) becomes a
/// 16-bit index into the code table (`vpermw`, `vpermt2w` for 6 bits), with no float32
/// round trip. Same codes as `gguf_decode::decode_group`.
#[inline(always)]
pub(super) unsafe fn nibble_pairs<const Q: u8>(
    blk: *const u8,
    g: usize,
    index_lo: __m512i,
    index_hi: __m512i,
    mut store: impl FnMut(usize, __m512i),
) {
    let t = ty::<Q>();
    let bits = t.code_bits();
    let codes = blk.add(t.group_codes(g));
    let plane0 = codes.add(t.bit_plane(0));
    let plane1 = codes.add(t.bit_plane(1));
    let nibbles = _mm512_set1_epi32(0x000F_000F);
    let (sixteen, thirty_two) = (_mm512_set1_epi16(16), _mm512_set1_epi16(32));
    for step in 0..t.group() / 4 {
        // lane j: the u16 of bytes 2j, 2j+1: bits 0-3 k+0, 4-7 k+2, 8-11 k+1, 12-15 k+3
        let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(codes.add(step * 32) as *const __m256i));
        // (A | B) & C: pair (k, k+1) in the low / high words, pair (k+2, k+3) likewise
        let mut p01 = _mm512_ternarylogic_epi32::<0xA8>(u, _mm512_slli_epi32::<8>(u), nibbles);
        let mut p23 = _mm512_ternarylogic_epi32::<0xA8>(
            _mm512_srli_epi32::<4>(u),
            _mm512_slli_epi32::<4>(u),
            nibbles,
        );
        if bits >= 5 {
            let m = std::ptr::read_unaligned(plane0.add(step * 8) as *const [u16; 4]);
            p01 = _mm512_mask_add_epi16(p01, interleave(m[0], m[1]), p01, sixteen);
            p23 = _mm512_mask_add_epi16(p23, interleave(m[2], m[3]), p23, sixteen);
        }
        if bits == 6 {
            let m = std::ptr::read_unaligned(plane1.add(step * 8) as *const [u16; 4]);
            p01 = _mm512_mask_add_epi16(p01, interleave(m[0], m[1]), p01, thirty_two);
            p23 = _mm512_mask_add_epi16(p23, interleave(m[2], m[3]), p23, thirty_two);
            store(2 * step, _mm512_permutex2var_epi16(index_lo, p01, index_hi));
            store(
                2 * step + 1,
                _mm512_permutex2var_epi16(index_lo, p23, index_hi),
            );
        } else {
            store(2 * step, _mm512_permutexvar_epi16(p01, index_lo));
            store(2 * step + 1, _mm512_permutexvar_epi16(p23, index_lo));
        }
    }
}
