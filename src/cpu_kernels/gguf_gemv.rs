//! The streaming product for a few rows (decode batches, m <= 8): memory-bound, so the packed
//! bytes are read once, in order, and each group's codes are decoded in registers
//! (`gguf_decode`) and multiplied into every row's float32 accumulators. Per group and row,
//! y += S * sum_i(x_i c_i) (+ O * sum_i(x_i)); with one or two rows the sums run on several
//! independent accumulators so the FMA latency does not bound the stream.

use super::gguf_decode::{decode_group, nibble_table, scale_offset, ty, QuantIsa};
use super::gguf_matmul::{store_row, GgufMatmulArgs, XRows};
use super::simd::prefetch;
use crate::{dispatch, with_gguf_type};

/// How far ahead (bytes) the next groups' codes are prefetched.
const PREFETCH_AHEAD: usize = 1536;

/// Tiles [t0, t1) of the product, all a.m (1..=8) rows.
pub fn run(a: &GgufMatmulArgs, x: &XRows, t0: usize, t1: usize) {
    macro_rules! go {
        ($q:ident, $($m:literal),*) => {
            match a.m {
                $($m => dispatch!(gemv_tiles::<$q, $m>(a, x, t0, t1)),)*
                _ => unreachable!("the streaming product takes 1 to 8 rows"),
            }
        };
    }
    with_gguf_type!(a.ty, Q => go!(Q, 1, 2, 3, 4, 5, 6, 7, 8))
}

#[inline(always)]
unsafe fn gemv_tiles<S: QuantIsa, const Q: u8, const M: usize>(
    a: &GgufMatmulArgs,
    x: &XRows,
    t0: usize,
    t1: usize,
) {
    let t = ty::<Q>();
    let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
    let groups = t.groups_per_block();
    let group_bytes = bb / groups;
    let blocks = a.k / kb;
    let tab = nibble_table(t);
    let table = S::load_f32(tab.as_ptr());
    // independent accumulators per row: enough chains in flight for the FMA latency
    let chains = if M == 1 {
        4
    } else if M <= 4 {
        2
    } else {
        1
    };
    let mut xr = [std::ptr::null::<f32>(); M];
    for (r, p) in xr.iter_mut().enumerate() {
        *p = x.row(r);
    }
    for tile in t0..t1 {
        let base = (a.packed as *const u8).add(tile * blocks * bb);
        let mut y = [S::zero(); M];
        for b in 0..blocks {
            let blk = base.add(b * bb);
            for g in 0..groups {
                prefetch(blk.wrapping_add(g * group_bytes + PREFETCH_AHEAD), group_bytes);
                let k0 = b * kb + g * gk;
                let mut acc = [[S::zero(); 4]; M];
                decode_group::<S, Q, _>(blk, g, table, #[inline(always)] |i, v| {
                    let c = i % chains;
                    for r in 0..M {
                        acc[r][c] = S::fmadd(v, S::splat(*xr[r].add(k0 + i)), acc[r][c]);
                    }
                });
                let (s, o) = scale_offset::<S, Q>(blk, g);
                for r in 0..M {
                    let mut sum = acc[r][0];
                    for ac in acc[r].iter().take(chains).skip(1) {
                        sum = S::add(sum, *ac);
                    }
                    y[r] = S::fmadd(sum, s, y[r]);
                    if t.has_offset() {
                        y[r] = S::fmadd(o, S::splat(x.sum(r, k0 / 32)), y[r]);
                    }
                }
            }
        }
        for (r, &v) in y.iter().enumerate() {
            store_row::<S>(a, r, tile * 16, v);
        }
    }
}
