//! Dequantize a range of tiles of a kept-quantized GGUF weight into a dense bfloat16 scratch,
//! transposed: Wt [k, cols] with cols = the outputs of tiles [tile0, tile1). The caller (the
//! Python `QuantizedTensor.matmul` for large products on AMX machines) then runs oneDNN's
//! bfloat16 GEMM x [m, k] @ Wt on it: the decode costs ~1/m of the product and the weight never
//! exists densely beyond one reused scratch buffer.
//!
//! The tiled layout holds 16 output rows per tile, so each decoded vector (lane j = output row
//! j of the tile, one input feature) is 16 contiguous outputs of one row of Wt: no transpose.
//! Each value is S * c + O in float32 (as `gguf_gemm`), then rounded to bfloat16 (nearest even).

use super::elem::{Bf16, Elem};
use super::gguf_decode::{decode_group, nibble_table, scale_offset, ty, QuantIsa};
use super::gguf_layout::{check_shape, GgufType, TILE};
use super::parallel::{parallel_for, threads_for};
use super::SendPtr;
use crate::{dispatch, with_gguf_type};

/// One dequantization: tiles [tile0, tile1) of the tiled [n, k] weight at `packed` into the
/// bfloat16 [k, out_stride] buffer at `out` (columns 0 .. the tiles' outputs).
#[derive(Clone, Copy, Debug)]
pub struct DequantTArgs {
    pub ty: GgufType,
    pub n: usize,
    pub k: usize,
    pub tile0: usize,
    pub tile1: usize,
    /// the tiled weight
    pub packed: usize,
    /// bfloat16 [k, out_stride]
    pub out: usize,
    /// elements between rows of `out` (>= the columns written)
    pub out_stride: usize,
    pub threads: usize,
}

impl DequantTArgs {
    /// Outputs (columns of `out`) the tiles cover: 16 per tile, the last tile maybe fewer.
    pub fn cols(&self) -> usize {
        (self.tile1 * TILE).min(self.n) - self.tile0 * TILE
    }
}

/// Write Wt [k, cols] (see the module docs).
///
/// # Safety
/// `packed` must hold a tiled [n, k] weight of type `ty`; `out` must hold k rows of
/// `out_stride` bfloat16 values and overlap nothing else.
pub unsafe fn dequantize_t_bf16(a: &DequantTArgs) -> Result<(), String> {
    check_shape(a.ty, a.n, a.k)?;
    let tiles = a.n.div_ceil(TILE);
    if a.tile0 >= a.tile1 || a.tile1 > tiles {
        return Err(format!(
            "tiles [{}, {}) are not a non-empty range of the {tiles} tiles",
            a.tile0, a.tile1
        ));
    }
    if a.out_stride < a.cols() {
        return Err(format!(
            "output row stride {} < the {} columns written",
            a.out_stride,
            a.cols()
        ));
    }
    let count = a.tile1 - a.tile0;
    let threads = threads_for(count * TILE * a.k, count, a.threads);
    let out = SendPtr(a.out as *mut Bf16);
    // threads take whole groups of TILES_TOGETHER tiles
    let groups = count.div_ceil(TILES_TOGETHER);
    parallel_for(groups, threads.min(groups), |_| 1, |r| {
        let out = out;
        let t0 = a.tile0 + r.start * TILES_TOGETHER;
        let t1 = (a.tile0 + r.end * TILES_TOGETHER).min(a.tile1);
        #[cfg(target_arch = "x86_64")]
        if super::simd::use_avx512bf16() {
            return with_gguf_type!(a.ty, Q => unsafe { native::tiles_t::<Q>(a, t0, t1, out.0) });
        }
        with_gguf_type!(a.ty, Q => dispatch!(tiles_t::<Q>(a, t0, t1, out.0)))
    });
    Ok(())
}

/// Tiles decoded side by side: each row of Wt gets 4 x 16 bfloat16 = two whole cache lines at once.
const TILES_TOGETHER: usize = 4;

#[inline(always)]
unsafe fn tiles_t<S: QuantIsa, const Q: u8>(a: &DequantTArgs, t0: usize, t1: usize, out: *mut Bf16) {
    tiles_with::<S, Q, _>(a, t0, t1, out, |p, w, cnt| Bf16::store_upto::<S>(p, w, cnt))
}

/// With AVX512-BF16 the rounding is one `vcvtneps2bf16` (nearest even, as `Bf16::store`; the weights
/// hold no NaN).
#[cfg(target_arch = "x86_64")]
mod native {
    use std::arch::x86_64::*;

    use super::super::elem::Bf16;
    use super::super::simd::Avx512;
    use super::DequantTArgs;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2")]
    pub unsafe fn tiles_t<const Q: u8>(a: &DequantTArgs, t0: usize, t1: usize, out: *mut Bf16) {
        super::tiles_with::<Avx512, Q, _>(
            a,
            t0,
            t1,
            out,
            #[inline(always)]
            |p, w: __m512, cnt| {
                let h = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(w));
                if cnt >= 16 {
                    _mm256_storeu_si256(p as *mut __m256i, h)
                } else {
                    _mm256_mask_storeu_epi16(p as *mut i16, ((1u32 << cnt) - 1) as u16, h)
                }
            },
        )
    }
}

#[inline(always)]
unsafe fn tiles_with<S: QuantIsa, const Q: u8, St: Fn(*mut Bf16, S::V, usize)>(
    a: &DequantTArgs,
    t0: usize,
    t1: usize,
    out: *mut Bf16,
    store: St,
) {
    let t = ty::<Q>();
    let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
    let blocks = a.k / kb;
    let tab = nibble_table(t);
    let table = S::load_f32(tab.as_ptr());
    let mut tile = t0;
    while tile < t1 {
        let together = (t1 - tile).min(TILES_TOGETHER);
        for b in 0..blocks {
            for g in 0..t.groups_per_block() {
                let k0 = b * kb + g * gk;
                for c in tile..tile + together {
                    let blk = (a.packed as *const u8).add((c * blocks + b) * bb);
                    let cnt = (a.n - c * TILE).min(TILE);
                    let col = out.add((c - a.tile0) * TILE + k0 * a.out_stride);
                    let (s, o) = scale_offset::<S, Q>(blk, g);
                    decode_group::<S, Q, _>(
                        blk,
                        g,
                        table,
                        #[inline(always)]
                        |i, v| {
                            let w = if t.has_offset() {
                                S::fmadd(v, s, o)
                            } else {
                                S::mul(v, s)
                            };
                            store(col.add(i * a.out_stride), w, cnt);
                        },
                    );
                }
            }
        }
        tile += together;
    }
}
