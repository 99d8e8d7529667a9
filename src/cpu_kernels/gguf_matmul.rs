//! y [m, n] = x [m, k] @ W.T (+ bias) with W a tiled GGUF weight (`gguf_layout`), for any m.
//!
//! Two regimes, picked by the number of rows:
//! - m <= [`GEMV_MAX_ROWS`] (decode batches): memory-bound. The streaming kernel below reads
//!   the packed bytes once, in order, decodes each group's codes in registers (`gguf_decode`)
//!   and accumulates every row with float32 FMAs against float32 activations; per group and
//!   row y += S * sum(x c) (+ O * sum(x)). With one or two rows the sums run on several
//!   independent accumulators so the FMA latency does not bound the stream. With 2 or more rows
//!   of bfloat16 activations and AVX512-BF16, `gguf_gemv_bf16` streams the same way with
//!   `vdpbf16ps` on bfloat16 codes.
//! - larger m (prefill chunks, big batches): compute-bound. Rows go in blocks of [`ROW_BLOCK`];
//!   for each block the weight is decoded once per panel of 64 outputs and reused by every row:
//!   `gguf_gemm` dequantizes the panel exactly to float32 and runs an FMA microkernel (6 rows x 64
//!   outputs); with AVX512-BF16 and bfloat16 activations `gguf_gemm_bf16` keeps the panel as
//!   bfloat16 integer codes and runs `vdpbf16ps`, applying S and O per group (products of a
//!   bfloat16 activation and a code are exact: the only rounding is the float32 accumulation).
//!
//! Activations are float32, bfloat16 or float16 (converted to float32 where the kernel needs it),
//! the output any of the three, rounded once; accumulation is float32 everywhere.

use std::cell::RefCell;

use super::gguf_decode::{decode_group, nibble_table, scale_offset, ty, QuantIsa};
use super::gguf_layout::{check_shape, GgufType, TILE};
use super::parallel::{parallel_for, row_blocks, threads_for};
use super::simd::{prefetch, Elem, Isa};
use super::{gguf_gemm, gguf_gemm_bf16, gguf_gemm_i8, gguf_gemv_bf16, DType};
use crate::{dispatch, with_elem, with_gguf_type};

/// Rows up to which the streaming (memory-bound) kernel is used.
pub const GEMV_MAX_ROWS: usize = 8;
/// Rows per block of the large-batch path (their activations stay in the caches).
pub const ROW_BLOCK: usize = 192;

/// One product's tensors (addresses; strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct GgufMatmulArgs {
    pub ty: GgufType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: usize,
    pub x_stride: usize,
    pub x_dtype: DType,
    pub out: usize,
    pub out_stride: usize,
    pub out_dtype: DType,
    /// the tiled weight
    pub packed: usize,
    /// float32 [n] added to every row (0: none)
    pub bias: usize,
    pub threads: usize,
}

/// Activation rows as the kernels read them: float32 rows and, for the types with offsets, the
/// sum of each row's 32-value groups.
#[derive(Clone, Copy)]
pub struct XRows {
    pub x: *const f32,
    pub stride: usize,
    /// float32 [rows][k / 32] (null when not needed)
    pub sums: *const f32,
    pub sums_stride: usize,
}

unsafe impl Send for XRows {}
unsafe impl Sync for XRows {}

impl XRows {
    #[inline(always)]
    pub unsafe fn row(&self, r: usize) -> *const f32 {
        self.x.add(r * self.stride)
    }
    #[inline(always)]
    pub unsafe fn sum(&self, r: usize, group32: usize) -> f32 {
        *self.sums.add(r * self.sums_stride + group32)
    }
}

/// Per-thread buffers of the calling thread: converted activations and group sums.
#[derive(Default)]
struct Prepared {
    x32: Vec<f32>,
    sums: Vec<f32>,
}

thread_local! {
    static PREPARED: RefCell<Prepared> = RefCell::new(Prepared::default());
}

/// Rows [r0, r0 + rows) of x as float32 (the input itself when it is float32) with group sums
/// when `sums` is set.
unsafe fn prepare(
    a: &GgufMatmulArgs,
    r0: usize,
    rows: usize,
    sums: bool,
    p: &mut Prepared,
) -> XRows {
    let k = a.k;
    let (x, stride) = if a.x_dtype == DType::F32 {
        ((a.x as *const f32).add(r0 * a.x_stride), a.x_stride)
    } else {
        p.x32.resize(rows * k, 0.0);
        for r in 0..rows {
            with_elem!(a.x_dtype, T => {
                let src = (a.x as *const T).add((r0 + r) * a.x_stride);
                for (i, d) in p.x32[r * k..(r + 1) * k].iter_mut().enumerate() {
                    *d = (*src.add(i)).to_f32();
                }
            })
        }
        (p.x32.as_ptr(), k)
    };
    let groups = k / 32;
    let sums_ptr = if sums {
        p.sums.resize(rows * groups, 0.0);
        for r in 0..rows {
            let row = std::slice::from_raw_parts(x.add(r * stride), k);
            for g in 0..groups {
                p.sums[r * groups + g] = row[g * 32..(g + 1) * 32].iter().sum();
            }
        }
        p.sums.as_ptr()
    } else {
        std::ptr::null()
    };
    XRows {
        x,
        stride,
        sums: sums_ptr,
        sums_stride: groups,
    }
}

/// y = x @ W.T (+ bias) for every row of x.
///
/// # Safety
/// The addresses must hold the tensors described by `a` (`packed`: a tiled [n, k] weight of
/// type `a.ty`); `out` overlaps nothing else.
pub unsafe fn gguf_matmul(a: &GgufMatmulArgs) -> Result<(), String> {
    check_shape(a.ty, a.n, a.k)?;
    if a.m == 0 {
        return Ok(());
    }
    if a.m <= GEMV_MAX_ROWS {
        let tiles = a.n.div_ceil(TILE);
        let threads = threads_for(a.n * a.k * a.m.div_ceil(2) / 4, tiles, a.threads);
        PREPARED.with(|p| {
            let x = prepare(a, 0, a.m, a.ty.has_offset(), &mut p.borrow_mut());
            let bf16 = gguf_gemv_bf16::applies(a);
            parallel_for(
                tiles,
                threads,
                |_| 1,
                |r| {
                    if bf16 {
                        gguf_gemv_bf16::run(a, &x, r.start, r.end)
                    } else {
                        gemv(a, &x, r.start, r.end)
                    }
                },
            );
        });
        return Ok(());
    }
    if gguf_gemm_i8::applies(a) {
        return gguf_gemm_i8::run(a);
    }
    if gguf_gemm_bf16::applies(a) {
        return gguf_gemm_bf16::run(a);
    }
    let panels = a.n.div_ceil(TILE * gguf_gemm::NB);
    for (r0, rows) in row_blocks(a.m, ROW_BLOCK) {
        let threads = threads_for(rows * a.n * a.k / 4, panels, a.threads);
        PREPARED.with(|p| {
            let mut p = p.borrow_mut();
            gguf_gemm::pack_x(a, r0, rows, &mut p.x32);
            let x = gguf_gemm::PackedRows(p.x32.as_ptr());
            parallel_for(
                panels,
                threads,
                |_| 1,
                |r| gguf_gemm::run(a, x, r0, rows, r.start, r.end),
            );
        });
    }
    Ok(())
}

/// Store 16 outputs of row `row` from column n0 (+ bias), rounded to the output dtype; only the
/// columns below n are written.
#[inline(always)]
pub unsafe fn store_row<S: Isa>(a: &GgufMatmulArgs, row: usize, n0: usize, v: S::V) {
    let cnt = (a.n - n0).min(TILE);
    let bias = if a.bias != 0 {
        f32::load_upto::<S>((a.bias as *const f32).add(n0), cnt)
    } else {
        S::zero()
    };
    with_elem!(a.out_dtype, O => {
        let dst = (a.out as *mut O).add(row * a.out_stride + n0);
        O::store_upto::<S>(dst, S::add(v, bias), cnt);
    })
}

/// How far ahead (bytes) the next groups' codes are prefetched.
pub const PREFETCH_AHEAD: usize = 1536;

/// The streaming product: tiles [t0, t1), all a.m (1..=8) rows.
fn gemv(a: &GgufMatmulArgs, x: &XRows, t0: usize, t1: usize) {
    macro_rules! go {
        ($q:ident, $($m:literal),*) => {
            match a.m {
                $($m => dispatch!(gemv_tiles::<$q, $m>(a, x, t0, t1)),)*
                _ => unreachable!("the streaming product takes 1 to 8 rows"),
            }
        };
    }
    with_gguf_type!(a.ty, Q => go!(Q, 1, 2, 3, 4, 5, 6, 7, 8))
}

#[inline(always)]
unsafe fn gemv_tiles<S: QuantIsa, const Q: u8, const M: usize>(
    a: &GgufMatmulArgs,
    x: &XRows,
    t0: usize,
    t1: usize,
) {
    let t = ty::<Q>();
    let (kb, gk, bb) = (t.block_values(), t.group(), t.tile_block_bytes());
    let groups = t.groups_per_block();
    let blocks = a.k / kb;
    let tab = nibble_table(t);
    let table = S::load_f32(tab.as_ptr());
    // independent accumulators per row: enough chains in flight for the FMA latency
    let chains = if M == 1 {
        4
    } else if M <= 4 {
        2
    } else {
        1
    };
    let mut xr = [std::ptr::null::<f32>(); M];
    for (r, p) in xr.iter_mut().enumerate() {
        *p = x.row(r);
    }
    for tile in t0..t1 {
        let base = (a.packed as *const u8).add(tile * blocks * bb);
        let mut y = [S::zero(); M];
        for b in 0..blocks {
            let blk = base.add(b * bb);
            for g in 0..groups {
                // the stream is sequential: params, then group after group
                prefetch(
                    blk.wrapping_add(t.group_codes(g) + PREFETCH_AHEAD),
                    t.group_code_bytes(),
                );
                let k0 = b * kb + g * gk;
                let mut acc = [[S::zero(); 4]; M];
                decode_group::<S, Q, _>(
                    blk,
                    g,
                    table,
                    #[inline(always)]
                    |i, v| {
                        let c = i % chains;
                        for r in 0..M {
                            acc[r][c] = S::fmadd(v, S::splat(*xr[r].add(k0 + i)), acc[r][c]);
                        }
                    },
                );
                let (s, o) = scale_offset::<S, Q>(blk, g);
                for r in 0..M {
                    let mut sum = acc[r][0];
                    for ac in acc[r].iter().take(chains).skip(1) {
                        sum = S::add(sum, *ac);
                    }
                    y[r] = S::fmadd(sum, s, y[r]);
                    if t.has_offset() {
                        y[r] = S::fmadd(o, S::splat(x.sum(r, k0 / 32)), y[r]);
                    }
                }
            }
        }
        for (r, &v) in y.iter().enumerate() {
            store_row::<S>(a, r, tile * 16, v);
        }
    }
}
