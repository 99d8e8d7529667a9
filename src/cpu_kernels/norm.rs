//! RMSNorm, and residual-add + RMSNorm fused, over rows of `hidden` values.
//!
//! `rms_norm`: out = x * rsqrt(mean(x^2) + eps) * weight. `fused_add_rms_norm`: residual += x
//! (float32 residual stream, in place), then out = rms_norm(residual). Sums and products are
//! float32 (the square sum in a different order than torch's, so float32 results can differ from
//! the reference in the last bit); `out` is rounded once to its dtype.

use super::parallel::{parallel_for, threads_for};
use super::simd::{Elem, Isa, LANES};
use super::{DType, SendPtr};
use crate::{dispatch, with_elem};

/// One call's tensors (addresses of contiguous rows; strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct NormArgs {
    pub rows: usize,
    pub hidden: usize,
    /// input rows (any dtype); with `residual`, the value added to it
    pub x: usize,
    pub x_stride: usize,
    pub x_dtype: DType,
    /// float32 residual rows updated in place (0: plain RMSNorm of x)
    pub residual: usize,
    pub residual_stride: usize,
    pub weight: usize,
    pub weight_dtype: DType,
    pub out: usize,
    pub out_stride: usize,
    pub out_dtype: DType,
    pub eps: f32,
    pub threads: usize,
}

/// Run the (fused) norm.
///
/// # Safety
/// Every address must hold `rows` rows of `hidden` elements of its dtype at its stride (weight:
/// one row); `out` must not overlap the inputs; nothing else may write them during the call.
pub unsafe fn rms_norm(a: &NormArgs) -> Result<(), String> {
    if a.hidden == 0 || a.rows == 0 {
        return Ok(());
    }
    let threads = threads_for(a.rows * a.hidden * 4, a.rows, a.threads);
    let args = *a;
    parallel_for(
        a.rows,
        threads,
        |_| 1,
        move |range| {
            with_elem!(args.x_dtype, X => with_elem!(args.weight_dtype, W => with_elem!(args.out_dtype, O =>
                dispatch!(norm_rows::<X, W, O>(&args, range.start, range.end))
            )))
        },
    );
    Ok(())
}

#[inline(always)]
unsafe fn norm_rows<S: Isa, X: Elem, W: Elem, O: Elem>(a: &NormArgs, start: usize, end: usize) {
    let h = a.hidden;
    let full = h / LANES * LANES;
    let w = a.weight as *const W;
    for r in start..end {
        let x = (a.x as *const X).add(r * a.x_stride);
        let out = SendPtr((a.out as *mut O).add(r * a.out_stride));
        // pass 1: the float32 row (residual += x, or x itself) and its square sum
        let mut acc = S::zero();
        let src: *const f32;
        if a.residual != 0 {
            let res = (a.residual as *mut f32).add(r * a.residual_stride);
            let mut i = 0;
            while i < full {
                let v = S::add(S::load_f32(res.add(i)), X::load::<S>(x.add(i)));
                S::store_f32(res.add(i), v);
                acc = S::fmadd(v, v, acc);
                i += LANES;
            }
            if i < h {
                let n = h - i;
                let v = S::add(S::load_f32_n(res.add(i), n), X::load_n::<S>(x.add(i), n));
                S::store_f32_n(res.add(i), v, n);
                acc = S::fmadd(v, v, acc);
            }
            src = res;
        } else {
            let mut i = 0;
            while i < full {
                let v = X::load::<S>(x.add(i));
                acc = S::fmadd(v, v, acc);
                i += LANES;
            }
            if i < h {
                let v = X::load_n::<S>(x.add(i), h - i);
                acc = S::fmadd(v, v, acc);
            }
            src = std::ptr::null();
        }
        let var = S::reduce_add(acc) / h as f32;
        let inv = S::splat(1.0 / (var + a.eps).sqrt());
        // pass 2: out = (row * inv) * weight
        let mut i = 0;
        while i < h {
            let n = (h - i).min(LANES);
            let v = if src.is_null() {
                X::load_upto::<S>(x.add(i), n)
            } else {
                f32::load_upto::<S>(src.add(i), n)
            };
            let y = S::mul(S::mul(v, inv), W::load_upto::<S>(w.add(i), n));
            O::store_upto::<S>(out.0.add(i), y, n);
            i += LANES;
        }
    }
}
