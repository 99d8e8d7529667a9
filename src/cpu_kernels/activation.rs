//! SiLU-and-multiply: x [rows, 2I] = [gate | up] -> silu(gate) * up [rows, I], in float32,
//! rounded once to the output dtype (the reference rounds silu(gate) first in 16-bit dtypes, so
//! results can differ from it by one unit in the last place).

use super::parallel::{parallel_for, threads_for};
use super::simd::{Elem, Isa, LANES};
use super::DType;
use crate::{dispatch, with_elem};

#[derive(Clone, Copy, Debug)]
pub struct SiluMulArgs {
    pub rows: usize,
    /// I: half the width of x
    pub inter: usize,
    pub x: usize,
    pub x_stride: usize,
    pub out: usize,
    pub out_stride: usize,
    pub dtype: DType,
    pub threads: usize,
}

/// # Safety
/// `x` must hold rows x 2I and `out` rows x I elements of `dtype` at their strides, not overlapping.
pub unsafe fn silu_and_mul(a: &SiluMulArgs) -> Result<(), String> {
    let args = *a;
    let threads = threads_for(a.rows * a.inter * 8, a.rows, a.threads);
    parallel_for(
        a.rows,
        threads,
        |_| 1,
        move |r| with_elem!(args.dtype, T => dispatch!(silu_rows::<T>(&args, r.start, r.end))),
    );
    Ok(())
}

#[inline(always)]
unsafe fn silu_rows<S: Isa, T: Elem>(a: &SiluMulArgs, start: usize, end: usize) {
    let n_i = a.inter;
    for r in start..end {
        let gate = (a.x as *const T).add(r * a.x_stride);
        let up = gate.add(n_i);
        let out = (a.out as *mut T).add(r * a.out_stride);
        let mut i = 0;
        while i < n_i {
            let n = (n_i - i).min(LANES);
            let g = T::load_upto::<S>(gate.add(i), n);
            let u = T::load_upto::<S>(up.add(i), n);
            T::store_upto::<S>(out.add(i), S::mul(S::silu(g), u), n);
            i += LANES;
        }
    }
}
