//! Weight-only group-quantized matrix products for a few rows (the memory-bound small-batch
//! path): y [M, N] = x [M, K] @ W.T with W stored in 4 or 8 bits per weight.
//!
//! Formats (groups of [`GROUP`] = 32 consecutive input features, float16 parameters):
//! - Q4: w = q * scale + min, q in 0..=15 (exact for GGUF Q4_0 / Q4_1 weights, whose scales and
//!   minimums are float16 to begin with);
//! - Q8: w = q * scale, q in -127..=127 (exact for GGUF Q8_0).
//!
//! Layout: one byte buffer of blocks, one block per (tile of [`TILE`] = 16 output features, group),
//! tile-major, so a tile streams from one contiguous range. A Q4 block is 8 steps of 32 bytes
//! (byte 2j+e of step s holds q[n_j][4s+e] in its low nibble and q[n_j][4s+2+e] in its high
//! nibble), then the 16 float16 scales, then the 16 float16 minimums (320 bytes); a Q8 block is
//! 32 rows of 16 bytes (row i holds q[n_j][i]), then the 16 float16 scales (544 bytes).
//!
//! Products: the activations are float32 (or bfloat16) and every weight is reconstructed exactly.
//! With AVX512-BF16 the Q4 product runs on `vdpbf16ps`: the 4-bit codes become bfloat16 integers
//! through a 32-entry table (exact), x is split into bfloat16 high and low parts (x = hi + lo to
//! 16 significant bits; one part for bfloat16 input), and per group y += scale * sum(x q) +
//! min * sum(x), all accumulated in float32. Q8 and the portable path use float32 FMAs.

use std::cell::RefCell;

use super::parallel::{parallel_for, row_blocks, threads_for};
use super::simd::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, prefetch, Elem, Isa, F16};
use super::DType;
use crate::{dispatch, with_elem};

pub const GROUP: usize = 32;
pub const TILE: usize = 16;
/// Rows per pass of the products (more rows are done in passes of this many).
pub const MAX_ROWS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QFormat {
    Q4,
    Q8,
}

impl QFormat {
    pub fn from_bits(bits: u32) -> Result<QFormat, String> {
        match bits {
            4 => Ok(QFormat::Q4),
            8 => Ok(QFormat::Q8),
            _ => Err(format!("no {bits}-bit format (4 or 8)")),
        }
    }
    /// Code bytes of one block.
    fn code_bytes(self) -> usize {
        match self {
            QFormat::Q4 => TILE * GROUP / 2,
            QFormat::Q8 => TILE * GROUP,
        }
    }
    /// Bytes of one block: codes, then 16 float16 scales (and for Q4 16 float16 minimums).
    pub fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4 => self.code_bytes() + 4 * TILE,
            QFormat::Q8 => self.code_bytes() + 2 * TILE,
        }
    }
}

/// Bytes of a packed [n, k] weight; k must be a multiple of 32.
pub fn packed_bytes(fmt: QFormat, n: usize, k: usize) -> Result<usize, String> {
    if k % GROUP != 0 || k == 0 || n == 0 {
        return Err(format!(
            "cannot quantize a [{n}, {k}] weight in groups of {GROUP}"
        ));
    }
    Ok(n.div_ceil(TILE) * (k / GROUP) * fmt.block_bytes())
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// The running worst of |reconstructed - x| relative to the group's scale `step` (relative to |x|
/// when the group is constant, step 0); a NaN makes it infinite.
fn worst_error(worst: f32, reconstructed: f32, x: f32, step: f32) -> f32 {
    let unit = if step > 0.0 {
        step
    } else {
        x.abs().max(f32::MIN_POSITIVE)
    };
    let err = (reconstructed - x).abs() / unit;
    if err.is_nan() {
        f32::INFINITY
    } else {
        worst.max(err)
    }
}

/// Quantize w [n, k] (float32, row-major) into Q4 blocks (`packed`, sized by [`packed_bytes`]).
/// Returns the largest reconstruction error relative to its group's scale (0 for weights that
/// came from Q4_0 / Q4_1).
pub fn q4_pack(w: &[f32], n: usize, k: usize, packed: &mut [u8]) -> f32 {
    let groups = k / GROUP;
    let (cb, bb) = (QFormat::Q4.code_bytes(), QFormat::Q4.block_bytes());
    packed.fill(0);
    let mut worst = 0f32;
    for row in 0..n {
        let (t, j) = (row / TILE, row % TILE);
        for g in 0..groups {
            let ws = &w[row * k + g * GROUP..row * k + (g + 1) * GROUP];
            let lo = ws.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = ws.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s16 = f32_to_f16((hi - lo) / 15.0);
            let m16 = f32_to_f16(lo);
            let (s, m) = (f16_to_f32(s16), f16_to_f32(m16));
            let block = (t * groups + g) * bb;
            put_u16(packed, block + cb + 2 * j, s16);
            put_u16(packed, block + cb + 2 * TILE + 2 * j, m16);
            for (i, &x) in ws.iter().enumerate() {
                let q = if s > 0.0 {
                    ((x - m) / s).round().clamp(0.0, 15.0)
                } else {
                    0.0
                };
                worst = worst_error(worst, q * s + m, x, s);
                let (step, r) = (i / 4, i % 4);
                packed[block + step * 32 + 2 * j + (r % 2)] |=
                    (q as u8) << if r >= 2 { 4 } else { 0 };
            }
        }
    }
    worst
}

/// Quantize w [n, k] into Q8 blocks; returns the largest error relative to the group's scale.
pub fn q8_pack(w: &[f32], n: usize, k: usize, packed: &mut [u8]) -> f32 {
    let groups = k / GROUP;
    let (cb, bb) = (QFormat::Q8.code_bytes(), QFormat::Q8.block_bytes());
    packed.fill(0);
    let mut worst = 0f32;
    for row in 0..n {
        let (t, j) = (row / TILE, row % TILE);
        for g in 0..groups {
            let ws = &w[row * k + g * GROUP..row * k + (g + 1) * GROUP];
            let amax = ws.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let d16 = f32_to_f16(amax / 127.0);
            let d = f16_to_f32(d16);
            let block = (t * groups + g) * bb;
            put_u16(packed, block + cb + 2 * j, d16);
            for (i, &x) in ws.iter().enumerate() {
                let q = if d > 0.0 {
                    (x / d).round().clamp(-127.0, 127.0)
                } else {
                    0.0
                };
                worst = worst_error(worst, q * d, x, d);
                packed[block + i * TILE + j] = q as i8 as u8;
            }
        }
    }
    worst
}

/// One product's tensors (addresses; strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct QMatmulArgs {
    pub fmt: QFormat,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: usize,
    pub x_stride: usize,
    pub x_dtype: DType,
    pub out: usize,
    pub out_stride: usize,
    pub out_dtype: DType,
    /// the packed blocks
    pub packed: usize,
    /// float32 [n] added to every row (0: none)
    pub bias: usize,
    pub threads: usize,
}

/// Per-thread activations prepared once per pass: float32 copy, bfloat16 high / low parts and
/// group sums, each [rows][k] (sums [rows][k / 32]).
#[derive(Default)]
struct Prepared {
    x32: Vec<f32>,
    hi: Vec<u16>,
    lo: Vec<u16>,
    sums: Vec<f32>,
}

thread_local! {
    static PREPARED: RefCell<Prepared> = RefCell::new(Prepared::default());
}

/// y = x @ W.T (+ bias) for every row of x, rounded once to the output dtype.
///
/// # Safety
/// The addresses must hold the tensors described by `a` (`packed` as packed for [n, k]); `out`
/// overlaps nothing else.
pub unsafe fn q_matmul(a: &QMatmulArgs) -> Result<(), String> {
    packed_bytes(a.fmt, a.n, a.k)?;
    if a.m == 0 {
        return Ok(());
    }
    let tiles = a.n.div_ceil(TILE);
    let work = a.n * a.k * a.m.div_ceil(4);
    let threads = threads_for(work / 8, tiles, a.threads);
    for (r0, rows) in row_blocks(a.m, MAX_ROWS) {
        let pass = QMatmulArgs {
            m: rows,
            x: a.x + r0 * a.x_stride * a.x_dtype.size(),
            out: a.out + r0 * a.out_stride * a.out_dtype.size(),
            ..*a
        };
        PREPARED.with(|p| {
            let mut p = p.borrow_mut();
            prepare(&pass, &mut p);
            let p = &*p;
            parallel_for(
                tiles,
                threads,
                |_| 1,
                |r| run_tiles(&pass, p, r.start, r.end),
            );
        });
    }
    Ok(())
}

fn prepare(a: &QMatmulArgs, p: &mut Prepared) {
    let (m, k) = (a.m, a.k);
    let groups = k / GROUP;
    p.x32.resize(m * k, 0.0);
    p.hi.resize(m * k, 0);
    p.lo.resize(m * k, 0);
    p.sums.resize(m * groups, 0.0);
    for r in 0..m {
        let dst = &mut p.x32[r * k..(r + 1) * k];
        unsafe {
            with_elem!(a.x_dtype, T => {
                let src = (a.x as *const T).add(r * a.x_stride);
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = (*src.add(i)).to_f32();
                }
            })
        }
        for i in 0..k {
            let x = p.x32[r * k + i];
            let h = f32_to_bf16(x);
            p.hi[r * k + i] = h;
            p.lo[r * k + i] = f32_to_bf16(x - bf16_to_f32(h));
        }
        for g in 0..groups {
            p.sums[r * groups + g] = p.x32[r * k + g * GROUP..r * k + (g + 1) * GROUP]
                .iter()
                .sum();
        }
    }
}

fn run_tiles(a: &QMatmulArgs, p: &Prepared, t0: usize, t1: usize) {
    #[cfg(target_arch = "x86_64")]
    if a.fmt == QFormat::Q4 && super::simd::use_avx512bf16() {
        let precise = a.x_dtype != DType::BF16;
        unsafe {
            macro_rules! go {
                ($($m:literal),*) => {
                    match (a.m, precise) {
                        $(($m, true) => q4_tiles_bf16::<$m, true>(a, p, t0, t1),
                          ($m, false) => q4_tiles_bf16::<$m, false>(a, p, t0, t1),)*
                        _ => unreachable!(),
                    }
                };
            }
            go!(1, 2, 3, 4, 5, 6, 7, 8);
        }
        return;
    }
    macro_rules! go {
        ($f:ident, $($m:literal),*) => {
            match a.m {
                $($m => dispatch!($f::<$m>(a, p, t0, t1)),)*
                _ => unreachable!(),
            }
        };
    }
    match a.fmt {
        QFormat::Q4 => go!(q4_tiles, 1, 2, 3, 4, 5, 6, 7, 8),
        QFormat::Q8 => go!(q8_tiles, 1, 2, 3, 4, 5, 6, 7, 8),
    }
}

/// Store one tile of each row's output (+ bias), rounded to the output dtype.
#[inline(always)]
unsafe fn store_tile<S: Isa, const M: usize>(a: &QMatmulArgs, t: usize, y: &[S::V; M]) {
    let n0 = t * TILE;
    let cnt = (a.n - n0).min(TILE);
    let bias = if a.bias != 0 {
        f32::load_upto::<S>((a.bias as *const f32).add(n0), cnt)
    } else {
        S::zero()
    };
    with_elem!(a.out_dtype, O => {
        for (r, &v) in y.iter().enumerate() {
            let dst = (a.out as *mut O).add(r * a.out_stride + n0);
            O::store_upto::<S>(dst, S::add(v, bias), cnt);
        }
    })
}

/// Q4, float32 FMAs (portable, or AVX-512 without BF16).
#[inline(always)]
unsafe fn q4_tiles<S: Isa, const M: usize>(a: &QMatmulArgs, p: &Prepared, t0: usize, t1: usize) {
    let (k, groups) = (a.k, a.k / GROUP);
    let mut wbuf = [0f32; GROUP * TILE]; // [k in group][lane]
    for t in t0..t1 {
        let mut y = [S::zero(); M];
        for g in 0..groups {
            let block = (a.packed as *const u8).add((t * groups + g) * QFormat::Q4.block_bytes());
            let codes = block;
            for step in 0..GROUP / 4 {
                for b in 0..32 {
                    let byte = *codes.add(step * 32 + b);
                    let (j, e) = (b / 2, b % 2);
                    wbuf[(step * 4 + e) * TILE + j] = (byte & 15) as f32;
                    wbuf[(step * 4 + 2 + e) * TILE + j] = (byte >> 4) as f32;
                }
            }
            let mut acc = [S::zero(); M];
            for i in 0..GROUP {
                let w = S::load_f32(wbuf.as_ptr().add(i * TILE));
                for (r, ac) in acc.iter_mut().enumerate() {
                    *ac = S::fmadd(
                        w,
                        S::splat(*p.x32.get_unchecked(r * k + g * GROUP + i)),
                        *ac,
                    );
                }
            }
            let sc = F16::load::<S>(block.add(TILE * GROUP / 2) as *const F16);
            let mn = F16::load::<S>(block.add(TILE * GROUP / 2 + 2 * TILE) as *const F16);
            for r in 0..M {
                y[r] = S::fmadd(acc[r], sc, y[r]);
                y[r] = S::fmadd(mn, S::splat(*p.sums.get_unchecked(r * groups + g)), y[r]);
            }
        }
        store_tile::<S, M>(a, t, &y);
    }
}

/// Q8, float32 FMAs.
#[inline(always)]
unsafe fn q8_tiles<S: Isa, const M: usize>(a: &QMatmulArgs, p: &Prepared, t0: usize, t1: usize) {
    let (k, groups) = (a.k, a.k / GROUP);
    for t in t0..t1 {
        let mut y = [S::zero(); M];
        for g in 0..groups {
            let block = (a.packed as *const u8).add((t * groups + g) * QFormat::Q8.block_bytes());
            let codes = block as *const i8;
            prefetch(
                block.add(PF_NEAR * QFormat::Q8.block_bytes()),
                QFormat::Q8.block_bytes(),
            );
            // A independent accumulators per row (A = 4 / M, at least 1) hide the FMA latency
            let mut acc = [[S::zero(); 4]; M];
            let chains = (4 / M).max(1);
            for i in (0..GROUP).step_by(chains) {
                for c in 0..chains {
                    let w = S::load_i8(codes.add((i + c) * TILE));
                    for (r, ac) in acc.iter_mut().enumerate() {
                        ac[c] = S::fmadd(
                            w,
                            S::splat(*p.x32.get_unchecked(r * k + g * GROUP + i + c)),
                            ac[c],
                        );
                    }
                }
            }
            let sc = F16::load::<S>(block.add(TILE * GROUP) as *const F16);
            for r in 0..M {
                let mut sum = acc[r][0];
                for c in 1..chains {
                    sum = S::add(sum, acc[r][c]);
                }
                y[r] = S::fmadd(sum, sc, y[r]);
            }
        }
        store_tile::<S, M>(a, t, &y);
    }
}

/// Software prefetch distances, in blocks: to L1 and to L2.
const PF_NEAR: usize = 6;
const PF_FAR: usize = 24;

/// bfloat16 bit patterns of 0..=15, twice (the table is indexed by 5 bits).
static NIBBLE_BF16: [u16; 32] = {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        // bf16(i & 15): exponent and mantissa of a small integer, built at compile time
        let v = (i & 15) as u32;
        t[i] = if v == 0 {
            0
        } else {
            let e = 31 - v.leading_zeros(); // floor(log2 v)
            (((127 + e) << 7) | ((v << (7 - e)) & 0x7f)) as u16
        };
        i += 1;
    }
    t
};

/// Q4 on AVX512-BF16: codes to bfloat16 through a table, `vdpbf16ps` against x's high (and,
/// when PRECISE, low) bfloat16 parts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2")]
unsafe fn q4_tiles_bf16<const M: usize, const PRECISE: bool>(
    a: &QMatmulArgs,
    p: &Prepared,
    t0: usize,
    t1: usize,
) {
    use super::simd::Avx512;
    use std::arch::x86_64::*;
    let (k, groups) = (a.k, a.k / GROUP);
    let table = _mm512_loadu_si512(NIBBLE_BF16.as_ptr() as *const _);
    let hi = p.hi.as_ptr();
    let lo = p.lo.as_ptr();
    // the bfloat16 pair (x[kk], x[kk + 1]) of row r, in every 32-bit lane
    macro_rules! pair {
        ($base:expr, $r:expr, $kk:expr) => {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(std::ptr::read_unaligned(
                $base.add($r * k + $kk) as *const i32,
            )))
        };
    }
    for t in t0..t1 {
        let mut y = [_mm512_setzero_ps(); M];
        for g in 0..groups {
            let codes = (a.packed as *const u8).add((t * groups + g) * QFormat::Q4.block_bytes());
            // the block 4 ahead into L1 (5 cache lines), to keep enough loads in flight
            let ahead = codes.add(PF_NEAR * QFormat::Q4.block_bytes());
            let far = codes.add(PF_FAR * QFormat::Q4.block_bytes());
            for l in 0..5 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.add(64 * l) as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(far.add(64 * l) as *const i8);
            }
            // per row, accumulators 0/1 take the wa / wb products (2/3: their low parts), so
            // consecutive vdpbf16ps do not wait on each other with few rows
            let mut acc = [[_mm512_setzero_ps(); 4]; M];
            let (c1, c2, c3) = if M <= 2 { (1, 2, 3) } else { (0, 0, 0) };
            for step in 0..GROUP / 4 {
                let w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                    codes.add(step * 32) as *const __m256i
                ));
                let wa: __m512bh = std::mem::transmute(_mm512_permutexvar_epi16(w, table));
                let wb: __m512bh =
                    std::mem::transmute(_mm512_permutexvar_epi16(_mm512_srli_epi16::<4>(w), table));
                let k0 = g * GROUP + step * 4;
                for (r, ac) in acc.iter_mut().enumerate() {
                    ac[0] = _mm512_dpbf16_ps(ac[0], wa, pair!(hi, r, k0));
                    ac[c1] = _mm512_dpbf16_ps(ac[c1], wb, pair!(hi, r, k0 + 2));
                    if PRECISE {
                        ac[c2] = _mm512_dpbf16_ps(ac[c2], wa, pair!(lo, r, k0));
                        ac[c3] = _mm512_dpbf16_ps(ac[c3], wb, pair!(lo, r, k0 + 2));
                    }
                }
            }
            let sc = _mm512_cvtph_ps(_mm256_loadu_si256(
                codes.add(TILE * GROUP / 2) as *const __m256i
            ));
            let mn = _mm512_cvtph_ps(_mm256_loadu_si256(
                codes.add(TILE * GROUP / 2 + 2 * TILE) as *const __m256i
            ));
            for r in 0..M {
                let sum = if M <= 2 {
                    _mm512_add_ps(
                        _mm512_add_ps(acc[r][0], acc[r][1]),
                        _mm512_add_ps(acc[r][2], acc[r][3]),
                    )
                } else {
                    acc[r][0]
                };
                y[r] = _mm512_fmadd_ps(sum, sc, y[r]);
                y[r] = _mm512_fmadd_ps(
                    mn,
                    _mm512_set1_ps(*p.sums.get_unchecked(r * groups + g)),
                    y[r],
                );
            }
        }
        store_tile::<Avx512, M>(a, t, &y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_table_is_bf16_of_small_ints() {
        for (i, &b) in NIBBLE_BF16.iter().enumerate() {
            assert_eq!(bf16_to_f32(b), (i & 15) as f32);
        }
    }
}
