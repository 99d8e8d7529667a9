//! Storage element types (float32, [`Bf16`], [`F16`]): exact conversions to and from float32
//! (rounding to nearest even, like torch) and loads/stores of 16 lanes through an [`Isa`].

use super::simd::{Isa, LANES};

/// bfloat16 storage (the upper half of a float32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// IEEE half-precision storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Round to nearest even, NaN -> quiet NaN (as c10::BFloat16).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            let (mut e, mut m) = (113u32, man);
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// Round to nearest even (subnormals, overflow to infinity, NaN kept).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 112;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1u32 << shift) - 1);
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

/// A storage element type: float32, bfloat16 or float16.
pub trait Elem: Copy + Send + Sync + 'static {
    unsafe fn load<S: Isa>(p: *const Self) -> S::V;
    unsafe fn load_n<S: Isa>(p: *const Self, n: usize) -> S::V;
    unsafe fn store<S: Isa>(p: *mut Self, v: S::V);
    unsafe fn store_n<S: Isa>(p: *mut Self, v: S::V, n: usize);
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;

    /// The first `n` elements (all 16 when n >= 16), the rest 0.
    #[inline(always)]
    unsafe fn load_upto<S: Isa>(p: *const Self, n: usize) -> S::V {
        if n >= LANES {
            Self::load::<S>(p)
        } else {
            Self::load_n::<S>(p, n)
        }
    }
    /// Store the first `n` lanes (all 16 when n >= 16).
    #[inline(always)]
    unsafe fn store_upto<S: Isa>(p: *mut Self, v: S::V, n: usize) {
        if n >= LANES {
            Self::store::<S>(p, v)
        } else {
            Self::store_n::<S>(p, v, n)
        }
    }
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<S: Isa>(p: *const Self) -> S::V {
        S::load_f32(p)
    }
    #[inline(always)]
    unsafe fn load_n<S: Isa>(p: *const Self, n: usize) -> S::V {
        S::load_f32_n(p, n)
    }
    #[inline(always)]
    unsafe fn store<S: Isa>(p: *mut Self, v: S::V) {
        S::store_f32(p, v)
    }
    #[inline(always)]
    unsafe fn store_n<S: Isa>(p: *mut Self, v: S::V, n: usize) {
        S::store_f32_n(p, v, n)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Elem for Bf16 {
    #[inline(always)]
    unsafe fn load<S: Isa>(p: *const Self) -> S::V {
        S::load_bf16(p as *const u16)
    }
    #[inline(always)]
    unsafe fn load_n<S: Isa>(p: *const Self, n: usize) -> S::V {
        S::load_bf16_n(p as *const u16, n)
    }
    #[inline(always)]
    unsafe fn store<S: Isa>(p: *mut Self, v: S::V) {
        S::store_bf16(p as *mut u16, v)
    }
    #[inline(always)]
    unsafe fn store_n<S: Isa>(p: *mut Self, v: S::V, n: usize) {
        S::store_bf16_n(p as *mut u16, v, n)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16_to_f32(self.0)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        Bf16(f32_to_bf16(x))
    }
}

impl Elem for F16 {
    #[inline(always)]
    unsafe fn load<S: Isa>(p: *const Self) -> S::V {
        S::load_f16(p as *const u16)
    }
    #[inline(always)]
    unsafe fn load_n<S: Isa>(p: *const Self, n: usize) -> S::V {
        S::load_f16_n(p as *const u16, n)
    }
    #[inline(always)]
    unsafe fn store<S: Isa>(p: *mut Self, v: S::V) {
        S::store_f16(p as *mut u16, v)
    }
    #[inline(always)]
    unsafe fn store_n<S: Isa>(p: *mut Self, v: S::V, n: usize) {
        S::store_f16_n(p as *mut u16, v, n)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_to_f32(self.0)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        F16(f32_to_f16(x))
    }
}
