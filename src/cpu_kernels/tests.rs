//! Unit tests of the CPU kernels against plain scalar arithmetic, on both instruction sets.
//! (The Python suite `tests/test_cpu_kernels.py` checks them against the PyTorch reference.)

use super::activation::{gated_act_and_mul, GateAct, GatedActArgs};
use super::attention::{paged_attention, AttnArgs};
use super::elem::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use super::norm::{rms_norm, NormArgs};
use super::rope::{rotary_embedding, CacheArgs, RopeArgs};
use super::simd::{avx512_detected, dispatch_tanh_for_tests, set_force_portable};
use super::DType;
use std::sync::Mutex;

/// The portable/AVX-512 switch is process-wide: tests that flip it take this lock.
pub(super) static ISA_SWITCH: Mutex<()> = Mutex::new(());

/// Run `f` with the portable path and, when the CPU has it, the AVX-512 path.
fn on_each_isa(f: impl Fn(&str)) {
    let _guard = ISA_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_force_portable(true);
    f("portable");
    set_force_portable(false);
    if avx512_detected() {
        f("avx512");
    }
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 10000.0 - 1.0
        })
        .collect()
}

#[test]
fn bf16_rounds_to_nearest_even() {
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bfloat16 values: ties go to the even mantissa (1.0)
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    // 1 + 3 * 2^-8 is halfway too: up to the even neighbour 1 + 2^-6
    assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(bf16_to_f32(0xc040), -3.0);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
}

#[test]
fn f16_round_trips_every_finite_value() {
    for h in 0u16..=u16::MAX {
        let x = f16_to_f32(h);
        if x.is_nan() {
            assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            continue;
        }
        assert_eq!(f32_to_f16(x), h, "half 0x{h:04x} = {x}");
    }
    assert_eq!(f32_to_f16(1e6), 0x7c00, "overflow gives +inf");
}

#[test]
fn rms_norm_matches_scalar_math() {
    let (rows, hidden) = (5, 70); // 70: four full vectors and a 6-lane tail
    let x = pseudo_random(rows * hidden, 1);
    let w = pseudo_random(hidden, 2);
    let eps = 1e-5f32;
    let expected: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let row = &x[r * hidden..(r + 1) * hidden];
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / hidden as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(&w)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    on_each_isa(|isa| {
        let mut out = vec![0f32; rows * hidden];
        let args = NormArgs {
            rows,
            hidden,
            x: x.as_ptr() as usize,
            x_stride: hidden,
            x_dtype: DType::F32,
            residual: 0,
            residual_stride: 0,
            weight: w.as_ptr() as usize,
            weight_dtype: DType::F32,
            out: out.as_mut_ptr() as usize,
            out_stride: hidden,
            out_dtype: DType::F32,
            eps,
            threads: 1,
        };
        unsafe { rms_norm(&args) }.unwrap();
        for (i, (&o, &e)) in out.iter().zip(&expected).enumerate() {
            assert!(
                (o as f64 - e).abs() < 1e-5,
                "{isa}: element {i}: {o} vs {e}"
            );
        }
    });
}

#[test]
fn silu_and_mul_matches_scalar_math_in_bf16() {
    let (rows, inter) = (3, 37);
    let x: Vec<u16> = pseudo_random(rows * 2 * inter, 3)
        .iter()
        .map(|&v| f32_to_bf16(v * 4.0))
        .collect();
    on_each_isa(|isa| {
        let mut out = vec![0u16; rows * inter];
        let args = GatedActArgs {
            act: GateAct::Silu,
            rows,
            inter,
            x: x.as_ptr() as usize,
            x_stride: 2 * inter,
            out: out.as_mut_ptr() as usize,
            out_stride: inter,
            dtype: DType::BF16,
            threads: 1,
        };
        unsafe { gated_act_and_mul(&args) }.unwrap();
        for r in 0..rows {
            for i in 0..inter {
                let g = bf16_to_f32(x[r * 2 * inter + i]) as f64;
                let u = bf16_to_f32(x[r * 2 * inter + inter + i]) as f64;
                let want = g / (1.0 + (-g).exp()) * u;
                let got = bf16_to_f32(out[r * inter + i]) as f64;
                // one bfloat16 rounding: relative error <= 2^-8
                assert!(
                    (got - want).abs() <= want.abs() / 256.0 + 1e-6,
                    "{isa}: [{r},{i}] {got} vs {want}"
                );
            }
        }
    });
}

#[test]
fn gelu_tanh_and_mul_matches_scalar_math() {
    let (rows, inter) = (4, 45);
    let x: Vec<f32> = pseudo_random(rows * 2 * inter, 4)
        .iter()
        .map(|&v| v * 12.0) // gates in [-12, 12]: both tails of the gelu
        .collect();
    on_each_isa(|isa| {
        let mut out = vec![f32::NAN; rows * inter];
        let args = GatedActArgs {
            act: GateAct::GeluTanh,
            rows,
            inter,
            x: x.as_ptr() as usize,
            x_stride: 2 * inter,
            out: out.as_mut_ptr() as usize,
            out_stride: inter,
            dtype: DType::F32,
            threads: 1,
        };
        unsafe { gated_act_and_mul(&args) }.unwrap();
        for r in 0..rows {
            for i in 0..inter {
                let g = x[r * 2 * inter + i] as f64;
                let u = x[r * 2 * inter + inter + i] as f64;
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let want = 0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u;
                let got = out[r * inter + i] as f64;
                assert!(
                    (got - want).abs() <= 4e-6 * want.abs() + 1e-6,
                    "{isa}: [{r},{i}] gelu({g}) * {u}: {got} vs {want}"
                );
            }
        }
    });
}

#[test]
fn tanh_is_accurate_over_the_range() {
    let xs: Vec<f32> = (-2000..=2000)
        .map(|i| i as f32 * 0.01)
        .chain([1e-6, -3e-4, 0.6249, 0.6251, 50.0, -90.0, 1e30])
        .collect();
    on_each_isa(|isa| {
        let got = dispatch_tanh_for_tests(&xs);
        for (&x, &t) in xs.iter().zip(&got) {
            let want = (x as f64).tanh();
            assert!(
                (t as f64 - want).abs() <= 3e-7 * want.abs().max(1e-30) + 1e-38,
                "{isa}: tanh({x}) = {t}, want {want}"
            );
        }
    });
}

/// Plain f64 attention of one query at `pos` over keys `lo..=pos` (k/v: [len][D] of one head).
fn naive_attention(
    q: &[f32],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    pos: usize,
    window: usize,
    scale: f64,
    cap: f64,
) -> Vec<f64> {
    let lo = if window > 0 {
        (pos + 1).saturating_sub(window)
    } else {
        0
    };
    let s: Vec<f64> = (lo..=pos)
        .map(|j| {
            let dot: f64 = q
                .iter()
                .zip(&k[j])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale;
            if cap > 0.0 {
                cap * (dot / cap).tanh()
            } else {
                dot
            }
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let l: f64 = p.iter().sum();
    let d = q.len();
    (0..d)
        .map(|i| {
            (lo..=pos)
                .zip(&p)
                .map(|(j, pj)| pj * v[j][i] as f64)
                .sum::<f64>()
                / l
        })
        .collect()
}

#[test]
fn attention_with_window_and_soft_cap_matches_scalar_math() {
    // one KV head, two query heads; row 0 decodes at position 299, row 1 prefills 37 queries after
    // 100 cached keys; blocks of 16 in reverse order; the blocks wholly before every window are
    // marked with an out-of-range id, which must be neither read nor reported
    let (d, hq, bs) = (64usize, 2usize, 16usize);
    let lens = [300usize, 137];
    let qlens = [1usize, 37];
    let max_blocks = 20;
    let num_blocks = 2 * max_blocks;
    let kc = pseudo_random(num_blocks * bs * d, 5);
    let vc = pseudo_random(num_blocks * bs * d, 6);
    let tokens: usize = qlens.iter().sum();
    let q = pseudo_random(tokens * hq * d, 7);
    let key = |row: usize, j: usize, cache: &[f32]| -> Vec<f32> {
        let b = row * max_blocks + (max_blocks - 1 - j / bs);
        cache[(b * bs + j % bs) * d..(b * bs + j % bs + 1) * d].to_vec()
    };
    let qsl = [0i32, 1, 38];
    let seq_lens = [lens[0] as i32, lens[1] as i32];
    for &(window, cap) in &[
        (0usize, 0.0f32),
        (50, 0.0),
        (7, 30.0),
        (1, 0.0),
        (500, 50.0),
        (33, 0.0),
    ] {
        let mut bt = vec![0i32; 2 * max_blocks];
        for row in 0..2 {
            let ctx = lens[row] - qlens[row];
            let first = if window > 0 {
                (ctx + 1).saturating_sub(window) / bs
            } else {
                0
            };
            for blk in 0..max_blocks {
                bt[row * max_blocks + blk] = if blk < first {
                    i32::MAX // outside the cache: reading it would be out of bounds
                } else {
                    (row * max_blocks + max_blocks - 1 - blk) as i32
                };
            }
        }
        on_each_isa(|isa| {
            let mut out = vec![f32::NAN; tokens * hq * d];
            let a = AttnArgs {
                dtype: DType::F32,
                cache_dtype: DType::F32,
                num_tokens: tokens,
                q: q.as_ptr() as usize,
                q_stride: hq * d,
                out: out.as_mut_ptr() as usize,
                out_stride: hq * d,
                q_heads: hq,
                kv_heads: 1,
                head_dim: d,
                k_cache: kc.as_ptr() as usize,
                v_cache: vc.as_ptr() as usize,
                num_blocks,
                block_size: bs,
                block_table: bt.as_ptr() as usize,
                bt_stride: max_blocks,
                max_blocks,
                seq_lens: seq_lens.as_ptr() as usize,
                query_start_loc: qsl.as_ptr() as usize,
                rows: 2,
                scale: 0.125,
                sliding_window: window,
                soft_cap: cap,
                threads: 1,
            };
            unsafe { paged_attention(&a) }.unwrap();
            for row in 0..2 {
                let ks: Vec<Vec<f32>> = (0..lens[row]).map(|j| key(row, j, &kc)).collect();
                let vs: Vec<Vec<f32>> = (0..lens[row]).map(|j| key(row, j, &vc)).collect();
                for i in 0..qlens[row] {
                    let tok = qsl[row] as usize + i;
                    let pos = lens[row] - qlens[row] + i;
                    for h in 0..hq {
                        let qv = &q[(tok * hq + h) * d..(tok * hq + h + 1) * d];
                        let want = naive_attention(qv, &ks, &vs, pos, window, 0.125, cap as f64);
                        for (e, &w) in want.iter().enumerate() {
                            let got = out[(tok * hq + h) * d + e] as f64;
                            assert!(
                                (got - w).abs() < 2e-5,
                                "{isa} window {window} cap {cap}: row {row} query {i} head {h} [{e}]: {got} vs {w}"
                            );
                        }
                    }
                }
            }
        });
    }
}

#[test]
fn partial_rotary_rotates_the_leading_dims_and_copies_the_rest() {
    let (tokens, d, r, heads) = (3usize, 64usize, 32usize, 2usize);
    let max_pos = 10;
    let cos_sin: Vec<f32> = pseudo_random(max_pos * r, 8);
    let positions = [0i32, 9, 4];
    let src = pseudo_random(tokens * heads * d, 9);
    let v = pseudo_random(tokens * heads * d, 10);
    for neox in [true, false] {
        // expected, in f32 with the kernel's operation order
        let mut want = src.clone();
        for t in 0..tokens {
            let cs = &cos_sin[positions[t] as usize * r..(positions[t] as usize + 1) * r];
            for h in 0..heads {
                let x = &mut want[(t * heads + h) * d..(t * heads + h + 1) * d];
                for i in 0..r / 2 {
                    let (i1, i2) = if neox {
                        (i, i + r / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x1, x2) = (x[i1], x[i2]);
                    let (c, s) = (cs[i], cs[r / 2 + i]);
                    x[i1] = x1 * c - x2 * s;
                    x[i2] = x2 * c + x1 * s;
                }
            }
        }
        on_each_isa(|isa| {
            // in place (q and k), then into a cache (k), whose pass-through part is copied
            let mut q = src.clone();
            let mut k = src.clone();
            let mut kc = vec![f32::NAN; tokens * heads * d];
            let mut vc = vec![f32::NAN; tokens * heads * d];
            let slots = [2i32, 0, 1];
            let mut a = RopeArgs {
                tokens,
                head_dim: d,
                rotary_dim: r,
                is_neox: neox,
                dtype: DType::F32,
                positions: positions.as_ptr() as usize,
                cos_sin: cos_sin.as_ptr() as usize,
                max_positions: max_pos,
                q: q.as_mut_ptr() as usize,
                q_stride: heads * d,
                q_heads: heads,
                k: k.as_mut_ptr() as usize,
                k_stride: heads * d,
                k_heads: heads,
                cache: None,
                threads: 1,
            };
            unsafe { rotary_embedding(&a) }.unwrap();
            assert_eq!(q, want, "{isa} neox={neox}: q");
            assert_eq!(k, want, "{isa} neox={neox}: k");
            let k2 = src.clone();
            a.k = k2.as_ptr() as usize;
            a.q_heads = 0;
            a.cache = Some(CacheArgs {
                v: v.as_ptr() as usize,
                v_stride: heads * d,
                slots: slots.as_ptr() as usize,
                k_cache: kc.as_mut_ptr() as usize,
                v_cache: vc.as_mut_ptr() as usize,
                num_slots: tokens,
                dtype: DType::F32,
            });
            unsafe { rotary_embedding(&a) }.unwrap();
            for t in 0..tokens {
                let row = slots[t] as usize * heads * d;
                assert_eq!(
                    &kc[row..row + heads * d],
                    &want[t * heads * d..(t + 1) * heads * d]
                );
                assert_eq!(
                    &vc[row..row + heads * d],
                    &v[t * heads * d..(t + 1) * heads * d]
                );
            }
            a.rotary_dim = d + 2;
            assert!(unsafe { rotary_embedding(&a) }.is_err());
        });
    }
}
