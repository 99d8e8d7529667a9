//! Gated activations: x [rows, 2I] = [gate | up] -> act(gate) * up [rows, I], in float32,
//! rounded once to the output dtype (the reference rounds act(gate) first in 16-bit dtypes, so
//! results can differ from it by one unit in the last place).
//!
//! - SiLU (SwiGLU: Llama, Qwen, Mistral, Phi): silu(x) = x / (1 + e^-x);
//! - GELU, tanh approximation (GeGLU: Gemma): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
//!   computed as x / (1 + e^(-2u)) (the same function, without the cancellation of 1 + tanh(u) for
//!   negative x).

use super::parallel::{parallel_for, threads_for};
use super::simd::{Elem, Isa, LANES};
use super::DType;
use crate::{dispatch, with_elem};

/// Which function gates the up projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateAct {
    Silu = 0,
    GeluTanh = 1,
}

impl GateAct {
    pub fn from_code(code: u32) -> Result<GateAct, String> {
        match code {
            0 => Ok(GateAct::Silu),
            1 => Ok(GateAct::GeluTanh),
            _ => Err(format!(
                "unknown activation code {code} (0 = silu, 1 = gelu_tanh)"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GatedActArgs {
    pub act: GateAct,
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
pub unsafe fn gated_act_and_mul(a: &GatedActArgs) -> Result<(), String> {
    let args = *a;
    let threads = threads_for(a.rows * a.inter * 8, a.rows, a.threads);
    parallel_for(
        a.rows,
        threads,
        |_| 1,
        move |r| match args.act {
            GateAct::Silu => {
                with_elem!(args.dtype, T => dispatch!(gated_rows::<T, Silu>(&args, r.start, r.end)))
            }
            GateAct::GeluTanh => {
                with_elem!(args.dtype, T => dispatch!(gated_rows::<T, GeluTanh>(&args, r.start, r.end)))
            }
        },
    );
    Ok(())
}

/// A gate function on 16 lanes.
trait Gate {
    unsafe fn apply<S: Isa>(x: S::V) -> S::V;
}

struct Silu;
impl Gate for Silu {
    #[inline(always)]
    unsafe fn apply<S: Isa>(x: S::V) -> S::V {
        S::silu(x)
    }
}

struct GeluTanh;
impl Gate for GeluTanh {
    #[inline(always)]
    unsafe fn apply<S: Isa>(x: S::V) -> S::V {
        // -2u = x * (-2 sqrt(2/pi)) * (1 + 0.044715 x^2)
        const K: f32 = -2.0 * 0.797_884_6;
        let x2 = S::mul(x, x);
        let inner = S::fmadd(x2, S::splat(0.044_715), S::splat(1.0));
        let e = S::exp(S::mul(S::mul(x, S::splat(K)), inner));
        S::div(x, S::add(S::splat(1.0), e))
    }
}

#[inline(always)]
unsafe fn gated_rows<S: Isa, T: Elem, G: Gate>(a: &GatedActArgs, start: usize, end: usize) {
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
            T::store_upto::<S>(out.add(i), S::mul(G::apply::<S>(g), u), n);
            i += LANES;
        }
    }
}
