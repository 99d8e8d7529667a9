//! The panel machinery the large-batch kernels share (`gguf_gemm_bf16`: bfloat16 codes for
//! `vdpbf16ps`; `gguf_gemm_i8`: byte quadruples for `vpdpbusd`): a panel is [`NB`] tiles (64
//! outputs) decoded once per row block into a per-thread scratch of 64-byte code vectors
//! `[vector][NB][64 bytes]` with per-group scales and offsets `[group][NB][16]`, which a
//! microkernel of [`MR`] rows x 64 outputs reads for every row group.
//!
//! How a row block is split over threads: item i is part i % parts of panel i / parts, a part being
//! a run of whole microkernel row groups. Products of few panels that do not split evenly (a
//! 576-output product is 9 panels) split each panel's rows in as many parts as threads, so that no
//! thread gets a whole panel more; a thread decodes the panels of its parts (a panel split
//! between two threads is decoded by both).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::ops::Range;

use super::gguf_layout::TILE;
use super::gguf_matmul::{store_row, GgufMatmulArgs};
use super::parallel::threads_for;
use super::simd::Avx512;

/// Tiles per panel.
pub const NB: usize = 4;
/// Rows per microkernel call.
pub const MR: usize = 3;

/// How a row block's panels and rows are split into work items.
pub struct Work {
    /// parts per panel
    pub parts: usize,
    /// rows of the block
    pub rows: usize,
}

impl Work {
    /// The split of a block of `rows` rows of the product `a` (`panels` panels): (work, items,
    /// threads to run them on).
    pub fn split(a: &GgufMatmulArgs, rows: usize, panels: usize) -> (Work, usize, usize) {
        let wanted = threads_for(rows * a.n * a.k / 4, panels * rows.div_ceil(MR), a.threads);
        let parts = if wanted > 1 && !panels.is_multiple_of(wanted) && panels < 8 * wanted {
            wanted.min(rows.div_ceil(MR))
        } else {
            1
        };
        let items = panels * parts;
        (Work { parts, rows }, items, wanted.min(items))
    }

    /// The first row of part j (j = parts: the end).
    fn part_start(&self, j: usize) -> usize {
        (self.rows.div_ceil(MR) * j / self.parts * MR).min(self.rows)
    }

    /// (panel, first row, end row) of each panel a thread's (non-empty) `items` touch.
    pub fn panels(&self, items: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (p_first, p_last) = (items.start / self.parts, (items.end - 1) / self.parts);
        (p_first..=p_last).map(move |p| {
            let part0 = items.start.max(p * self.parts) - p * self.parts;
            let part1 = items.end.min((p + 1) * self.parts) - p * self.parts;
            (p, self.part_start(part0), self.part_start(part1))
        })
    }
}

/// Zero tile `c` of a decoded panel chunk (a tile past the weight's last): `vectors` code vectors
/// and `groups` scales and offsets.
///
/// # Safety
/// The scratch must hold that many vectors and groups of [`NB`] tiles; AVX-512 context.
#[inline(always)]
pub unsafe fn zero_tile(
    codes: *mut u8,
    vectors: usize,
    scales: *mut f32,
    offsets: *mut f32,
    groups: usize,
    c: usize,
) {
    for v in 0..vectors {
        _mm512_storeu_si512(
            codes.add((v * NB + c) * 64) as *mut _,
            _mm512_setzero_si512(),
        );
    }
    for g in 0..groups {
        _mm512_storeu_ps(scales.add((g * NB + c) * TILE), _mm512_setzero_ps());
        _mm512_storeu_ps(offsets.add((g * NB + c) * TILE), _mm512_setzero_ps());
    }
}

/// Write rows [first, last) of a panel's accumulators y [rows][NB][16] (+ bias, rounded to the
/// output dtype) to the output rows row0 + r, tiles t0 .. t0 + nt.
///
/// # Safety
/// As `gguf_matmul`; AVX-512 context.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn store_panel(
    a: &GgufMatmulArgs,
    y: *const f32,
    row0: usize,
    first: usize,
    last: usize,
    t0: usize,
    nt: usize,
) {
    for r in first..last {
        for c in 0..nt {
            let v = _mm512_loadu_ps(y.add((r * NB + c) * TILE));
            store_row::<Avx512>(a, row0 + r, (t0 + c) * TILE, v);
        }
    }
}

/// A microkernel's R x [`NB`] output accumulators: zero, or (`accumulate`, a later k chunk) the
/// partial sums of rows r0.. from the panel's y [rows][NB][16].
///
/// # Safety
/// `y` must hold rows r0 .. r0 + R; AVX-512 context.
#[inline(always)]
pub unsafe fn load_acc<const R: usize>(
    y: *const f32,
    r0: usize,
    accumulate: bool,
) -> [[__m512; NB]; R] {
    let mut acc = [[_mm512_setzero_ps(); NB]; R];
    if accumulate {
        for (r, ar) in acc.iter_mut().enumerate() {
            for (c, v) in ar.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(y.add(((r0 + r) * NB + c) * TILE));
            }
        }
    }
    acc
}

/// Store a microkernel's accumulators back to rows r0.. of the panel's y.
///
/// # Safety
/// As [`load_acc`].
#[inline(always)]
pub unsafe fn store_acc<const R: usize>(y: *mut f32, r0: usize, acc: &[[__m512; NB]; R]) {
    for (r, ar) in acc.iter().enumerate() {
        for (c, &v) in ar.iter().enumerate() {
            _mm512_storeu_ps(y.add(((r0 + r) * NB + c) * TILE), v);
        }
    }
}

/// The 64-byte code vectors of a panel's [`NB`] tiles at vector index `v`.
///
/// # Safety
/// The scratch must hold vector `v`; AVX-512 context.
#[inline(always)]
pub unsafe fn load_codes(codes: *const u8, v: usize) -> [__m512i; NB] {
    let mut w = [_mm512_setzero_si512(); NB];
    for (c, wc) in w.iter_mut().enumerate() {
        *wc = _mm512_loadu_si512(codes.add((v * NB + c) * 64) as *const _);
    }
    w
}
