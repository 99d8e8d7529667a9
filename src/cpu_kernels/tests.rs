//! Unit tests of the CPU kernels against plain scalar arithmetic, on both instruction sets.
//! (The Python suite `tests/test_cpu_kernels.py` checks them against the PyTorch reference.)

use super::activation::{silu_and_mul, SiluMulArgs};
use super::elem::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use super::norm::{rms_norm, NormArgs};
use super::simd::{avx512_detected, set_force_portable};
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
        let args = SiluMulArgs {
            rows,
            inter,
            x: x.as_ptr() as usize,
            x_stride: 2 * inter,
            out: out.as_mut_ptr() as usize,
            out_stride: inter,
            dtype: DType::BF16,
            threads: 1,
        };
        unsafe { silu_and_mul(&args) }.unwrap();
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
