//! Rotary position embedding of q and k in place, optionally fused with writing K (rotated) and V
//! into the paged cache through the slot mapping; and the plain cache write.
//!
//! Rotation in float32 from the float32 cos/sin cache ([max_positions, R]: cos in the first R/2
//! columns, sin in the last R/2), exactly as the reference: o1 = x1*cos - x2*sin,
//! o2 = x2*cos + x1*sin (no fused multiply-add), rounded once to the storage dtype.
//! Only the first R = `rotary_dim` (<= D) dimensions of a head rotate (partial rotary: Phi-3,
//! StableLM); the other D - R pass through (copied into the cache when it is written).
//! NeoX style pairs (i, i + R/2); GPT-J style pairs (2i, 2i + 1).

use super::parallel::{parallel_for, threads_for};
use super::simd::{Elem, Isa, LANES};
use super::{slice_from, DType};
use crate::{dispatch, with_elem};

/// Tensors of one call (addresses; strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct RopeArgs {
    pub tokens: usize,
    pub head_dim: usize,
    /// R: the leading dimensions of each head that rotate (even, <= head_dim)
    pub rotary_dim: usize,
    pub is_neox: bool,
    /// dtype of q, k (and v)
    pub dtype: DType,
    /// int32 [tokens]
    pub positions: usize,
    /// float32 [max_positions, rotary_dim]
    pub cos_sin: usize,
    pub max_positions: usize,
    /// q [tokens, q_heads, head_dim] rotated in place (token stride `q_stride`); 0 heads: none
    pub q: usize,
    pub q_stride: usize,
    pub q_heads: usize,
    /// k [tokens, k_heads, head_dim]: rotated in place, or (with a cache) rotated into the cache
    pub k: usize,
    pub k_stride: usize,
    pub k_heads: usize,
    /// The cache write (k_cache == 0: none): v [tokens, k_heads, head_dim] copied to v_cache.
    pub cache: Option<CacheArgs>,
    pub threads: usize,
}

/// Where a cache write goes: caches [num_slots, k_heads, head_dim] (the paged layout
/// [blocks, block_size, heads, D] flattened), in the same dtype as the source.
#[derive(Clone, Copy, Debug)]
pub struct CacheArgs {
    pub v: usize,
    pub v_stride: usize,
    /// int32 [tokens]; a negative slot skips that token
    pub slots: usize,
    pub k_cache: usize,
    pub v_cache: usize,
    pub num_slots: usize,
    /// dtype of the caches: the source dtype, or any with a float32 source (any for a plain copy)
    pub dtype: DType,
}

fn check_indices(a: &RopeArgs, with_positions: bool) -> Result<(), String> {
    if with_positions {
        let pos: &[i32] = unsafe { slice_from(a.positions, a.tokens) };
        if let Some((t, &p)) = pos
            .iter()
            .enumerate()
            .find(|(_, &p)| p < 0 || p as usize >= a.max_positions)
        {
            return Err(format!(
                "position {p} of token {t} is outside the rotary cache (0..{})",
                a.max_positions
            ));
        }
    }
    if let Some(c) = &a.cache {
        let slots: &[i32] = unsafe { slice_from(c.slots, a.tokens) };
        if let Some((t, &s)) = slots
            .iter()
            .enumerate()
            .find(|(_, &s)| s >= 0 && s as usize >= c.num_slots)
        {
            return Err(format!(
                "slot {s} of token {t} is outside the KV cache ({} slots)",
                c.num_slots
            ));
        }
    }
    Ok(())
}

/// Rotate q and k in place; with `a.cache`, k goes rotated into the cache instead (k's source is
/// left as it was) and v is copied there too.
///
/// # Safety
/// The addresses must hold the tensors described by `a`, q/k/v not overlapping each other's
/// heads, nothing else writing them during the call.
pub unsafe fn rotary_embedding(a: &RopeArgs) -> Result<(), String> {
    if a.head_dim % 2 != 0 {
        return Err(format!("head_dim {} is odd", a.head_dim));
    }
    if a.rotary_dim == 0 || !a.rotary_dim.is_multiple_of(2) || a.rotary_dim > a.head_dim {
        return Err(format!(
            "rotary_dim {} must be even, positive and at most head_dim {}",
            a.rotary_dim, a.head_dim
        ));
    }
    check_indices(a, true)?;
    let args = *a;
    let work = a.tokens * (a.q_heads + 2 * a.k_heads) * a.head_dim * 2;
    let threads = threads_for(work, a.tokens, a.threads);
    let cache_dtype = a.cache.map_or(a.dtype, |c| c.dtype);
    if cache_dtype != a.dtype && a.dtype != DType::F32 {
        return Err(format!(
            "rotating {:?} k into a {:?} cache (only float32 sources may differ)",
            a.dtype, cache_dtype
        ));
    }
    parallel_for(
        a.tokens,
        threads,
        |_| 1,
        move |r| with_elem!(args.dtype, T => with_elem!(cache_dtype, C => dispatch!(rope_tokens::<T, C>(&args, r.start, r.end)))),
    );
    Ok(())
}

/// Write k and v [tokens, heads, D] into the cache at their slots (the plain `reshape_and_cache`).
///
/// # Safety
/// As [`rotary_embedding`] (positions and q unused).
pub unsafe fn cache_write(a: &RopeArgs) -> Result<(), String> {
    check_indices(a, false)?;
    let args = *a;
    let work = a.tokens * 2 * a.k_heads * a.head_dim * 2;
    let threads = threads_for(work, a.tokens, a.threads);
    let cache_dtype = a.cache.map_or(a.dtype, |c| c.dtype);
    parallel_for(
        a.tokens,
        threads,
        |_| 1,
        move |r| with_elem!(args.dtype, T => with_elem!(cache_dtype, C => dispatch!(copy_tokens::<T, C>(&args, r.start, r.end)))),
    );
    Ok(())
}

#[inline(always)]
unsafe fn copy_head<S: Isa, T: Elem, C: Elem>(src: *const T, dst: *mut C, d: usize) {
    let mut i = 0;
    while i < d {
        let n = (d - i).min(LANES);
        C::store_upto::<S>(dst.add(i), T::load_upto::<S>(src.add(i), n), n);
        i += LANES;
    }
}

/// Rotate the first `r` dimensions of one head from `src` into `dst` (may be the same address).
#[inline(always)]
unsafe fn rotate_head<S: Isa, T: Elem, C: Elem>(
    src: *const T,
    dst: *mut C,
    cos: *const f32,
    sin: *const f32,
    r: usize,
    neox: bool,
) {
    let half = r / 2;
    if neox {
        let mut i = 0;
        while i < half {
            let n = (half - i).min(LANES);
            let x1 = T::load_upto::<S>(src.add(i), n);
            let x2 = T::load_upto::<S>(src.add(half + i), n);
            let c = f32::load_upto::<S>(cos.add(i), n);
            let s = f32::load_upto::<S>(sin.add(i), n);
            let o1 = S::sub(S::mul(x1, c), S::mul(x2, s));
            let o2 = S::add(S::mul(x2, c), S::mul(x1, s));
            C::store_upto::<S>(dst.add(i), o1, n);
            C::store_upto::<S>(dst.add(half + i), o2, n);
            i += LANES;
        }
    } else {
        for i in 0..half {
            let x1 = (*src.add(2 * i)).to_f32();
            let x2 = (*src.add(2 * i + 1)).to_f32();
            let (c, s) = (*cos.add(i), *sin.add(i));
            *dst.add(2 * i) = C::from_f32(x1 * c - x2 * s);
            *dst.add(2 * i + 1) = C::from_f32(x2 * c + x1 * s);
        }
    }
}

#[inline(always)]
unsafe fn rope_tokens<S: Isa, T: Elem, C: Elem>(a: &RopeArgs, start: usize, end: usize) {
    let d = a.head_dim;
    let r = a.rotary_dim;
    let pos = a.positions as *const i32;
    for t in start..end {
        let p = *pos.add(t) as usize;
        let cos = (a.cos_sin as *const f32).add(p * r);
        let sin = cos.add(r / 2);
        let q = (a.q as *mut T).add(t * a.q_stride);
        for h in 0..a.q_heads {
            let x = q.add(h * d);
            rotate_head::<S, T, T>(x, x, cos, sin, r, a.is_neox);
        }
        let k = (a.k as *mut T).add(t * a.k_stride);
        match &a.cache {
            None => {
                for h in 0..a.k_heads {
                    let x = k.add(h * d);
                    rotate_head::<S, T, T>(x, x, cos, sin, r, a.is_neox);
                }
            }
            Some(c) => {
                let slot = *(c.slots as *const i32).add(t);
                if slot < 0 {
                    continue;
                }
                let row = slot as usize * a.k_heads * d;
                let kc = (c.k_cache as *mut C).add(row);
                let vc = (c.v_cache as *mut C).add(row);
                let v = (c.v as *const T).add(t * c.v_stride);
                for h in 0..a.k_heads {
                    rotate_head::<S, T, C>(k.add(h * d), kc.add(h * d), cos, sin, r, a.is_neox);
                }
                if r < d {
                    // partial rotary: the pass-through dims of k go to the cache as they are
                    for h in 0..a.k_heads {
                        copy_head::<S, T, C>(k.add(h * d + r), kc.add(h * d + r), d - r);
                    }
                }
                copy_head::<S, T, C>(v, vc, a.k_heads * d);
            }
        }
    }
}

#[inline(always)]
unsafe fn copy_tokens<S: Isa, T: Elem, C: Elem>(a: &RopeArgs, start: usize, end: usize) {
    let Some(c) = &a.cache else { return };
    let d = a.head_dim;
    for t in start..end {
        let slot = *(c.slots as *const i32).add(t);
        if slot < 0 {
            continue;
        }
        let row = slot as usize * a.k_heads * d;
        let k = (a.k as *const T).add(t * a.k_stride);
        let v = (c.v as *const T).add(t * c.v_stride);
        for h in 0..a.k_heads {
            copy_head::<S, T, C>(k.add(h * d), (c.k_cache as *mut C).add(row + h * d), d);
            copy_head::<S, T, C>(v.add(h * d), (c.v_cache as *mut C).add(row + h * d), d);
        }
    }
}
