//! Row operations on tiled GGUF weights (`gguf_layout`): packing a tensor's GGUF bytes into
//! tiles, converting rows back to GGUF bytes, copying rows between tiled weights (row
//! permutations such as the llama q/k un-permute, and concatenations such as fused q/k/v),
//! exact dequantization of chosen rows (the embedding lookup, the float32 path, tests), and the
//! output head's refinement from exactly dequantized rows.
//!
//! The conversions work row by row through [`BlockVals`], so every one is lossless.
//!
//! Refinement: the logits come from `gguf_matmul` (x @ E.T over the tiled table, which also
//! serves the embedding lookup when the head is tied). Per row, the `k` largest approximate
//! logits are found as `logits::refine_top_logits` finds them, each chosen table row is
//! dequantized exactly (as `gguf.quants.dequantize`) and its logit recomputed with the same
//! float32 arithmetic as `refine_top_logits` over a float32 table: the refined logits are bit for
//! bit those of the float32 head, and no float32 copy of the table is kept.

use super::gguf_layout::{
    check_shape, gguf_decode, gguf_encode, gguf_row_bytes, packed_bytes, tile_dequantize,
    tile_load, tile_store, BlockVals, GgufType, TILE,
};
use super::logits::{refine_rows_with, RefinedRows};
use super::parallel::{parallel_for, threads_for};
use super::simd::Isa;
use super::SendPtr;
use crate::dispatch;

/// Where a tiled [n, k] weight of type `t` keeps row `row`'s block `b`: (byte offset of the
/// tile block, row within the tile).
#[inline(always)]
pub fn block_of(t: GgufType, k: usize, row: usize, b: usize) -> (usize, usize) {
    let blocks = k / t.block_values();
    (
        ((row / TILE) * blocks + b) * t.tile_block_bytes(),
        row % TILE,
    )
}

/// Pack a [n, k] tensor's GGUF bytes (`raw`, rows of [`gguf_row_bytes`]) into `packed` (sized
/// by [`packed_bytes`]); rows past n in the last tile are zero.
pub fn pack(
    t: GgufType,
    raw: &[u8],
    n: usize,
    k: usize,
    packed: &mut [u8],
    threads: usize,
) -> Result<(), String> {
    let want = packed_bytes(t, n, k)?;
    let row_bytes = gguf_row_bytes(t, k);
    if raw.len() != n * row_bytes {
        return Err(format!(
            "a {} tensor [{n}, {k}] has {} bytes, got {}",
            t.name(),
            n * row_bytes,
            raw.len()
        ));
    }
    if packed.len() != want {
        return Err(format!(
            "packed buffer has {} bytes, needs {want}",
            packed.len()
        ));
    }
    let tiles = n.div_ceil(TILE);
    let tile_bytes = want / tiles;
    let blocks = k / t.block_values();
    let dst = SendPtr(packed.as_mut_ptr());
    let threads = threads_for(n * k, tiles, threads);
    parallel_for(
        tiles,
        threads,
        |_| 1,
        move |r| {
            let dst = dst;
            let mut v = BlockVals::default();
            for tile in r {
                // each thread owns whole tiles: disjoint ranges of `packed`
                let out = unsafe {
                    std::slice::from_raw_parts_mut(dst.0.add(tile * tile_bytes), tile_bytes)
                };
                out.fill(0);
                for j in 0..TILE.min(n - tile * TILE) {
                    let row = &raw[(tile * TILE + j) * row_bytes..][..row_bytes];
                    for b in 0..blocks {
                        gguf_decode(t, &row[b * t.gguf_block_bytes()..], &mut v);
                        let at = b * t.tile_block_bytes();
                        tile_store(t, &mut out[at..at + t.tile_block_bytes()], j, &v);
                    }
                }
            }
        },
    );
    Ok(())
}

fn check_rows(rows: &[i64], n: usize) -> Result<(), String> {
    if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r as usize >= n) {
        return Err(format!("row index {bad} is out of range for {n} rows"));
    }
    Ok(())
}

/// The GGUF bytes of rows `rows` of a tiled [n, k] weight into `raw` (len(rows) rows).
pub fn unpack_rows(
    t: GgufType,
    packed: &[u8],
    n: usize,
    k: usize,
    rows: &[i64],
    raw: &mut [u8],
) -> Result<(), String> {
    if packed.len() != packed_bytes(t, n, k)? {
        return Err("packed buffer does not match its shape".into());
    }
    check_rows(rows, n)?;
    let row_bytes = gguf_row_bytes(t, k);
    if raw.len() != rows.len() * row_bytes {
        return Err(format!(
            "output has {} bytes, needs {}",
            raw.len(),
            rows.len() * row_bytes
        ));
    }
    let mut v = BlockVals::default();
    for (i, &row) in rows.iter().enumerate() {
        for b in 0..k / t.block_values() {
            let (at, j) = block_of(t, k, row as usize, b);
            tile_load(t, &packed[at..at + t.tile_block_bytes()], j, &mut v);
            let dst = &mut raw[i * row_bytes + b * t.gguf_block_bytes()..];
            gguf_encode(t, &v, dst);
        }
    }
    Ok(())
}

/// Row `dst_row0 + i` of the tiled [dst_n, k] weight `dst` becomes row `rows[i]` of the tiled
/// [src_n, k] weight `src` (same type).
#[allow(clippy::too_many_arguments)]
pub fn copy_rows(
    t: GgufType,
    k: usize,
    src: &[u8],
    src_n: usize,
    rows: &[i64],
    dst: &mut [u8],
    dst_n: usize,
    dst_row0: usize,
) -> Result<(), String> {
    if src.len() != packed_bytes(t, src_n, k)? || dst.len() != packed_bytes(t, dst_n, k)? {
        return Err("packed buffer does not match its shape".into());
    }
    check_rows(rows, src_n)?;
    if dst_row0 + rows.len() > dst_n {
        return Err(format!(
            "rows {dst_row0}..{} do not fit a weight of {dst_n} rows",
            dst_row0 + rows.len()
        ));
    }
    let bb = t.tile_block_bytes();
    let mut v = BlockVals::default();
    for (i, &row) in rows.iter().enumerate() {
        for b in 0..k / t.block_values() {
            let (from, j) = block_of(t, k, row as usize, b);
            tile_load(t, &src[from..from + bb], j, &mut v);
            let (to, jd) = block_of(t, k, dst_row0 + i, b);
            tile_store(t, &mut dst[to..to + bb], jd, &v);
        }
    }
    Ok(())
}

/// Dequantize rows `rows` of a tiled [n, k] weight exactly into float32 `out` (row i at
/// `out + i * out_stride`), split over threads for many rows.
///
/// # Safety
/// `packed` must hold a tiled [n, k] weight of type `t`; `out` must have room for the rows and
/// overlap nothing else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dequantize_rows(
    t: GgufType,
    packed: usize,
    n: usize,
    k: usize,
    rows: &[i64],
    out: usize,
    out_stride: usize,
    threads: usize,
) -> Result<(), String> {
    check_shape(t, n, k)?;
    check_rows(rows, n)?;
    if out_stride < k && rows.len() > 1 {
        return Err(format!("output row stride {out_stride} < {k}"));
    }
    let out = SendPtr(out as *mut f32);
    let threads = threads_for(rows.len() * k * 4, rows.len(), threads);
    parallel_for(
        rows.len(),
        threads,
        |_| 1,
        move |r| {
            let out = out;
            for i in r {
                let dst = std::slice::from_raw_parts_mut(out.0.add(i * out_stride), k);
                dequantize_row(t, packed, k, rows[i] as usize, dst);
            }
        },
    );
    Ok(())
}

/// One row, exactly, into `dst` [k].
///
/// # Safety
/// `packed` must hold a tiled weight of type `t` with at least `row + 1` rows of k values.
pub unsafe fn dequantize_row(t: GgufType, packed: usize, k: usize, row: usize, dst: &mut [f32]) {
    let kb = t.block_values();
    let bb = t.tile_block_bytes();
    for b in 0..k / kb {
        let (at, j) = block_of(t, k, row, b);
        let blk = std::slice::from_raw_parts((packed + at) as *const u8, bb);
        tile_dequantize(t, blk, j, &mut dst[b * kb..(b + 1) * kb]);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct QuantRefineArgs {
    pub ty: GgufType,
    pub rows: usize,
    pub vocab: usize,
    pub hidden_size: usize,
    /// float32 [rows, vocab] (row stride `logits_stride`), updated in place
    pub logits: usize,
    pub logits_stride: usize,
    /// float32 [rows, hidden_size] (row stride `hidden_stride`)
    pub hidden: usize,
    pub hidden_stride: usize,
    /// the tiled [vocab, hidden_size] table
    pub packed: usize,
    pub k: usize,
    pub threads: usize,
}

/// Recompute each row's `k` largest logits exactly, in place.
///
/// # Safety
/// The addresses must hold the tensors described by `a`; `logits` overlaps nothing else.
pub unsafe fn refine_top_logits_quant(a: &QuantRefineArgs) -> Result<(), String> {
    check_shape(a.ty, a.vocab, a.hidden_size)?;
    if a.k == 0 || a.rows == 0 {
        return Ok(());
    }
    let args = QuantRefineArgs {
        k: a.k.min(a.vocab),
        ..*a
    };
    let threads = threads_for(a.rows * a.vocab, a.rows, a.threads);
    parallel_for(
        a.rows,
        threads,
        |_| 1,
        move |r| dispatch!(refine_rows(&args, r.start, r.end)),
    );
    Ok(())
}

#[inline(always)]
unsafe fn refine_rows<S: Isa>(a: &QuantRefineArgs, start: usize, end: usize) {
    let h = a.hidden_size;
    let rows = RefinedRows {
        vocab: a.vocab,
        hidden_size: h,
        logits: a.logits,
        logits_stride: a.logits_stride,
        hidden: a.hidden,
        hidden_stride: a.hidden_stride,
        k: a.k,
    };
    let mut w = vec![0f32; h];
    refine_rows_with::<S>(&rows, start, end, |id| {
        dequantize_row(a.ty, a.packed, h, id, &mut w);
        w.as_ptr()
    });
}
