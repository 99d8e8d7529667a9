//! Paged attention over the block table, straight from the KV cache: decode rows (one query) and
//! prefill rows (any query length, causal, cached prefix included) in one call.
//!
//! Layout (see `lmrs.kernels.reference`): caches [num_blocks, block_size, Hk, D]; row r's
//! queries are tokens qsl[r]..qsl[r+1], the last positions of its seq_lens[r] keys; key j of row
//! r lives in block block_table[r, j / block_size] at offset j % block_size.
//!
//! Work item = (row, KV head, tile of queries): the G = Hq / Hk query heads of the KV head and
//! up to 16 / G consecutive queries share every K/V row read. Keys are visited in chunks of
//! [`CHUNK`] with an online (flash) softmax in float32: scores, running max and sum, then the
//! probability-weighted V sum accumulated in float32, normalized and rounded once at the end.
//!
//! Options (Gemma 2/3, Mistral): a sliding window W (a query at position p sees the keys
//! p - W < j <= p) and a score soft-cap c (score = c * tanh(score / c), before masking). With a
//! window a work item starts at the first key its earliest query sees, so the blocks wholly
//! before the window are never read (nor checked): a decode step costs O(W), not O(context).

use super::parallel::{parallel_for, threads_for};
use super::simd::{prefetch, Elem, Isa, LANES};
use super::{slice_from, DType};
use crate::dispatch;

/// Keys per softmax chunk.
pub const CHUNK: usize = 128;
/// Query vectors (queries x heads of a group) per work item.
pub const MAX_VECTORS: usize = 16;

/// One call's tensors (addresses; strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct AttnArgs {
    /// dtype of q and out
    pub dtype: DType,
    /// dtype of the caches: the same, or any with float32 q / out
    pub cache_dtype: DType,
    pub num_tokens: usize,
    /// q [tokens, q_heads, head_dim]: token stride `q_stride`, heads contiguous
    pub q: usize,
    pub q_stride: usize,
    /// out [tokens, q_heads, head_dim]: token stride `out_stride`
    pub out: usize,
    pub out_stride: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub k_cache: usize,
    pub v_cache: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// int32 [rows, >= max_blocks] with row stride `bt_stride`
    pub block_table: usize,
    pub bt_stride: usize,
    pub max_blocks: usize,
    /// int32 [rows]
    pub seq_lens: usize,
    /// int32 [rows + 1]
    pub query_start_loc: usize,
    pub rows: usize,
    pub scale: f32,
    /// a query at position p sees keys p - sliding_window < j <= p; 0: all keys up to p
    pub sliding_window: usize,
    /// > 0: score = soft_cap * tanh(score / soft_cap) (scaled score, before masking); 0: none
    pub soft_cap: f32,
    pub threads: usize,
}

impl AttnArgs {
    /// The first key a query at position `pos` sees.
    #[inline(always)]
    fn window_start(&self, pos: usize) -> usize {
        if self.sliding_window > 0 {
            (pos + 1).saturating_sub(self.sliding_window)
        } else {
            0
        }
    }
}

/// Head dims with a compiled kernel (multiples of 16).
pub fn supported_head_dim(d: usize) -> bool {
    matches!(d, 32 | 64 | 80 | 96 | 128 | 256)
}

#[derive(Clone, Copy, Debug)]
struct Item {
    row: u32,
    head: u32,
    /// queries q0..q1 of the row (0-based within the row)
    q0: u32,
    q1: u32,
}

/// Check the metadata against the shapes; the work items.
fn plan_items(a: &AttnArgs) -> Result<(Vec<Item>, Vec<usize>), String> {
    if a.kv_heads == 0 || a.q_heads % a.kv_heads != 0 {
        return Err(format!(
            "q_heads {} is not a multiple of kv_heads {}",
            a.q_heads, a.kv_heads
        ));
    }
    if a.dtype != a.cache_dtype && a.dtype != DType::F32 {
        return Err(format!(
            "{:?} queries with a {:?} cache (only float32 queries may differ)",
            a.dtype, a.cache_dtype
        ));
    }
    if !supported_head_dim(a.head_dim) {
        return Err(format!(
            "head_dim {} has no compiled attention kernel",
            a.head_dim
        ));
    }
    if a.block_size == 0 {
        return Err("block_size is 0".into());
    }
    if !(a.soft_cap.is_finite() && a.soft_cap >= 0.0) {
        return Err(format!(
            "soft_cap {} must be a finite number >= 0 (0: none)",
            a.soft_cap
        ));
    }
    let seq_lens: &[i32] = unsafe { slice_from(a.seq_lens, a.rows) };
    let qsl: &[i32] = unsafe { slice_from(a.query_start_loc, a.rows + 1) };
    let g = a.q_heads / a.kv_heads;
    let tile = (MAX_VECTORS / g).max(1);
    let mut items = Vec::new();
    let mut costs = Vec::new();
    for r in 0..a.rows {
        let (qs, qe, len) = (qsl[r], qsl[r + 1], seq_lens[r]);
        if qs < 0 || qe < qs || qe as usize > a.num_tokens {
            return Err(format!(
                "query_start_loc[{r}..{}] = {qs}..{qe} is outside 0..{} tokens",
                r + 1,
                a.num_tokens
            ));
        }
        let qlen = (qe - qs) as usize;
        if len < 0 || (len as usize) < qlen {
            return Err(format!(
                "row {r}: seq_len {len} is shorter than its {qlen} queries"
            ));
        }
        let len = len as usize;
        if len > a.max_blocks * a.block_size {
            return Err(format!(
                "row {r}: seq_len {len} needs more than {} blocks",
                a.max_blocks
            ));
        }
        if qlen == 0 {
            continue;
        }
        let ctx = len - qlen;
        // the blocks any query of the row reads (with a window, none before the first query's)
        let first_block = a.window_start(ctx) / a.block_size;
        let bt: &[i32] = unsafe {
            slice_from(
                a.block_table + (r * a.bt_stride + first_block) * 4,
                len.div_ceil(a.block_size) - first_block,
            )
        };
        if let Some(&b) = bt.iter().find(|&&b| b < 0 || b as usize >= a.num_blocks) {
            return Err(format!(
                "row {r}: block id {b} is outside the cache ({} blocks)",
                a.num_blocks
            ));
        }
        let mut q0 = 0;
        while q0 < qlen {
            let q1 = (q0 + tile).min(qlen);
            for h in 0..a.kv_heads {
                items.push(Item {
                    row: r as u32,
                    head: h as u32,
                    q0: q0 as u32,
                    q1: q1 as u32,
                });
                let keys = ctx + q1 - a.window_start(ctx + q0);
                costs.push((q1 - q0) * g * keys * a.head_dim * 2);
            }
            q0 = q1;
        }
    }
    Ok((items, costs))
}

/// Attention for every row of the plan; writes `out` for every query token of a row.
///
/// # Safety
/// The addresses must hold the tensors described by `a` (q and out not overlapping), nothing
/// else writing them during the call.
pub unsafe fn paged_attention(a: &AttnArgs) -> Result<(), String> {
    let (items, costs) = plan_items(a)?;
    if items.is_empty() {
        return Ok(());
    }
    let total: usize = costs.iter().sum();
    let threads = threads_for(total, items.len(), a.threads);
    let args = *a;
    let items = &items;
    parallel_for(
        items.len(),
        threads,
        |i| costs[i],
        move |range| {
            let work = &items[range];
            macro_rules! by_head_dim {
                ($q:ty, $c:ty) => {
                    match args.head_dim / LANES {
                        2 => dispatch!(run_items::<$q, $c, 2>(&args, work)),
                        4 => dispatch!(run_items::<$q, $c, 4>(&args, work)),
                        5 => dispatch!(run_items::<$q, $c, 5>(&args, work)),
                        6 => dispatch!(run_items::<$q, $c, 6>(&args, work)),
                        8 => dispatch!(run_items::<$q, $c, 8>(&args, work)),
                        16 => dispatch!(run_items::<$q, $c, 16>(&args, work)),
                        _ => unreachable!(),
                    }
                };
            }
            use super::simd::{Bf16, F16};
            match (args.dtype, args.cache_dtype) {
                (DType::F32, DType::F32) => by_head_dim!(f32, f32),
                (DType::BF16, DType::BF16) => by_head_dim!(Bf16, Bf16),
                (DType::F16, DType::F16) => by_head_dim!(F16, F16),
                (DType::F32, DType::BF16) => by_head_dim!(f32, Bf16),
                (DType::F32, DType::F16) => by_head_dim!(f32, F16),
                _ => unreachable!("checked in plan_items"),
            }
        },
    );
    Ok(())
}

/// Scratch of one thread.
struct Scratch {
    q: Vec<f32>,        // [vectors][D], float32 queries
    acc: Vec<f32>,      // [vectors][D], weighted V sums
    s: Vec<f32>,        // [vectors][CHUNK], scores then probabilities
    m: Vec<f32>,        // running max per vector
    l: Vec<f32>,        // running sum per vector
    k_rows: Vec<usize>, // element offset of each key of the chunk in the cache
    kbuf: Vec<f32>,     // [16][D]: a group of keys as float32
}

#[inline(always)]
unsafe fn run_items<S: Isa, Q: Elem, C: Elem, const NC: usize>(a: &AttnArgs, items: &[Item]) {
    let d = NC * LANES;
    let g = a.q_heads / a.kv_heads;
    let nv = (MAX_VECTORS / g).max(1) * g; // most vectors of one item
    let mut sc = Scratch {
        q: vec![0.0; nv * d],
        acc: vec![0.0; nv * d],
        s: vec![0.0; nv * CHUNK],
        m: vec![0.0; nv],
        l: vec![0.0; nv],
        k_rows: vec![0; CHUNK],
        kbuf: vec![0.0; LANES * d],
    };
    for it in items {
        attend_item::<S, Q, C, NC>(a, it, &mut sc);
    }
}

#[inline(always)]
unsafe fn attend_item<S: Isa, Q: Elem, C: Elem, const NC: usize>(
    a: &AttnArgs,
    it: &Item,
    sc: &mut Scratch,
) {
    let d = NC * LANES;
    let g = a.q_heads / a.kv_heads;
    let r = it.row as usize;
    let h = it.head as usize;
    let (q0, q1) = (it.q0 as usize, it.q1 as usize);
    let qs = *(a.query_start_loc as *const i32).add(r) as usize;
    let qe = *(a.query_start_loc as *const i32).add(r + 1) as usize;
    let len = *(a.seq_lens as *const i32).add(r) as usize;
    let ctx = len - (qe - qs);
    let nv = (q1 - q0) * g;
    let bt = (a.block_table as *const i32).add(r * a.bt_stride);
    let bs = a.block_size;
    let kv_end = ctx + q1; // keys kv_start..kv_end are seen by some query of the tile
    let kv_start = a.window_start(ctx + q0);

    // queries as float32, vector v = (query q0 + v / g, head h * g + v % g)
    for v in 0..nv {
        let tok = qs + q0 + v / g;
        let src = (a.q as *const Q).add(tok * a.q_stride + (h * g + v % g) * d);
        let dst = sc.q.as_mut_ptr().add(v * d);
        for c in 0..NC {
            S::store_f32(dst.add(c * LANES), Q::load::<S>(src.add(c * LANES)));
        }
        sc.m[v] = f32::NEG_INFINITY;
        sc.l[v] = 0.0;
    }
    std::ptr::write_bytes(sc.acc.as_mut_ptr(), 0, nv * d);

    let kc = a.k_cache as *const C;
    let vc = a.v_cache as *const C;
    let row_elems = a.kv_heads * d;
    let (pf_back, pf_bytes) = if h == 0 {
        (0, row_elems * std::mem::size_of::<C>())
    } else {
        (0, d * std::mem::size_of::<C>())
    };
    let scale = a.scale;
    let mut c0 = kv_start;
    while c0 < kv_end {
        let c1 = (c0 + CHUNK).min(kv_end);
        let n = c1 - c0;
        // cache offsets of the chunk's keys, block by block
        let (mut key, mut j) = (c0, 0);
        while key < c1 {
            let b = key / bs;
            let off = key - b * bs;
            let base = (*bt.add(b) as usize * bs + off) * row_elems + h * d;
            let cnt = (bs - off).min(c1 - key);
            for t in 0..cnt {
                *sc.k_rows.get_unchecked_mut(j + t) = base + t * row_elems;
            }
            key += cnt;
            j += cnt;
        }
        // scores, 16 keys at a time; vector v (query q0 + v / g, at position ctx + q0 + v / g)
        // sees keys <= its position
        let mut j = 0;
        while j < n {
            let cnt = (n - j).min(LANES);
            let key = c0 + j;
            let first_any = key.saturating_sub(ctx + q0) * g; // vectors seeing the group's first key
            if first_any >= nv {
                break;
            }
            let first_all = (key + cnt - 1).saturating_sub(ctx + q0) * g; // ... and its last key
            let kb = sc.kbuf.as_mut_ptr();
            for t in 0..cnt {
                // the next group's K rows and this group's V rows (read after the softmax) are
                // scattered over blocks: fetch them ahead
                // (the first KV head fetches the rows of all heads: the row's next items, its other
                // heads, find them in L2)
                if j + t + LANES < n {
                    prefetch(
                        kc.add(*sc.k_rows.get_unchecked(j + t + LANES) - pf_back) as *const u8,
                        pf_bytes,
                    );
                }
                prefetch(
                    vc.add(*sc.k_rows.get_unchecked(j + t) - pf_back) as *const u8,
                    pf_bytes,
                );
                let kp = kc.add(*sc.k_rows.get_unchecked(j + t));
                for c in 0..NC {
                    S::store_f32(kb.add(t * d + c * LANES), C::load::<S>(kp.add(c * LANES)));
                }
            }
            let full_from = if cnt == LANES { first_all.min(nv) } else { nv };
            for v in first_any..full_from {
                // partly visible group (the causal edge) or a short group: one key at a time
                let pos = ctx + q0 + v / g;
                let qp = sc.q.as_ptr().add(v * d);
                for t in 0..cnt.min((pos + 1).saturating_sub(key)) {
                    let mut acc = S::zero();
                    for c in 0..NC {
                        acc = S::fmadd(
                            S::load_f32(kb.add(t * d + c * LANES)),
                            S::load_f32(qp.add(c * LANES)),
                            acc,
                        );
                    }
                    *sc.s.get_unchecked_mut(v * CHUNK + j + t) = S::reduce_add(acc) * scale;
                }
            }
            let sv = S::splat(scale);
            for v in full_from..nv {
                let qp = sc.q.as_ptr().add(v * d);
                let mut acc = [S::zero(); LANES];
                for c in 0..NC {
                    let qc = S::load_f32(qp.add(c * LANES));
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = S::fmadd(S::load_f32(kb.add(t * d + c * LANES)), qc, *a);
                    }
                }
                S::store_f32(
                    sc.s.as_mut_ptr().add(v * CHUNK + j),
                    S::mul(S::reduce16(&acc), sv),
                );
            }
            j += cnt;
        }
        // online softmax: probabilities for this chunk (0 where masked), rescaled running sums
        for v in 0..nv {
            let pos = ctx + q0 + v / g;
            // keys lo..hi of the chunk (chunk-relative) are visible to this vector
            let hi = (pos + 1).min(c1).saturating_sub(c0);
            let lo = a.window_start(pos).saturating_sub(c0).min(hi);
            let s = sc.s.as_mut_ptr().add(v * CHUNK);
            if lo == hi {
                std::ptr::write_bytes(s, 0, n);
                continue;
            }
            if a.soft_cap > 0.0 {
                soft_cap::<S>(s.add(lo), hi - lo, a.soft_cap);
            }
            let mut mv = S::splat(f32::NEG_INFINITY);
            let mut j = lo;
            while j + LANES <= hi {
                mv = S::max(mv, S::load_f32(s.add(j)));
                j += LANES;
            }
            let mut mx = S::reduce_max(mv);
            for jj in j..hi {
                mx = mx.max(*s.add(jj));
            }
            let m_old = sc.m[v];
            let m_new = m_old.max(mx);
            if m_new > m_old && sc.l[v] != 0.0 {
                let alpha = S::splat((m_old - m_new).exp());
                let accp = sc.acc.as_mut_ptr().add(v * d);
                for c in 0..NC {
                    S::store_f32(
                        accp.add(c * LANES),
                        S::mul(S::load_f32(accp.add(c * LANES)), alpha),
                    );
                }
                sc.l[v] *= (m_old - m_new).exp();
            }
            sc.m[v] = m_new;
            let mv = S::splat(m_new);
            let mut sum = S::zero();
            let mut j = lo;
            while j < hi {
                let k = (hi - j).min(LANES);
                let p = S::exp(S::sub(f32::load_upto::<S>(s.add(j), k), mv));
                let p = if k < LANES {
                    S::mul(p, f32::load_upto::<S>(ONES.as_ptr(), k))
                } else {
                    p
                };
                f32::store_upto::<S>(s.add(j), p, k);
                sum = S::add(sum, p);
                j += LANES;
            }
            for jj in 0..lo {
                *s.add(jj) = 0.0;
            }
            for jj in hi..n {
                *s.add(jj) = 0.0;
            }
            sc.l[v] += S::reduce_add(sum);
        }
        // acc += P V, up to 4 vectors at a time with their accumulators in registers
        let mut v0 = 0;
        while v0 < nv {
            let nq = (nv - v0).min(4);
            match nq {
                1 => accumulate_v::<S, C, NC, 1>(sc, vc, n, v0, c0, ctx + q0, g),
                2 => accumulate_v::<S, C, NC, 2>(sc, vc, n, v0, c0, ctx + q0, g),
                3 => accumulate_v::<S, C, NC, 3>(sc, vc, n, v0, c0, ctx + q0, g),
                _ => accumulate_v::<S, C, NC, 4>(sc, vc, n, v0, c0, ctx + q0, g),
            }
            v0 += nq;
        }
        c0 = c1;
    }
    // out = acc / l
    for v in 0..nv {
        let tok = qs + q0 + v / g;
        let dst = (a.out as *mut Q).add(tok * a.out_stride + (h * g + v % g) * d);
        let inv = S::splat(1.0 / sc.l[v]);
        let accp = sc.acc.as_ptr().add(v * d);
        for c in 0..NC {
            Q::store::<S>(
                dst.add(c * LANES),
                S::mul(S::load_f32(accp.add(c * LANES)), inv),
            );
        }
    }
}

static ONES: [f32; LANES] = [1.0; LANES];

/// s[0..n] = cap * tanh(s / cap), in place.
#[inline(always)]
unsafe fn soft_cap<S: Isa>(s: *mut f32, n: usize, cap: f32) {
    let (c, inv) = (S::splat(cap), S::splat(1.0 / cap));
    let mut j = 0;
    while j < n {
        let k = (n - j).min(LANES);
        let x = f32::load_upto::<S>(s.add(j), k);
        f32::store_upto::<S>(s.add(j), S::mul(S::tanh(S::mul(x, inv)), c), k);
        j += LANES;
    }
}

/// acc[v0..v0+NQ] += sum_j p[v][j] * V[j] over the chunk's keys (p is 0 where masked), in blocks
/// of 4 x 16 head-dim lanes so the NQ x 4 accumulators stay in registers.
#[inline(always)]
unsafe fn accumulate_v<S: Isa, T: Elem, const NC: usize, const NQ: usize>(
    sc: &mut Scratch,
    vc: *const T,
    n: usize,
    v0: usize,
    c0: usize,
    first_pos: usize,
    g: usize,
) {
    let d = NC * LANES;
    // keys past the last query of these vectors have p = 0 for all of them: stop there
    let last_pos = first_pos + (v0 + NQ - 1) / g;
    let n_keys = n.min((last_pos + 1).saturating_sub(c0));
    let mut c = 0;
    while c < NC {
        let w = (NC - c).min(4);
        let mut acc = [[S::zero(); 4]; NQ];
        for j in 0..n_keys {
            let vp = vc.add(*sc.k_rows.get_unchecked(j) + c * LANES);
            let mut vv = [S::zero(); 4];
            for (i, x) in vv.iter_mut().enumerate().take(w) {
                *x = T::load::<S>(vp.add(i * LANES));
            }
            for (q, accq) in acc.iter_mut().enumerate() {
                let p = S::splat(*sc.s.get_unchecked((v0 + q) * CHUNK + j));
                for i in 0..w {
                    accq[i] = S::fmadd(p, vv[i], accq[i]);
                }
            }
        }
        for (q, accq) in acc.iter().enumerate() {
            let dst = sc.acc.as_mut_ptr().add((v0 + q) * d + c * LANES);
            for (i, &x) in accq.iter().enumerate().take(w) {
                S::store_f32(
                    dst.add(i * LANES),
                    S::add(S::load_f32(dst.add(i * LANES)), x),
                );
            }
        }
        c += w;
    }
}
