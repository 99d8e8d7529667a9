//! The streaming product for 2 to [`GEMV_MAX_ROWS`] rows of bfloat16 activations on AVX512-BF16
//! (small decode batches, speculative verification of K + 1 positions): like the float32
//! streaming kernel (`gguf_matmul`) it reads the packed bytes once, in order, and keeps every
//! row's outputs in registers, but each group's codes become bfloat16 pairs (`gguf_pairs_bf16`,
//! as in the large-batch panels) and every row accumulates them with `vdpbf16ps`: one
//! instruction per two input features and row where the float32 kernel needs two FMAs and two
//! broadcasts. A bfloat16 activation times a code is exact, so the result is the float32 product
//! of the dequantized weight up to float32 accumulation order, as on every other path.
//!
//! One row stays on the float32 kernel (it is memory-bound there, with 4 FMA chains).

use super::gguf_matmul::{GgufMatmulArgs, XRows, GEMV_MAX_ROWS};
use super::DType;

/// Whether a streaming product takes this path: 2 to 8 rows of bfloat16 activations, a 4- to
/// 6-bit type and AVX512-BF16 (or its emulation, `gguf_gemm_bf16::set_emulation`). Q8_0 stays on
/// the float32 kernel: widening its bytes to bfloat16 pairs costs more than the dot products
/// save (49152 x 576 at 5 rows, one thread: 2.6 ms against 1.8 ms).
pub fn applies(a: &GgufMatmulArgs) -> bool {
    a.x_dtype == DType::BF16
        && a.ty.code_bits() < 8
        && (2..=GEMV_MAX_ROWS).contains(&a.m)
        && super::gguf_gemm_bf16::applies(a)
}

/// Tiles [t0, t1) of y = x @ W.T (+ bias), every row; `sums`: the rows' 32-value group sums
/// (for the types with offsets; its `x` is not read).
///
/// # Safety
/// As `gguf_matmul`, with [`applies`] true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn run(a: &GgufMatmulArgs, sums: &XRows, t0: usize, t1: usize) {
    if super::simd::use_avx512bf16() {
        kernel::tiles_native(a, sums, t0, t1)
    } else {
        kernel::tiles_emulated(a, sums, t0, t1)
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn run(_a: &GgufMatmulArgs, _sums: &XRows, _t0: usize, _t1: usize) {
    unreachable!("the bfloat16 streaming product needs AVX512-BF16")
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::super::gguf_decode::{scale_offset, ty};
    use super::super::gguf_layout::TILE;
    use super::super::gguf_matmul::{store_row, GgufMatmulArgs, XRows, PREFETCH_AHEAD};
    use super::super::gguf_pairs_bf16::{
        code_index_tables, nibble_pairs, Emulated, Native, PairDot,
    };
    use super::super::simd::{prefetch, Avx512};
    use crate::with_gguf_type;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2,bmi2")]
    pub(super) unsafe fn tiles_native(a: &GgufMatmulArgs, x: &XRows, t0: usize, t1: usize) {
        with_gguf_type!(a.ty, Q => by_rows::<Native, Q>(a, x, t0, t1))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2,bmi2")]
    pub(super) unsafe fn tiles_emulated(a: &GgufMatmulArgs, x: &XRows, t0: usize, t1: usize) {
        with_gguf_type!(a.ty, Q => by_rows::<Emulated, Q>(a, x, t0, t1))
    }

    #[inline(always)]
    unsafe fn by_rows<D: PairDot, const Q: u8>(
        a: &GgufMatmulArgs,
        x: &XRows,
        t0: usize,
        t1: usize,
    ) {
        match a.m {
            2 => tiles::<D, Q, 2>(a, x, t0, t1),
            3 => tiles::<D, Q, 3>(a, x, t0, t1),
            4 => tiles::<D, Q, 4>(a, x, t0, t1),
            5 => tiles::<D, Q, 5>(a, x, t0, t1),
            6 => tiles::<D, Q, 6>(a, x, t0, t1),
            7 => tiles::<D, Q, 7>(a, x, t0, t1),
            _ => tiles::<D, Q, 8>(a, x, t0, t1),
        }
    }

    #[inline(always)]
    unsafe fn tiles<D: PairDot, const Q: u8, const M: usize>(
        a: &GgufMatmulArgs,
        x: &XRows,
        t0: usize,
        t1: usize,
    ) {
        let t = ty::<Q>();
        let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
        let blocks = a.k / kb;
        let (index_lo, index_hi) = code_index_tables(t);
        let mut rows = [std::ptr::null::<u16>(); M];
        for (r, p) in rows.iter_mut().enumerate() {
            *p = (a.x as *const u16).add(r * a.x_stride);
        }
        for tile in t0..t1 {
            let base = (a.packed as *const u8).add(tile * blocks * bb);
            let mut y = [_mm512_setzero_ps(); M];
            for b in 0..blocks {
                let blk = base.add(b * bb);
                for g in 0..t.groups_per_block() {
                    prefetch(
                        blk.wrapping_add(t.group_codes(g) + PREFETCH_AHEAD),
                        t.group_code_bytes(),
                    );
                    let k0 = b * kb + g * gk;
                    // two chains per row: consecutive pairs do not wait for each other
                    let mut acc = [[_mm512_setzero_ps(); 2]; M];
                    let dot = |i: usize, pair: __m512i| {
                        for r in 0..M {
                            let xp = D::bcast(rows[r].add(k0 + 2 * i));
                            acc[r][i % 2] = D::dot(acc[r][i % 2], pair, xp);
                        }
                    };
                    nibble_pairs::<Q>(blk, g, index_lo, index_hi, dot);
                    let (s, o) = scale_offset::<Avx512, Q>(blk, g);
                    for r in 0..M {
                        let sum = _mm512_add_ps(acc[r][0], acc[r][1]);
                        y[r] = _mm512_fmadd_ps(sum, s, y[r]);
                        if t.has_offset() {
                            y[r] = _mm512_fmadd_ps(o, _mm512_set1_ps(x.sum(r, k0 / 32)), y[r]);
                        }
                    }
                }
            }
            for (r, &v) in y.iter().enumerate() {
                store_row::<Avx512>(a, r, tile * TILE, v);
            }
        }
    }
}
