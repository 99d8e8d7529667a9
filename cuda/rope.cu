// Rotary position embedding, in place on q [T, Hq*D] and k [T, Hk*D] (rows may be strided, e.g.
// views into a fused qkv projection; within a row the heads are contiguous, D elements each).
//
// Partial rotary: only the first R = rotary_dim (even, <= D) elements of each head rotate; the
// other D - R are left as they are (Phi-3, StableLM). R == D is the usual full rotation.
//
// cos_sin: float32 [max_positions, R], cos in columns [0, R/2), sin in [R/2, R) (reference.
// rope_cos_sin_cache). Positions outside [0, max_positions) leave the token unrotated (the wrapper
// cannot check device-side values without a sync; this keeps the kernel memory-safe).
//
// Layouts: NEOX = 1: Hugging Face rotate_half, element i pairs with i + R/2 (angle i);
//          NEOX = 0: GPT-J adjacent pairs (2i, 2i+1) (angle i).
// Math matches the reference bit for bit in float32: each product and sum rounded separately
// (__fmul_rn / __fadd_rn prevent FMA contraction), then one rounding to T.
//
// Thread mapping: one thread block per token (blockIdx.x); the block's threads stride over the
// (Hq + Hk) * R/2 rotation pairs of that token, q heads first. Consecutive threads take
// consecutive pairs of a head, so loads are coalesced.
#include "common.cuh"

namespace lmrs {

template <typename T, typename P, bool NEOX>
__device__ __forceinline__ void rope_impl(const P* __restrict__ positions, T* __restrict__ q,
                                          i64 q_stride, T* __restrict__ k, i64 k_stride,
                                          const float* __restrict__ cos_sin, int head_dim,
                                          int rotary_dim, int num_q_heads, int num_k_heads,
                                          i64 max_positions) {
  const i64 tok = blockIdx.x;
  const i64 pos = (i64)positions[tok];
  if (pos < 0 || pos >= max_positions) return;
  const int half = rotary_dim >> 1;
  const float* cs = cos_sin + pos * rotary_dim;
  const int pairs = (num_q_heads + num_k_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int head = p / half;
    const int i = p - head * half;
    T* base = head < num_q_heads ? q + tok * q_stride + (i64)head * head_dim
                                 : k + tok * k_stride + (i64)(head - num_q_heads) * head_dim;
    const int i1 = NEOX ? i : 2 * i;
    const int i2 = NEOX ? i + half : 2 * i + 1;
    const float c = cs[i], s = cs[half + i];
    const float x1 = to_float(base[i1]), x2 = to_float(base[i2]);
    const float o1 = __fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, s));
    const float o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
    base[i1] = from_float<T>(o1);
    base[i2] = from_float<T>(o2);
  }
}

}  // namespace lmrs

#define LMRS_ROPE_ENTRY_P(SUF, T, PSUF, P)                                                         \
  extern "C" __global__ void __launch_bounds__(256) rotary_neox_##SUF##_##PSUF(                    \
      const P* positions, T* q, long long q_stride, T* k, long long k_stride,                      \
      const float* cos_sin, int head_dim, int rotary_dim, int num_q_heads, int num_k_heads,        \
      long long max_positions) {                                                                   \
    lmrs::rope_impl<T, P, true>(positions, q, q_stride, k, k_stride, cos_sin, head_dim,            \
                                rotary_dim, num_q_heads, num_k_heads, max_positions);              \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) rotary_gptj_##SUF##_##PSUF(                    \
      const P* positions, T* q, long long q_stride, T* k, long long k_stride,                      \
      const float* cos_sin, int head_dim, int rotary_dim, int num_q_heads, int num_k_heads,        \
      long long max_positions) {                                                                   \
    lmrs::rope_impl<T, P, false>(positions, q, q_stride, k, k_stride, cos_sin, head_dim,           \
                                 rotary_dim, num_q_heads, num_k_heads, max_positions);             \
  }

#define LMRS_ROPE_ENTRY(SUF, T)                  \
  LMRS_ROPE_ENTRY_P(SUF, T, i32, int)            \
  LMRS_ROPE_ENTRY_P(SUF, T, i64, long long)

LMRS_FOR_EACH_DTYPE(LMRS_ROPE_ENTRY)
