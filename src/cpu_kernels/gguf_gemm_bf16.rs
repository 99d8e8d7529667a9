//! The large-batch product on AVX512-BF16 for bfloat16 activations: each panel of [`NB`] tiles is
//! decoded once per row block into bfloat16 *codes* (small integers, exact in bfloat16) in
//! `vdpbf16ps` pair order, with the groups' S and O beside it; the microkernel (3 rows x 64
//! outputs) accumulates sum(x c) per group with `vdpbf16ps` and applies y += S * sum (+ O *
//! sum(x)) in float32. A bfloat16 activation times a code is exact, so the result is the
//! float32 product of the dequantized weight up to float32 accumulation order.
//!
//! The decode is a fifth of a 32-row product, so it writes bfloat16 codes directly: 4- to 6-bit
//! codes become a 16-bit index into a table of bfloat16 codes (`vpermw`), Q8_0's bytes become
//! float32 whose high halves are gathered (`vpermt2w`). Products of few panels (576 outputs:
//! 9) split each panel's rows over the threads, so that no thread gets a whole panel more.
//!
//! For tests on CPUs without AVX512-BF16, [`set_emulation`] runs the same kernel with each
//! `vdpbf16ps` replaced by two float32 FMAs (only the instruction differs).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::gguf_matmul::GgufMatmulArgs;
use super::DType;

static EMULATE: AtomicBool = AtomicBool::new(false);

/// Run the bfloat16 large-batch kernel with emulated `vdpbf16ps` where the CPU lacks it (tests).
pub fn set_emulation(on: bool) {
    EMULATE.store(on, Ordering::Relaxed);
}

/// Whether a product takes this path: bfloat16 activations, more rows than the streaming
/// kernel takes, and AVX512-BF16 (or its emulation on AVX-512).
pub fn applies(a: &GgufMatmulArgs) -> bool {
    a.x_dtype == DType::BF16 && (native() || emulated())
}

fn native() -> bool {
    super::simd::use_avx512bf16() && has_bmi2()
}

fn emulated() -> bool {
    EMULATE.load(Ordering::Relaxed) && super::simd::use_avx512() && has_bmi2()
}

/// `pdep` interleaves the 5th / 6th bit planes of two input features (every AVX-512 CPU has it).
fn has_bmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub use super::gguf_panels::NB;

/// Input features per panel chunk (whole GGUF blocks).
const KC: usize = 1024;

/// Per-thread panel (codes, scales, offsets) and output accumulators.
#[derive(Default)]
struct Scratch {
    codes: Vec<u16>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    y: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// the calling thread's group sums of a row block
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// y = x @ W.T (+ bias) for bfloat16 x (see [`applies`]).
///
/// # Safety
/// As `gguf_matmul`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn run(a: &GgufMatmulArgs) -> Result<(), String> {
    kernel::run(a, native());
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn run(_a: &GgufMatmulArgs) -> Result<(), String> {
    Err("the bfloat16 quantized product needs AVX512-BF16".into())
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::gguf_decode::{scale_offset, ty};
    use super::super::gguf_layout::TILE;
    use super::super::gguf_matmul::{GgufMatmulArgs, ROW_BLOCK};
    use super::super::gguf_pairs_bf16::{
        byte_pairs, code_index_tables, nibble_pairs, Emulated, Native, PairDot,
    };
    use super::super::gguf_panels::{
        load_acc, load_codes, store_acc, store_panel, zero_tile, Work, MR,
    };
    use super::super::parallel::parallel_for;
    use super::super::simd::{bf16_to_f32, Avx512};
    use super::{Scratch, KC, NB, SCRATCH, SUMS};
    use crate::with_gguf_type;

    /// bfloat16 activation rows and their 32-value group sums.
    #[derive(Clone, Copy)]
    struct Rows {
        x: *const u16,
        stride: usize,
        sums: *const f32,
        sums_stride: usize,
    }
    unsafe impl Send for Rows {}
    unsafe impl Sync for Rows {}

    pub unsafe fn run(a: &GgufMatmulArgs, native: bool) {
        let panels = a.n.div_ceil(TILE * NB);
        let has_offset = a.ty.has_offset();
        let mut r0 = 0;
        while r0 < a.m {
            let rows = (a.m - r0).min(ROW_BLOCK);
            let x = (a.x as *const u16).add(r0 * a.x_stride);
            let groups = a.k / 32;
            let sums = SUMS.with(|s| {
                let mut s = s.borrow_mut();
                if has_offset {
                    s.resize(rows * groups, 0.0);
                    for r in 0..rows {
                        for g in 0..groups {
                            let p = x.add(r * a.x_stride + g * 32);
                            s[r * groups + g] = (0..32).map(|i| bf16_to_f32(*p.add(i))).sum();
                        }
                    }
                }
                s.as_ptr()
            });
            let xr = Rows {
                x,
                stride: a.x_stride,
                sums,
                sums_stride: groups,
            };
            // few panels that do not split evenly: each panel's rows split over the threads
            let (work, items, threads) = Work::split(a, rows, panels);
            parallel_for(
                items,
                threads,
                |_| 1,
                |p| {
                    SCRATCH.with(|s| {
                        let mut s = s.borrow_mut();
                        if native {
                            panels_native(a, &xr, r0, &work, p, &mut s)
                        } else {
                            panels_emulated(a, &xr, r0, &work, p, &mut s)
                        }
                    })
                },
            );
            r0 += rows;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2,bmi2")]
    unsafe fn panels_native(
        a: &GgufMatmulArgs,
        x: &Rows,
        row0: usize,
        w: &Work,
        items: Range<usize>,
        s: &mut Scratch,
    ) {
        with_gguf_type!(a.ty, Q => panels::<Native, Q>(a, x, row0, w, items, s))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2,bmi2")]
    unsafe fn panels_emulated(
        a: &GgufMatmulArgs,
        x: &Rows,
        row0: usize,
        w: &Work,
        items: Range<usize>,
        s: &mut Scratch,
    ) {
        with_gguf_type!(a.ty, Q => panels::<Emulated, Q>(a, x, row0, w, items, s))
    }

    #[inline(always)]
    unsafe fn panels<D: PairDot, const Q: u8>(
        a: &GgufMatmulArgs,
        x: &Rows,
        row0: usize,
        w: &Work,
        items: Range<usize>,
        s: &mut Scratch,
    ) {
        let rows = w.rows;
        let t = ty::<Q>();
        let kb = t.block_values();
        let kc = ((KC / kb).max(1) * kb).min(a.k);
        // the sums of a chunk start must be group-aligned: kc is a multiple of 32
        s.codes.resize(kc * NB * TILE, 0);
        s.scales.resize(kc / t.group() * NB * TILE, 0.0);
        s.offsets.resize(kc / t.group() * NB * TILE, 0.0);
        s.y.resize(rows * NB * TILE, 0.0);
        let tiles = a.n.div_ceil(TILE);
        if items.is_empty() {
            return;
        }
        let p_last = (items.end - 1) / w.parts;
        for (p, first, last) in w.panels(items) {
            let t0 = p * NB;
            let nt = (tiles - t0).min(NB);
            let mut k0 = 0;
            while k0 < a.k {
                let k1 = (k0 + kc).min(a.k);
                decode_panel::<Q>(a, t0, nt, k0, k1, s);
                // the packed bytes this thread decodes next come from memory while this chunk's
                // rows compute (the weights of a step do not stay in cache between steps)
                let mut ahead = if k1 < a.k {
                    Prefetch::new(a, t0, (tiles - t0).min(NB), k1, (k1 + kc).min(a.k))
                } else if p < p_last {
                    let t1 = t0 + NB;
                    Prefetch::new(a, t1, (tiles - t1).min(NB), 0, kc)
                } else {
                    Prefetch::default()
                };
                let per_call = ahead.lines().div_ceil((last - first).div_ceil(MR).max(1));
                let mut r = first;
                while r < last {
                    ahead.issue(per_call);
                    let rr = (last - r).min(MR);
                    match rr {
                        1 => micro::<D, Q, 1>(s, x, r, k0, k1, k0 > 0),
                        2 => micro::<D, Q, 2>(s, x, r, k0, k1, k0 > 0),
                        _ => micro::<D, Q, MR>(s, x, r, k0, k1, k0 > 0),
                    }
                    r += rr;
                }
                k0 = k1;
            }
            store_panel(a, s.y.as_ptr(), row0, first, last, t0, nt);
        }
    }

    /// Cache lines of the packed bytes of tiles [t0, t0 + nt) over [k0, k1), prefetched into
    /// L2 a few at a time.
    #[derive(Default)]
    struct Prefetch {
        /// each tile's byte range (start, end)
        ranges: [(usize, usize); NB],
        tiles: usize,
        /// the tile and address of the next line
        tile: usize,
        at: usize,
    }

    impl Prefetch {
        fn new(a: &GgufMatmulArgs, t0: usize, nt: usize, k0: usize, k1: usize) -> Self {
            let t = a.ty;
            let (kb, bb) = (t.block_values(), t.tile_block_bytes());
            let blocks = a.k / kb;
            let mut ranges = [(0, 0); NB];
            for (c, r) in ranges.iter_mut().enumerate().take(nt) {
                let base = a.packed + (t0 + c) * blocks * bb;
                *r = (base + k0 / kb * bb, base + k1.div_ceil(kb) * bb);
            }
            Prefetch {
                ranges,
                tiles: nt,
                tile: 0,
                at: ranges[0].0,
            }
        }

        fn lines(&self) -> usize {
            self.ranges[..self.tiles]
                .iter()
                .map(|r| (r.1 - r.0).div_ceil(64))
                .sum()
        }

        #[inline(always)]
        unsafe fn issue(&mut self, mut n: usize) {
            while n > 0 && self.tile < self.tiles {
                if self.at >= self.ranges[self.tile].1 {
                    self.tile += 1;
                    if self.tile < self.tiles {
                        self.at = self.ranges[self.tile].0;
                    }
                    continue;
                }
                _mm_prefetch::<_MM_HINT_T1>(self.at as *const i8);
                self.at += 64;
                n -= 1;
            }
        }
    }

    /// Codes of tiles [t0, t0 + nt) over [k0, k1) as bfloat16 pairs [pair][NB][16 x 2], and
    /// each group's S and O [group][NB][16]; missing tiles are zero.
    #[inline(always)]
    unsafe fn decode_panel<const Q: u8>(
        a: &GgufMatmulArgs,
        t0: usize,
        nt: usize,
        k0: usize,
        k1: usize,
        s: &mut Scratch,
    ) {
        let t = ty::<Q>();
        let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
        let blocks = a.k / kb;
        let (index_lo, index_hi) = code_index_tables(t);
        let codes = s.codes.as_mut_ptr();
        for c in 0..NB {
            if c >= nt {
                let (scales, offsets) = (s.scales.as_mut_ptr(), s.offsets.as_mut_ptr());
                zero_tile(
                    codes as *mut u8,
                    (k1 - k0) / 2,
                    scales,
                    offsets,
                    (k1 - k0) / gk,
                    c,
                );
                continue;
            }
            let base = (a.packed as *const u8).add((t0 + c) * blocks * bb);
            for b in k0 / kb..k1 / kb {
                let blk = base.add(b * bb);
                for g in 0..t.groups_per_block() {
                    let (sc, of) = scale_offset::<Avx512, Q>(blk, g);
                    let gi = (b * kb + g * gk - k0) / gk;
                    _mm512_storeu_ps(s.scales.as_mut_ptr().add((gi * NB + c) * TILE), sc);
                    _mm512_storeu_ps(s.offsets.as_mut_ptr().add((gi * NB + c) * TILE), of);
                    let pair0 = (b * kb + g * gk - k0) / 2;
                    let store = |i: usize, pair: __m512i| {
                        let at = codes.add(((pair0 + i) * NB + c) * 2 * TILE);
                        _mm512_storeu_si512(at as *mut _, pair);
                    };
                    if t.code_bits() < 8 {
                        nibble_pairs::<Q>(blk, g, index_lo, index_hi, store);
                    } else {
                        byte_pairs::<Q>(blk, g, store);
                    }
                }
            }
        }
    }

    /// y[R][NB x 16] (+)= rows r0.. of x over [k0, k1) @ the panel.
    #[inline(always)]
    unsafe fn micro<D: PairDot, const Q: u8, const R: usize>(
        s: &mut Scratch,
        x: &Rows,
        r0: usize,
        k0: usize,
        k1: usize,
        accumulate: bool,
    ) {
        let t = ty::<Q>();
        let gk = t.group();
        let codes = s.codes.as_ptr();
        let mut y = load_acc::<R>(s.y.as_ptr(), r0, accumulate);
        let mut xp = [std::ptr::null::<u16>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x.x.add((r0 + r) * x.stride + k0);
        }
        for g in 0..(k1 - k0) / gk {
            let mut acc = [[_mm512_setzero_ps(); NB]; R];
            for pp in 0..gk / 2 {
                let pair = g * gk / 2 + pp;
                let w = load_codes(codes as *const u8, pair);
                for r in 0..R {
                    let xb = D::bcast(xp[r].add(2 * pair));
                    for c in 0..NB {
                        acc[r][c] = D::dot(acc[r][c], w[c], xb);
                    }
                }
            }
            for c in 0..NB {
                let sc = _mm512_loadu_ps(s.scales.as_ptr().add((g * NB + c) * TILE));
                let of = _mm512_loadu_ps(s.offsets.as_ptr().add((g * NB + c) * TILE));
                for r in 0..R {
                    y[r][c] = _mm512_fmadd_ps(acc[r][c], sc, y[r][c]);
                    if t.has_offset() {
                        let sum = *x.sums.add((r0 + r) * x.sums_stride + (k0 + g * gk) / 32);
                        y[r][c] = _mm512_fmadd_ps(of, _mm512_set1_ps(sum), y[r][c]);
                    }
                }
            }
        }
        store_acc::<R>(s.y.as_mut_ptr(), r0, &y);
    }
}
