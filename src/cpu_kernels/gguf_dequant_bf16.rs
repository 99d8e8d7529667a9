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
    parallel_for(count, threads, |_| 1, |r| {
        let out = out;
        let (t0, t1) = (a.tile0 + r.start, a.tile0 + r.end);
        with_gguf_type!(a.ty, Q => dispatch!(tiles_t::<Q>(a, t0, t1, out.0)))
    });
    Ok(())
}

#[inline(always)]
unsafe fn tiles_t<S: QuantIsa, const Q: u8>(a: &DequantTArgs, t0: usize, t1: usize, out: *mut Bf16) {
    let t = ty::<Q>();
    let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
    let blocks = a.k / kb;
    let tab = nibble_table(t);
    let table = S::load_f32(tab.as_ptr());
    for tile in t0..t1 {
        let base = (a.packed as *const u8).add(tile * blocks * bb);
        let cnt = (a.n - tile * TILE).min(TILE);
        let col = out.add((tile - a.tile0) * TILE);
        for b in 0..blocks {
            let blk = base.add(b * bb);
            for g in 0..t.groups_per_block() {
                let (s, o) = scale_offset::<S, Q>(blk, g);
                let k0 = b * kb + g * gk;
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
                        Bf16::store_upto::<S>(col.add((k0 + i) * a.out_stride), w, cnt);
                    },
                );
            }
        }
    }
}
