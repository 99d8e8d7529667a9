//! Output-head refinement: per row, find the `k` largest approximate logits (from the 16-bit or
//! 8-bit head) and recompute them exactly in float32 from the float32 head weights, in place.
//! The tokens that matter (argmax, top-k, log-probabilities) then carry float32 precision.

use super::parallel::{parallel_for, threads_for};
use super::simd::{Isa, LANES};
use crate::dispatch;

#[derive(Clone, Copy, Debug)]
pub struct RefineArgs {
    pub rows: usize,
    pub vocab: usize,
    pub hidden_size: usize,
    /// float32 [rows, vocab] (row stride `logits_stride`), updated in place
    pub logits: usize,
    pub logits_stride: usize,
    /// float32 [rows, hidden_size] (row stride `hidden_stride`)
    pub hidden: usize,
    pub hidden_stride: usize,
    /// float32 [vocab, hidden_size], contiguous
    pub head: usize,
    pub k: usize,
    pub threads: usize,
}

/// # Safety
/// The addresses must hold the tensors described by `a`; `logits` overlaps nothing else.
pub unsafe fn refine_top_logits(a: &RefineArgs) -> Result<(), String> {
    if a.k == 0 || a.vocab == 0 || a.rows == 0 {
        return Ok(());
    }
    let args = RefineArgs {
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

/// The `k` largest values seen so far (unordered), with the smallest of them as the threshold.
/// (Also used by the refinement from quantized rows, `gguf_rows`.)
pub(crate) struct TopK {
    pub(crate) ids: Vec<u32>,
    vals: Vec<f32>,
    at: usize,
    thr: f32,
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK {
            ids: Vec::with_capacity(k),
            vals: Vec::with_capacity(k),
            at: 0,
            thr: 0.0,
        }
    }

    fn reset(&mut self, x: &[f32], k: usize) {
        self.ids.clear();
        self.vals.clear();
        for (i, &v) in x.iter().enumerate().take(k) {
            self.ids.push(i as u32);
            self.vals
                .push(if v.is_nan() { f32::NEG_INFINITY } else { v });
        }
        self.find_min();
    }

    fn find_min(&mut self) {
        let mut at = 0;
        for (i, &v) in self.vals.iter().enumerate() {
            if v < self.vals[at] {
                at = i;
            }
        }
        self.at = at;
        self.thr = self.vals[at];
    }

    #[inline(always)]
    fn consider(&mut self, i: usize, v: f32) {
        if v > self.thr {
            self.ids[self.at] = i as u32;
            self.vals[self.at] = v;
            self.find_min();
        }
    }
}

/// Indices of the `k` largest values of `x` into `top.ids` (any order; NaNs are never chosen
/// over numbers).
#[inline(always)]
pub(crate) unsafe fn top_k<S: Isa>(x: &[f32], k: usize, top: &mut TopK) {
    top.reset(x, k);
    let n = x.len();
    let mut i = k;
    // one at a time up to a vector boundary, then 16 at a time against the threshold
    while i < n && i % LANES != 0 {
        top.consider(i, x[i]);
        i += 1;
    }
    let p = x.as_ptr();
    while i + LANES <= n {
        let m = S::gt_mask(S::load_f32(p.add(i)), S::splat(top.thr));
        if m != 0 {
            for b in 0..LANES {
                if m & (1 << b) != 0 {
                    top.consider(i + b, x[i + b]);
                }
            }
        }
        i += LANES;
    }
    while i < n {
        top.consider(i, x[i]);
        i += 1;
    }
}

/// x . w over `h` float32 values: 16-lane FMAs, then a masked tail, then the lane sum (the one
/// arithmetic every refinement uses, so refined logits agree bit for bit).
#[inline(always)]
pub(crate) unsafe fn dot_f32<S: Isa>(x: *const f32, w: *const f32, h: usize) -> f32 {
    let mut acc = S::zero();
    let mut i = 0;
    while i + LANES <= h {
        acc = S::fmadd(S::load_f32(x.add(i)), S::load_f32(w.add(i)), acc);
        i += LANES;
    }
    if i < h {
        acc = S::fmadd(
            S::load_f32_n(x.add(i), h - i),
            S::load_f32_n(w.add(i), h - i),
            acc,
        );
    }
    S::reduce_add(acc)
}

#[inline(always)]
unsafe fn refine_rows<S: Isa>(a: &RefineArgs, start: usize, end: usize) {
    let (head, h) = (a.head as *const f32, a.hidden_size);
    let rows = RefinedRows {
        vocab: a.vocab,
        hidden_size: h,
        logits: a.logits,
        logits_stride: a.logits_stride,
        hidden: a.hidden,
        hidden_stride: a.hidden_stride,
        k: a.k,
    };
    refine_rows_with::<S>(&rows, start, end, |id| head.add(id * h));
}

/// The logits and hidden states of a refinement, whichever form holds the head's rows.
pub(crate) struct RefinedRows {
    pub(crate) vocab: usize,
    pub(crate) hidden_size: usize,
    /// float32 [rows, vocab] (row stride `logits_stride`), updated in place
    pub(crate) logits: usize,
    pub(crate) logits_stride: usize,
    /// float32 [rows, hidden_size] (row stride `hidden_stride`)
    pub(crate) hidden: usize,
    pub(crate) hidden_stride: usize,
    /// logits recomputed per row (at most vocab)
    pub(crate) k: usize,
}

/// Rows start..end: the `k` largest logits of each recomputed as x . head_row(id), where
/// `head_row` gives head row `id` as `hidden_size` float32 values (read from the float32 head, or
/// dequantized into the caller's buffer). Shared by this refinement and `gguf_rows`'.
#[inline(always)]
pub(crate) unsafe fn refine_rows_with<S: Isa>(
    a: &RefinedRows,
    start: usize,
    end: usize,
    mut head_row: impl FnMut(usize) -> *const f32,
) {
    let h = a.hidden_size;
    let mut top = TopK::new(a.k);
    for r in start..end {
        let logits = std::slice::from_raw_parts_mut(
            (a.logits as *mut f32).add(r * a.logits_stride),
            a.vocab,
        );
        top_k::<S>(logits, a.k, &mut top);
        let x = (a.hidden as *const f32).add(r * a.hidden_stride);
        for &id in top.ids.iter() {
            logits[id as usize] = dot_f32::<S>(x, head_row(id as usize), h);
        }
    }
}
