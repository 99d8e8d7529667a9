// Shared helpers for the lmrs kernels: dtype conversion, 16-byte vector load/store, warp
// reductions, fast exp2. Compiled by NVRTC (see python/lmrs/kernels/compile_check.py): only
// cuda_fp16.h / cuda_bf16.h are included, no C++ standard library headers.
//
// Conventions used by every kernel file:
// - Element types: float, __half, __nv_bfloat16. Math is always done in float32.
// - Every entry point is `extern "C"` with a dtype suffix (_f32, _f16, _bf16) so the Python side
//   can look kernels up by plain name.
// - Offsets that can exceed 2^31 elements (anything indexed by a KV block id or a token row times
//   a row stride) are computed in 64-bit (`i64`).
// - "16-byte vector" loads/stores require the address to be 16-byte aligned; the Python wrapper
//   checks base pointers and strides (see cuda_checks.py) before choosing a vectorized path.
#pragma once

#ifdef LMRS_HOST_EMULATION
#include "host_emulation.h"  // CPU tests only (tests/test_cuda_emulated.py)
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define LMRS_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif

namespace lmrs {

typedef long long i64;

// Elements of T in one 16-byte vector.
template <typename T>
struct Vec {
  static constexpr int N = 16 / sizeof(T);
};

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ---------------------------------------------------------------------------------------------
// Scalar conversion.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Round a float to T's precision and back (models PyTorch's intermediate `.to(dtype)`).
template <typename T>
__device__ __forceinline__ float round_to(float x) { return to_float(from_float<T>(x)); }

// ---------------------------------------------------------------------------------------------
// Two packed 16-bit values <-> two floats (element 0 in the low half, little endian).
__device__ __forceinline__ void unpack2(unsigned int w, float& a, float& b, const __half*) {
  a = __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
  b = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}
__device__ __forceinline__ void unpack2(unsigned int w, float& a, float& b, const __nv_bfloat16*) {
  a = __uint_as_float(w << 16);  // bf16 -> f32 is exact: the bits are the high half of a float
  b = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ unsigned int pack2(float a, float b, const __half*) {
  return (unsigned int)__half_as_ushort(__float2half_rn(a)) |
         ((unsigned int)__half_as_ushort(__float2half_rn(b)) << 16);
}
__device__ __forceinline__ unsigned int pack2(float a, float b, const __nv_bfloat16*) {
  return (unsigned int)__bfloat16_as_ushort(__float2bfloat16_rn(a)) |
         ((unsigned int)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16);
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors. A raw `uint4` is loaded first (one LDG.128) and converted afterwards, so the
// load can be issued early and the conversion done when the data is needed.
__device__ __forceinline__ uint4 ld16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void st16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }
__device__ __forceinline__ uint4 zero16() { return make_uint4(0u, 0u, 0u, 0u); }

// uint4 holding Vec<T>::N elements of T -> floats.
template <typename T>
__device__ __forceinline__ void unpack16(uint4 u, float* f) {
  const T* tag = nullptr;
  unpack2(u.x, f[0], f[1], tag);
  unpack2(u.y, f[2], f[3], tag);
  unpack2(u.z, f[4], f[5], tag);
  unpack2(u.w, f[6], f[7], tag);
}
template <>
__device__ __forceinline__ void unpack16<float>(uint4 u, float* f) {
  f[0] = __uint_as_float(u.x);
  f[1] = __uint_as_float(u.y);
  f[2] = __uint_as_float(u.z);
  f[3] = __uint_as_float(u.w);
}

template <typename T>
__device__ __forceinline__ uint4 pack16(const float* f) {
  const T* tag = nullptr;
  return make_uint4(pack2(f[0], f[1], tag), pack2(f[2], f[3], tag), pack2(f[4], f[5], tag),
                    pack2(f[6], f[7], tag));
}
template <>
__device__ __forceinline__ uint4 pack16<float>(const float* f) {
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                    __float_as_uint(f[3]));
}

// Raw loads of B = 8 or 16 bytes (B / sizeof(T) elements), kept as 32-bit words until unpacked.
template <int B>
struct Raw {
  unsigned int w[B / 4];
};
template <int B>
__device__ __forceinline__ Raw<B> ld_raw(const void* p);
template <>
__device__ __forceinline__ Raw<16> ld_raw<16>(const void* p) {
  const uint4 u = ld16(p);
  return Raw<16>{{u.x, u.y, u.z, u.w}};
}
template <>
__device__ __forceinline__ Raw<8> ld_raw<8>(const void* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return Raw<8>{{u.x, u.y}};
}
template <int B>
__device__ __forceinline__ Raw<B> zero_raw() {
  Raw<B> r;
#pragma unroll
  for (int i = 0; i < B / 4; ++i) r.w[i] = 0u;
  return r;
}
template <typename T, int B>
__device__ __forceinline__ void unpack_raw(const Raw<B>& r, float* f) {
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < B / 4; ++i) f[i] = __uint_as_float(r.w[i]);
  } else {
    const T* tag = nullptr;
#pragma unroll
    for (int i = 0; i < B / 4; ++i) unpack2(r.w[i], f[2 * i], f[2 * i + 1], tag);
  }
}

// Load Vec<T>::N consecutive elements (16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float* f) { unpack16<T>(ld16(p), f); }

// Store Vec<T>::N floats as consecutive elements of T (16-byte aligned).
template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float* f) { st16(p, pack16<T>(f)); }

// Store 4 floats as 4 consecutive T (aligned to 4 * sizeof(T) bytes).
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__half* p, float4 v) {
  const __half* tag = nullptr;
  *reinterpret_cast<uint2*>(p) = make_uint2(pack2(v.x, v.y, tag), pack2(v.z, v.w, tag));
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  const __nv_bfloat16* tag = nullptr;
  *reinterpret_cast<uint2*>(p) = make_uint2(pack2(v.x, v.y, tag), pack2(v.z, v.w, tag));
}

// ---------------------------------------------------------------------------------------------
// Run-time dtypes, for kernels whose operands may each have a different dtype (the norms, with a
// float32 residual stream next to 16-bit activations). The code is uniform over a launch, so the
// switches never diverge. Codes match lmrs.kernels.cuda_checks.DTYPE_CODES.
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

__device__ __forceinline__ float load_dt(const void* p, i64 i, int dt) {
  if (dt == kF32) return static_cast<const float*>(p)[i];
  if (dt == kF16) return to_float(static_cast<const __half*>(p)[i]);
  return to_float(static_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ void store_dt(void* p, i64 i, int dt, float v) {
  if (dt == kF32) static_cast<float*>(p)[i] = v;
  else if (dt == kF16) static_cast<__half*>(p)[i] = from_float<__half>(v);
  else static_cast<__nv_bfloat16*>(p)[i] = from_float<__nv_bfloat16>(v);
}
// v rounded to dtype dt and back.
__device__ __forceinline__ float round_dt(float v, int dt) {
  if (dt == kF16) return round_to<__half>(v);
  if (dt == kBF16) return round_to<__nv_bfloat16>(v);
  return v;
}
// 8 consecutive elements starting at element i (i % 8 == 0, base 16-byte aligned): one 16-byte
// load for 16-bit dtypes, two for float32.
__device__ __forceinline__ void load8_dt(const void* p, i64 i, int dt, float* f) {
  if (dt == kF32) {
    const float* q = static_cast<const float*>(p) + i;
    unpack16<float>(ld16(q), f);
    unpack16<float>(ld16(q + 4), f + 4);
  } else if (dt == kF16) {
    unpack16<__half>(ld16(static_cast<const __half*>(p) + i), f);
  } else {
    unpack16<__nv_bfloat16>(ld16(static_cast<const __nv_bfloat16*>(p) + i), f);
  }
}
__device__ __forceinline__ void store8_dt(void* p, i64 i, int dt, const float* f) {
  if (dt == kF32) {
    float* q = static_cast<float*>(p) + i;
    st16(q, pack16<float>(f));
    st16(q + 4, pack16<float>(f + 4));
  } else if (dt == kF16) {
    st16(static_cast<__half*>(p) + i, pack16<__half>(f));
  } else {
    st16(static_cast<__nv_bfloat16*>(p) + i, pack16<__nv_bfloat16>(f));
  }
}

// ---------------------------------------------------------------------------------------------
// Warp reductions over aligned groups of WIDTH lanes (WIDTH a power of two <= 32). All 32 lanes
// of the warp must execute the call (full mask).
template <int WIDTH>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int WIDTH>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole thread block (blockDim.x a multiple of 32, <= 1024). `scratch` holds 32
// floats of shared memory. Every thread gets the result. Contains __syncthreads().
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = group_sum<32>(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? scratch[lane] : 0.f;
  return group_sum<32>(t);
}

// 2^x with the MUFU unit (max relative error 2^-22; ex2(-inf) == +0). Softmax is computed in the
// log2 domain: scores are pre-multiplied by scale * log2(e).
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef LMRS_HOST_EMULATION
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// Gemma 2's attention-score soft-cap in the log2 domain: for a score s (already multiplied by
// the softmax scale, natural units), cap * tanh(s / cap) * log2(e), with `inv2_log2` =
// 2 * log2(e) / cap and `cap_log2` = cap * log2(e). tanh(x) = 1 - 2 / (1 + e^2x) with the MUFU
// exp2 and a fast division: absolute error ~2e-7 (relative to the cap), e^2x = inf gives 1 and
// e^2x = 0 gives -1. Few registers, so the kernels' default path keeps its occupancy.
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float soft_cap_log2(float s, float inv2_log2, float cap_log2) {
  const float e = fast_exp2(s * inv2_log2);
  return cap_log2 * (1.0f - __fdividef(2.0f, 1.0f + e));
}

// exp2(x - m) for online softmax where the running max m may still be -inf (nothing seen yet):
// then every x is -inf too and the weight must be 0, not NaN.
__device__ __forceinline__ float safe_max_ref(float m) { return m == neg_inf() ? 0.f : m; }

}  // namespace lmrs

// Entry point helpers: one `extern "C"` kernel per dtype.
#define LMRS_FOR_EACH_DTYPE(X) \
  X(f32, float)                \
  X(f16, __half)               \
  X(bf16, __nv_bfloat16)
