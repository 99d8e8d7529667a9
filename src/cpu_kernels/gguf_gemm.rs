//! The large-batch product with float32 FMAs: a block of rows is packed as float32 in groups of
//! [`MR`] rows ([k][6] per group), each panel of [`NB`] tiles (64 outputs) is dequantized exactly
//! to float32 once per chunk of 128 k ([128][64], in L1), then a 6 x 64 register-blocked microkernel
//! runs every row group against it. The decode is paid once per panel and row block, so the
//! product runs at the speed of a float32 GEMM whose weights never exist in memory beyond one
//! panel per thread.

use std::cell::RefCell;

use super::gguf_decode::{decode_group, nibble_table, scale_offset, ty, QuantIsa};
use super::gguf_layout::TILE;
use super::gguf_matmul::{store_row, GgufMatmulArgs};
use super::simd::{Elem, Isa};
use crate::{dispatch, with_elem, with_gguf_type};

/// Tiles per panel.
pub const NB: usize = 4;
/// Rows per microkernel call (and per group of packed rows).
pub const MR: usize = 6;
/// Input features per panel chunk (whole scale groups): 128 x 64 float32 = 32 KiB of panel stay
/// in L1 while every row group of the block runs over them.
const KC: usize = 128;

/// Rows packed by [`pack_x`]: float32 [row groups][k][MR] (rows past the block are zero).
#[derive(Clone, Copy)]
pub struct PackedRows(pub *const f32);
unsafe impl Send for PackedRows {}
unsafe impl Sync for PackedRows {}

/// Pack rows [r0, r0 + rows) of x (any dtype) as float32 groups of [`MR`] rows into `buf`.
pub fn pack_x(a: &GgufMatmulArgs, r0: usize, rows: usize, buf: &mut Vec<f32>) {
    let k = a.k;
    buf.clear();
    buf.resize(rows.div_ceil(MR) * k * MR, 0.0);
    for r in 0..rows {
        let (g, j) = (r / MR, r % MR);
        let dst = &mut buf[g * k * MR..(g + 1) * k * MR];
        unsafe {
            with_elem!(a.x_dtype, T => {
                let src = (a.x as *const T).add((r0 + r) * a.x_stride);
                for i in 0..k {
                    dst[i * MR + j] = (*src.add(i)).to_f32();
                }
            })
        }
    }
}

/// Per-thread panel and output accumulators.
#[derive(Default)]
struct Scratch {
    panel: Vec<f32>,
    y: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Panels [p0, p1) for the `rows` packed rows `x`, which are rows row0.. of the output.
pub fn run(a: &GgufMatmulArgs, x: PackedRows, row0: usize, rows: usize, p0: usize, p1: usize) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let kc = KC.min(a.k);
        s.panel.resize(kc * NB * TILE, 0.0);
        s.y.resize(rows * NB * TILE, 0.0);
        let Scratch { panel, y } = &mut *s;
        with_gguf_type!(a.ty, Q => dispatch!(panels::<Q>(a, x, row0, rows, p0, p1, kc, panel, y)))
    })
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panels<S: QuantIsa, const Q: u8>(
    a: &GgufMatmulArgs,
    x: PackedRows,
    row0: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    kc: usize,
    panel: &mut [f32],
    y: &mut [f32],
) {
    let tiles = a.n.div_ceil(TILE);
    for p in p0..p1 {
        let t0 = p * NB;
        let nt = (tiles - t0).min(NB);
        let mut k0 = 0;
        while k0 < a.k {
            let k1 = (k0 + kc).min(a.k);
            decode_panel::<S, Q>(a, t0, nt, k0, k1, panel);
            let mut r = 0;
            while r < rows {
                let rr = (rows - r).min(MR);
                let (pp, yy) = (panel.as_ptr(), y.as_mut_ptr().add(r * NB * TILE));
                let xg = x.0.add((r / MR) * a.k * MR + k0 * MR);
                let acc = k0 > 0;
                match rr {
                    1 => micro::<S, 1>(pp, k1 - k0, xg, yy, acc),
                    2 => micro::<S, 2>(pp, k1 - k0, xg, yy, acc),
                    3 => micro::<S, 3>(pp, k1 - k0, xg, yy, acc),
                    4 => micro::<S, 4>(pp, k1 - k0, xg, yy, acc),
                    5 => micro::<S, 5>(pp, k1 - k0, xg, yy, acc),
                    _ => micro::<S, MR>(pp, k1 - k0, xg, yy, acc),
                }
                r += rr;
            }
            k0 = k1;
        }
        for r in 0..rows {
            for c in 0..nt {
                let v = S::load_f32(y.as_ptr().add((r * NB + c) * TILE));
                store_row::<S>(a, row0 + r, (t0 + c) * TILE, v);
            }
        }
    }
}

/// Dequantize tiles [t0, t0 + nt) over k in [k0, k1) into `panel` [k1 - k0][NB][16] (the
/// columns of missing tiles are zero).
#[inline(always)]
unsafe fn decode_panel<S: QuantIsa, const Q: u8>(
    a: &GgufMatmulArgs,
    t0: usize,
    nt: usize,
    k0: usize,
    k1: usize,
    panel: &mut [f32],
) {
    let t = ty::<Q>();
    let (gk, bb) = (t.group(), t.tile_block_bytes());
    let blocks = a.k / t.block_values();
    let tab = nibble_table(t);
    let table = S::load_f32(tab.as_ptr());
    let out = panel.as_mut_ptr();
    for c in 0..NB {
        if c >= nt {
            for kk in 0..k1 - k0 {
                S::store_f32(out.add((kk * NB + c) * TILE), S::zero());
            }
            continue;
        }
        let base = (a.packed as *const u8).add((t0 + c) * blocks * bb);
        // the chunk covers whole scale groups, maybe part of a K-quant block
        for gi in k0 / gk..k1 / gk {
            let (b, g) = (gi / t.groups_per_block(), gi % t.groups_per_block());
            let blk = base.add(b * bb);
            let (s, o) = scale_offset::<S, Q>(blk, g);
            let kk0 = gi * gk - k0;
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
                    S::store_f32(out.add(((kk0 + i) * NB + c) * TILE), w);
                },
            );
        }
    }
}

/// y[R][NB x 16] (+)= the packed row group `xg` ([kc][MR], from its chunk start) @ panel.
#[inline(always)]
unsafe fn micro<S: Isa, const R: usize>(
    panel: *const f32,
    kc: usize,
    xg: *const f32,
    y: *mut f32,
    accumulate: bool,
) {
    let mut acc = [[S::zero(); NB]; R];
    for kk in 0..kc {
        let mut w = [S::zero(); NB];
        for (c, wc) in w.iter_mut().enumerate() {
            *wc = S::load_f32(panel.add((kk * NB + c) * TILE));
        }
        for r in 0..R {
            let xv = S::splat(*xg.add(kk * MR + r));
            for c in 0..NB {
                acc[r][c] = S::fmadd(w[c], xv, acc[r][c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let p = y.add((r * NB + c) * TILE);
            let v = if accumulate {
                S::add(v, S::load_f32(p))
            } else {
                v
            };
            S::store_f32(p, v);
        }
    }
}
