//! The mid-size-batch product of 4- and 8-bit weights (Q4_0, Q4_1, Q4_K, Q8_0) with 8-bit activations on
//! AVX512-VNNI (`vpdpbusd`), as llama.cpp's CPU products do: each activation row is quantized per
//! 32-value group (x ~ dx * xq, xq an int8, dx = max |x| / 127), and a group's contribution to an
//! output is S * dx * sum(q * xq) + (O - zp * S) * dx * sum(xq), with the weight's unsigned 4-bit
//! codes q, scale S, offset O and zero point zp (`gguf_layout`).
//!
//! `vpdpbusd` multiplies 4 unsigned bytes by 4 signed ones and adds them to a 32-bit lane: 64
//! multiply-adds an instruction where `vdpbf16ps` does 32, and the 4-bit codes of the tiled layout
//! become its byte quadruples with a widen, a shift and a mask (no table; Q8_0's signed bytes are
//! offset to unsigned ones, zero point 128). Like the bfloat16
//! panels (`gguf_gemm_bf16`), each panel of [`NB`] tiles is decoded once per row block into a
//! scratch the microkernel (3 rows x 64 outputs) reads for every row group.
//!
//! The activations' rounding to 8 bits is the one approximation (the bfloat16 path rounds them to
//! 8 significant bits instead): it applies to bfloat16 activations only, never to the float32
//! reference, and only while [`set_enabled`] says so: the engine enables it for decode steps
//! (prompts keep the bfloat16 products, so the KV cache every later token reads is not rounded),
//! unless `--cpu-decode-activations bfloat16`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::gguf_layout::GgufType;
use super::gguf_matmul::{GgufMatmulArgs, GEMV_MAX_ROWS};
use super::DType;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Products run on this path since the process started (for tests and the engine's stats).
static PRODUCTS: AtomicUsize = AtomicUsize::new(0);

/// Products run on this path so far.
pub fn products() -> usize {
    PRODUCTS.load(Ordering::Relaxed)
}

/// Take (true) or leave (false, the default) this path where it applies. The engine turns it on
/// for its decode steps only (`lmrs.models.quantized.set_int8_activations`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this path is on (it still needs AVX512-VNNI, see [`applies`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether this CPU has AVX-512 with VNNI (and the path is not forced portable).
pub fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        super::simd::use_avx512()
            && *DETECTED.get_or_init(|| std::is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a product takes this path: bfloat16 activations, more rows than the streaming kernel
/// takes, a 4-bit weight type, AVX512-VNNI.
pub fn applies(a: &GgufMatmulArgs) -> bool {
    a.x_dtype == DType::BF16
        && a.m > GEMV_MAX_ROWS
        && matches!(
            a.ty,
            GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q4_K | GgufType::Q8_0
        )
        && enabled()
        && vnni()
}

/// Input features per panel chunk (whole GGUF blocks).
const KC: usize = 1024;
/// Values per activation group (every 4-bit type's scale group).
const G: usize = 32;

/// Per-thread panel (code quadruples, scales, effective offsets) and output accumulators.
#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    y: Vec<f32>,
}

/// A row block's 8-bit activations: xq [rows, k], and per row and group dx and dx * sum(xq).
#[derive(Default)]
struct Quantized {
    xq: Vec<i8>,
    dx: Vec<f32>,
    sx: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static QUANTIZED: RefCell<Quantized> = RefCell::new(Quantized::default());
}

/// y = x @ W.T (+ bias) (see [`applies`]).
///
/// # Safety
/// As `gguf_matmul`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn run(a: &GgufMatmulArgs) -> Result<(), String> {
    PRODUCTS.fetch_add(1, Ordering::Relaxed);
    kernel::run(a);
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn run(_a: &GgufMatmulArgs) -> Result<(), String> {
    Err("the 8-bit activation product needs AVX512-VNNI".into())
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::gguf_decode::{scale_offset, ty};
    use super::super::gguf_layout::{GgufType, TILE};
    use super::super::gguf_matmul::{GgufMatmulArgs, ROW_BLOCK};
    use super::super::gguf_panels::{
        load_acc, load_codes, store_acc, store_panel, zero_tile, Work, MR, NB,
    };
    use super::super::parallel::parallel_for;
    use super::super::simd::Avx512;
    use super::{Quantized, Scratch, G, KC, QUANTIZED, SCRATCH};

    /// A row block's quantized activations as the panels read them.
    #[derive(Clone, Copy)]
    struct Rows {
        xq: *const i8,
        /// k: the row stride of xq
        k: usize,
        dx: *const f32,
        sx: *const f32,
        /// groups per row (k / 32): the row stride of dx and sx
        groups: usize,
    }
    unsafe impl Send for Rows {}
    unsafe impl Sync for Rows {}

    pub unsafe fn run(a: &GgufMatmulArgs) {
        let panels = a.n.div_ceil(TILE * NB);
        let groups = a.k / G;
        let mut r0 = 0;
        while r0 < a.m {
            let rows = (a.m - r0).min(ROW_BLOCK);
            let xr = QUANTIZED.with(|q| {
                let mut q = q.borrow_mut();
                quantize_rows(a, r0, rows, &mut q);
                Rows {
                    xq: q.xq.as_ptr(),
                    k: a.k,
                    dx: q.dx.as_ptr(),
                    sx: q.sx.as_ptr(),
                    groups,
                }
            });
            let (work, items, threads) = Work::split(a, rows, panels);
            parallel_for(
                items,
                threads,
                |_| 1,
                |p| {
                    SCRATCH.with(|s| {
                        let mut s = s.borrow_mut();
                        match a.ty {
                            GgufType::Q4_0 => panels_vnni::<Q4_0>(a, &xr, r0, &work, p, &mut s),
                            GgufType::Q4_1 => panels_vnni::<Q4_1>(a, &xr, r0, &work, p, &mut s),
                            GgufType::Q8_0 => panels_vnni::<Q8_0>(a, &xr, r0, &work, p, &mut s),
                            _ => panels_vnni::<Q4_K>(a, &xr, r0, &work, p, &mut s),
                        }
                    })
                },
            );
            r0 += rows;
        }
    }

    const fn index_of(t: GgufType) -> u8 {
        let mut i = 0;
        while i < GgufType::ALL.len() {
            if GgufType::ALL[i] as u32 == t as u32 {
                return i as u8;
            }
            i += 1;
        }
        panic!("not a kept type")
    }
    const Q4_0: u8 = index_of(GgufType::Q4_0);
    const Q4_1: u8 = index_of(GgufType::Q4_1);
    const Q4_K: u8 = index_of(GgufType::Q4_K);
    const Q8_0: u8 = index_of(GgufType::Q8_0);

    /// Rows [r0, r0 + rows) of the bfloat16 x as int8 per 32-value group.
    unsafe fn quantize_rows(a: &GgufMatmulArgs, r0: usize, rows: usize, q: &mut Quantized) {
        let groups = a.k / G;
        q.xq.resize(rows * a.k, 0);
        q.dx.resize(rows * groups, 0.0);
        q.sx.resize(rows * groups, 0.0);
        quantize_avx512(a, r0, rows, q);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
    unsafe fn quantize_avx512(a: &GgufMatmulArgs, r0: usize, rows: usize, q: &mut Quantized) {
        let groups = a.k / G;
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        for r in 0..rows {
            let x = (a.x as *const u16).add((r0 + r) * a.x_stride);
            for g in 0..groups {
                let widen = |p: *const u16| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                        _mm256_loadu_si256(p as *const __m256i),
                    )))
                };
                let (v0, v1) = (widen(x.add(g * G)), widen(x.add(g * G + 16)));
                let m = _mm512_max_ps(
                    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v0), abs_mask)),
                    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), abs_mask)),
                );
                let amax = _mm512_reduce_max_ps(m);
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let vid = _mm512_set1_ps(id);
                let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
                let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
                let dst = q.xq.as_mut_ptr().add(r * a.k + g * G);
                _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtsepi32_epi8(q0));
                _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtsepi32_epi8(q1));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                q.dx[r * groups + g] = d;
                q.sx[r * groups + g] = d * sum as f32;
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c,avx2")]
    unsafe fn panels_vnni<const Q: u8>(
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
        s.codes.resize(kc * NB * TILE, 0);
        s.scales.resize(kc / G * NB * TILE, 0.0);
        s.offsets.resize(kc / G * NB * TILE, 0.0);
        s.y.resize(rows * NB * TILE, 0.0);
        let tiles = a.n.div_ceil(TILE);
        if items.is_empty() {
            return;
        }
        for (p, first, last) in w.panels(items) {
            let t0 = p * NB;
            let nt = (tiles - t0).min(NB);
            let mut k0 = 0;
            while k0 < a.k {
                let k1 = (k0 + kc).min(a.k);
                decode_panel::<Q>(a, t0, nt, k0, k1, s);
                let mut r = first;
                while r < last {
                    let rr = (last - r).min(MR);
                    match rr {
                        1 => micro::<1>(s, x, r, k0, k1, k0 > 0),
                        2 => micro::<2>(s, x, r, k0, k1, k0 > 0),
                        _ => micro::<MR>(s, x, r, k0, k1, k0 > 0),
                    }
                    r += rr;
                }
                k0 = k1;
            }
            store_panel(a, s.y.as_ptr(), row0, first, last, t0, nt);
        }
    }

    /// Codes of tiles [t0, t0 + nt) over [k0, k1) as byte quadruples [step of 4][NB][16 x 4]
    /// (lane j: column j's codes for k .. k + 3), each group's S and O - zp * S [group][NB][16];
    /// missing tiles are zero.
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
        let (kb, bb) = (t.block_values(), t.tile_block_bytes());
        let blocks = a.k / kb;
        // Q8_0's signed bytes become unsigned ones with zero point 128
        let eight_bit = t.code_bits() == 8;
        let zp = _mm512_set1_ps(if eight_bit {
            128.0
        } else {
            t.zero_point() as f32
        });
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        let nibbles = _mm512_set1_epi32(0x0F0F_0F0F);
        let codes = s.codes.as_mut_ptr();
        for c in 0..NB {
            if c >= nt {
                let (scales, offsets) = (s.scales.as_mut_ptr(), s.offsets.as_mut_ptr());
                zero_tile(codes, (k1 - k0) / 4, scales, offsets, (k1 - k0) / G, c);
                continue;
            }
            let base = (a.packed as *const u8).add((t0 + c) * blocks * bb);
            for b in k0 / kb..k1 / kb {
                let blk = base.add(b * bb);
                for g in 0..t.groups_per_block() {
                    let (sc, of) = scale_offset::<Avx512, Q>(blk, g);
                    let gi = (b * kb + g * G - k0) / G;
                    _mm512_storeu_ps(s.scales.as_mut_ptr().add((gi * NB + c) * TILE), sc);
                    _mm512_storeu_ps(
                        s.offsets.as_mut_ptr().add((gi * NB + c) * TILE),
                        _mm512_fnmadd_ps(zp, sc, of),
                    );
                    let src = blk.add(t.group_codes(g));
                    for step in 0..G / 4 {
                        let at =
                            codes.add((((b * kb + g * G - k0) / 4 + step) * NB + c) * 4 * TILE);
                        if eight_bit {
                            // pairs 2 step and 2 step + 1: lane j's u16 holds k, k+1 / k+2, k+3
                            let p0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                src.add(step * 64) as *const __m256i
                            ));
                            let p1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                src.add(step * 64 + 32) as *const __m256i,
                            ));
                            let quad = _mm512_xor_si512(
                                _mm512_or_si512(p0, _mm512_slli_epi32::<16>(p1)),
                                flip,
                            );
                            _mm512_storeu_si512(at as *mut _, quad);
                            continue;
                        }
                        // lane j: the u16 of bytes 2j, 2j+1: bits 0-3 k+0, 4-7 k+2, 8-11 k+1,
                        // 12-15 k+3; (u | u << 12) & 0x0F0F0F0F: bytes k+0, k+1, k+2, k+3
                        let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                            src.add(step * 32) as *const __m256i
                        ));
                        let quad = _mm512_ternarylogic_epi32::<0xA8>(
                            u,
                            _mm512_slli_epi32::<12>(u),
                            nibbles,
                        );
                        _mm512_storeu_si512(at as *mut _, quad);
                    }
                }
            }
        }
    }

    /// y[R][NB x 16] (+)= rows r0.. of x over [k0, k1) @ the panel.
    #[inline(always)]
    unsafe fn micro<const R: usize>(
        s: &mut Scratch,
        x: &Rows,
        r0: usize,
        k0: usize,
        k1: usize,
        accumulate: bool,
    ) {
        let codes = s.codes.as_ptr();
        let mut y = load_acc::<R>(s.y.as_ptr(), r0, accumulate);
        let mut xp = [std::ptr::null::<i8>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x.xq.add((r0 + r) * x.k + k0);
        }
        for g in 0..(k1 - k0) / G {
            let mut acc = [[_mm512_setzero_si512(); NB]; R];
            for st in 0..G / 4 {
                let step = g * G / 4 + st;
                let w = load_codes(codes, step);
                for r in 0..R {
                    let xb = _mm512_set1_epi32(std::ptr::read_unaligned(
                        xp[r].add(4 * step) as *const i32
                    ));
                    for c in 0..NB {
                        acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], w[c], xb);
                    }
                }
            }
            let gi = (k0 + g * G) / G;
            for c in 0..NB {
                let sc = _mm512_loadu_ps(s.scales.as_ptr().add((g * NB + c) * TILE));
                let of = _mm512_loadu_ps(s.offsets.as_ptr().add((g * NB + c) * TILE));
                for r in 0..R {
                    let dx = _mm512_set1_ps(*x.dx.add((r0 + r) * x.groups + gi));
                    let sx = _mm512_set1_ps(*x.sx.add((r0 + r) * x.groups + gi));
                    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][c]), dx);
                    y[r][c] = _mm512_fmadd_ps(v, sc, y[r][c]);
                    y[r][c] = _mm512_fmadd_ps(of, sx, y[r][c]);
                }
            }
        }
        store_acc::<R>(s.y.as_mut_ptr(), r0, &y);
    }
}
