//! Unit tests of the GGUF kernels on random GGUF blocks (every bit pattern of the codes and
//! scales, with sane float16 d / m): lossless packing, row copies, exact dequantization and the
//! products (streaming, float32 panels, bfloat16 panels emulated) against a float64 reference
//! over the dequantized weight, on both instruction sets. The Python suite
//! (`tests/test_quantized_weights.py`) checks the dequantization against `gguf.quants`.

use super::elem::{bf16_to_f32, f32_to_bf16, f32_to_f16};
use super::gguf_gemm_bf16::set_emulation;
use super::gguf_gemm_i8::{set_enabled as set_int8, vnni};
use super::gguf_layout::{
    gguf_decode, gguf_encode, gguf_row_bytes, packed_bytes, BlockVals, GgufType,
};
use super::gguf_matmul::{gguf_matmul, GgufMatmulArgs};
use super::gguf_rows::{
    copy_rows, dequantize_rows, pack, refine_top_logits_quant, unpack_rows, QuantRefineArgs,
};
use super::logits::{refine_top_logits, RefineArgs};
use super::simd::{avx512_detected, set_force_portable};
/// The ISA switch and the bfloat16 emulation are process-wide: tests that flip them hold the
/// lock of the other kernel tests.
use super::tests::ISA_SWITCH as SWITCH;
use super::DType;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
    /// uniform in [-1, 1)
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random GGUF bytes of a [n, k] tensor, with float16 d (and m / dmin) of sane size.
fn random_gguf(t: GgufType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut raw: Vec<u8> = (0..n * gguf_row_bytes(t, k)).map(|_| rng.byte()).collect();
    let bb = t.gguf_block_bytes();
    let halves: &[usize] = match t {
        GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 => &[0],
        GgufType::Q4_1 | GgufType::Q5_1 | GgufType::Q4_K | GgufType::Q5_K => &[0, 2],
        GgufType::Q6_K => &[208],
    };
    for blk in raw.chunks_mut(bb) {
        for &at in halves {
            let v = f32_to_f16(rng.unit() * 0.05);
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    raw
}

/// The exact weights straight from the GGUF bytes (gguf_decode + the formula).
fn reference_weights(t: GgufType, raw: &[u8], n: usize, k: usize) -> Vec<f32> {
    use super::elem::f16_to_f32;
    let mut w = vec![0f32; n * k];
    let mut v = BlockVals::default();
    let kb = t.block_values();
    for (bi, blk) in raw.chunks(t.gguf_block_bytes()).enumerate() {
        gguf_decode(t, blk, &mut v);
        let d = f16_to_f32(v.d);
        let m = f16_to_f32(v.m);
        for i in 0..kb {
            let q = v.codes[i];
            let g = i / t.group();
            w[bi * kb + i] = match t {
                GgufType::Q4_0 => d * ((q & 15) as i32 - 8) as f32,
                GgufType::Q5_0 => d * (q as i32 - 16) as f32,
                GgufType::Q8_0 => (q as i8) as f32 * d,
                GgufType::Q4_1 | GgufType::Q5_1 => d * q as f32 + m,
                GgufType::Q4_K | GgufType::Q5_K => {
                    (d * v.sc[g] as f32) * q as f32 - m * v.mn[g] as f32
                }
                GgufType::Q6_K => (d * (v.sc[g] as i8) as f32) * (q as i32 - 32) as f32,
            };
        }
    }
    w
}

fn packed_of(t: GgufType, raw: &[u8], n: usize, k: usize) -> Vec<u8> {
    let mut p = vec![0u8; packed_bytes(t, n, k).unwrap()];
    pack(t, raw, n, k, &mut p, 0).unwrap();
    p
}

fn dequantize_all(t: GgufType, p: &[u8], n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * k];
    let rows: Vec<i64> = (0..n as i64).collect();
    unsafe {
        dequantize_rows(
            t,
            p.as_ptr() as usize,
            n,
            k,
            &rows,
            out.as_mut_ptr() as usize,
            k,
            2,
        )
    }
    .unwrap();
    out
}

#[test]
fn gguf_blocks_round_trip_bit_for_bit() {
    for t in GgufType::ALL {
        let mut rng = Rng(7 + t.ggml_code() as u64);
        let mut v = BlockVals::default();
        let mut back = vec![0u8; t.gguf_block_bytes()];
        for _ in 0..50 {
            let raw: Vec<u8> = (0..t.gguf_block_bytes()).map(|_| rng.byte()).collect();
            gguf_decode(t, &raw, &mut v);
            gguf_encode(t, &v, &mut back);
            assert_eq!(raw, back, "{}", t.name());
        }
    }
}

#[test]
fn packing_is_lossless_and_dequantizes_exactly() {
    for t in GgufType::ALL {
        let k = 2 * t.block_values();
        let n = 37; // two full tiles and a partial one
        let raw = random_gguf(t, n, k, 1);
        let p = packed_of(t, &raw, n, k);
        let rows: Vec<i64> = (0..n as i64).collect();
        let mut back = vec![0u8; raw.len()];
        unpack_rows(t, &p, n, k, &rows, &mut back).unwrap();
        assert_eq!(raw, back, "{}: unpack(pack(raw))", t.name());
        let want = reference_weights(t, &raw, n, k);
        let got = dequantize_all(t, &p, n, k);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{}: weight {i}: {g} vs {w}",
                t.name()
            );
        }
    }
}

#[test]
fn row_copies_permute_and_concatenate() {
    for t in GgufType::ALL {
        let k = t.block_values();
        let (n1, n2) = (20, 9);
        let (r1, r2) = (random_gguf(t, n1, k, 2), random_gguf(t, n2, k, 3));
        let (p1, p2) = (packed_of(t, &r1, n1, k), packed_of(t, &r2, n2, k));
        // [reversed p1 ; p2]
        let n = n1 + n2;
        let mut dst = vec![0u8; packed_bytes(t, n, k).unwrap()];
        let rev: Vec<i64> = (0..n1 as i64).rev().collect();
        copy_rows(t, k, &p1, n1, &rev, &mut dst, n, 0).unwrap();
        let all2: Vec<i64> = (0..n2 as i64).collect();
        copy_rows(t, k, &p2, n2, &all2, &mut dst, n, n1).unwrap();
        let mut raw = vec![0u8; n * gguf_row_bytes(t, k)];
        let rows: Vec<i64> = (0..n as i64).collect();
        unpack_rows(t, &dst, n, k, &rows, &mut raw).unwrap();
        let rb = gguf_row_bytes(t, k);
        for i in 0..n1 {
            assert_eq!(
                raw[i * rb..(i + 1) * rb],
                r1[(n1 - 1 - i) * rb..(n1 - i) * rb]
            );
        }
        assert_eq!(raw[n1 * rb..], r2[..]);
        assert!(copy_rows(t, k, &p1, n1, &[n1 as i64], &mut dst, n, 0).is_err());
        assert!(copy_rows(t, k, &p1, n1, &rev, &mut dst, n, n2 + 1).is_err());
    }
}

#[test]
fn bad_shapes_are_refused() {
    assert!(packed_bytes(GgufType::Q4_K, 16, 128).is_err());
    assert!(packed_bytes(GgufType::Q8_0, 16, 48).is_err());
    assert!(packed_bytes(GgufType::Q4_0, 0, 32).is_err());
    assert!(GgufType::from_ggml(10).is_err()); // Q2_K
    let raw = random_gguf(GgufType::Q4_0, 4, 64, 4);
    let mut p = vec![0u8; packed_bytes(GgufType::Q4_0, 4, 64).unwrap()];
    assert!(pack(GgufType::Q4_0, &raw[1..], 4, 64, &mut p, 0).is_err());
}

/// x [m, k] (float32 values, bfloat16-exact when `bf16`) @ w.T in float64, and sum |x| |w|.
fn reference_product(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[c * k + i] as f64;
                y[r * n + c] += p;
                mag[r * n + c] += p.abs();
            }
        }
    }
    (y, mag)
}

/// bfloat16 activation rows [m, k] as the 8-bit activation product sees them: per 32-value group
/// dx * round(x / dx), dx = max |x| / 127.
fn int8_activations(x: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (src, dst) in x.chunks(k).zip(out.chunks_mut(k)) {
        for (g, d) in src.chunks(32).zip(dst.chunks_mut(32)) {
            let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let dx = amax / 127.0;
            let id = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            for (v, o) in g.iter().zip(d.iter_mut()) {
                *o = dx * (v * id).round_ties_even().clamp(-128.0, 127.0);
            }
        }
    }
    out
}

/// Every kept type's product against the float64 product of its dequantized weight, for float32
/// and bfloat16 activations; with `int8`, only the products that take 8-bit activations (more
/// than 8 bfloat16 rows of a 4-bit or Q8_0 weight), against the quantized activations.
fn check_products(what: &str, int8: bool) {
    // n = 75: not a multiple of 16 (nor of the 64-output panels); n = 150 with 40 rows: enough
    // work for 2 threads over 3 panels, so the bfloat16 panels split each panel's rows
    let shapes: [(usize, &[usize]); 2] = [(75, &[1, 3, 8, 9, 13, 40]), (150, &[40])];
    for t in GgufType::ALL {
        if int8
            && !matches!(
                t,
                GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q4_K | GgufType::Q8_0
            )
        {
            continue;
        }
        for &(n, ms) in &shapes {
            let k = if t.block_values() == 256 || n == 150 {
                512
            } else {
                96
            };
            let raw = random_gguf(t, n, k, 5);
            let p = packed_of(t, &raw, n, k);
            let w = dequantize_all(t, &p, n, k);
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            for &m in ms {
                for x_dtype in [DType::F32, DType::BF16] {
                    if int8 && (x_dtype != DType::BF16 || m <= 8) {
                        continue;
                    }
                    let mut rng = Rng(11 + m as u64);
                    let x: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
                    let xb: Vec<u16> = x.iter().map(|&v| f32_to_bf16(v)).collect();
                    let mut xv: Vec<f32> = if x_dtype == DType::BF16 {
                        xb.iter().map(|&h| bf16_to_f32(h)).collect()
                    } else {
                        x.clone()
                    };
                    if int8 {
                        xv = int8_activations(&xv, k);
                    }
                    let (want, mag) = reference_product(&xv, &w, m, n, k);
                    let mut out = vec![f32::NAN; m * n];
                    let a = GgufMatmulArgs {
                        ty: t,
                        m,
                        n,
                        k,
                        x: if x_dtype == DType::BF16 {
                            xb.as_ptr() as usize
                        } else {
                            x.as_ptr() as usize
                        },
                        x_stride: k,
                        x_dtype,
                        out: out.as_mut_ptr() as usize,
                        out_stride: n,
                        out_dtype: DType::F32,
                        packed: p.as_ptr() as usize,
                        bias: bias.as_ptr() as usize,
                        threads: 2,
                    };
                    unsafe { gguf_matmul(&a) }.unwrap();
                    for r in 0..m {
                        for c in 0..n {
                            let (g, e) = (out[r * n + c] as f64, want[r * n + c] + bias[c] as f64);
                            let tol = 1e-5 * mag[r * n + c] + 1e-6;
                            assert!(
                                (g - e).abs() <= tol,
                                "{what} {} m={m} {x_dtype:?} [{r},{c}]: {g} vs {e}",
                                t.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn products_match_the_dequantized_weight() {
    let _g = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_int8(false);
    set_force_portable(true);
    check_products("portable", false);
    set_force_portable(false);
    if avx512_detected() {
        check_products("avx512", false);
        set_emulation(true);
        check_products("avx512 + bf16 panels (emulated)", false);
        set_emulation(false);
    }
    set_int8(true);
    if vnni() {
        check_products("avx512 + 8-bit activations (VNNI)", true);
        set_int8(false);
    } else {
        set_int8(false);
        eprintln!("no AVX512-VNNI: the 8-bit activation products are not checked here");
    }
}

#[test]
fn refined_logits_equal_the_float32_head() {
    let _g = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let run = |isa: &str| {
        for t in [GgufType::Q8_0, GgufType::Q4_K, GgufType::Q6_K] {
            let (vocab, h, rows, top) = (300, 256, 3, 32);
            let raw = random_gguf(t, vocab, h, 6);
            let p = packed_of(t, &raw, vocab, h);
            let table = dequantize_all(t, &p, vocab, h);
            let mut rng = Rng(17);
            let hidden: Vec<f32> = (0..rows * h).map(|_| rng.unit()).collect();
            // approximate logits: the exact ones rounded to bfloat16
            let exact: Vec<f32> = (0..rows * vocab)
                .map(|i| {
                    let (r, v) = (i / vocab, i % vocab);
                    (0..h).map(|j| hidden[r * h + j] * table[v * h + j]).sum()
                })
                .collect();
            let approx: Vec<f32> = exact.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
            let (mut ours, mut theirs) = (approx.clone(), approx.clone());
            let qa = QuantRefineArgs {
                ty: t,
                rows,
                vocab,
                hidden_size: h,
                logits: ours.as_mut_ptr() as usize,
                logits_stride: vocab,
                hidden: hidden.as_ptr() as usize,
                hidden_stride: h,
                packed: p.as_ptr() as usize,
                k: top,
                threads: 2,
            };
            unsafe { refine_top_logits_quant(&qa) }.unwrap();
            let fa = RefineArgs {
                rows,
                vocab,
                hidden_size: h,
                logits: theirs.as_mut_ptr() as usize,
                logits_stride: vocab,
                hidden: hidden.as_ptr() as usize,
                hidden_stride: h,
                head: table.as_ptr() as usize,
                k: top,
                threads: 2,
            };
            unsafe { refine_top_logits(&fa) }.unwrap();
            let changed = ours
                .iter()
                .zip(&approx)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert!(
                changed >= rows * top / 2,
                "{isa} {}: only {changed} logits refined",
                t.name()
            );
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{isa} {}: logit {i}: {a} vs {b}",
                    t.name()
                );
            }
        }
    };
    set_force_portable(true);
    run("portable");
    set_force_portable(false);
    if avx512_detected() {
        run("avx512");
    }
}
