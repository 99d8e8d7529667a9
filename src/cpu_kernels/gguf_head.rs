//! The output head from a quantized table: the refinement of each row's top logits computed
//! from exactly dequantized rows, so no float32 copy of the table is kept.
//!
//! The logits themselves come from `gguf_matmul` (x @ E.T over the tiled table, which also serves
//! the embedding lookup through `gguf_rows::dequantize_rows` when the head is tied). Here, per
//! row, the `k` largest approximate logits are found as `logits::refine_top_logits` finds them,
//! each chosen table row is dequantized exactly (as `gguf.quants.dequantize`) and its logit is
//! recomputed with the same float32 arithmetic as `refine_top_logits` over a float32 table: the
//! refined logits are bit for bit those of the float32 head.

use super::gguf_layout::{check_shape, GgufType};
use super::gguf_rows::dequantize_row;
use super::logits::{dot_f32, top_k, TopK};
use super::parallel::{parallel_for, threads_for};
use super::simd::Isa;
use crate::dispatch;

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
    let mut top = TopK::new(a.k);
    let mut w = vec![0f32; h];
    for r in start..end {
        let logits = std::slice::from_raw_parts_mut(
            (a.logits as *mut f32).add(r * a.logits_stride),
            a.vocab,
        );
        top_k::<S>(logits, a.k, &mut top);
        let x = (a.hidden as *const f32).add(r * a.hidden_stride);
        for &id in top.ids.iter() {
            dequantize_row(a.ty, a.packed, h, id as usize, &mut w);
            logits[id as usize] = dot_f32::<S>(x, w.as_ptr(), h);
        }
    }
}
