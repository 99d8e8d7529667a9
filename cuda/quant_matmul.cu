// Weight-only quantized matrix products: y [M, N] = x [M, K] @ W^T (+ bias), with W [N, K] kept
// quantized in groups of 32 input features and dequantized in registers:
//
//   Q4 (exact for GGUF Q4_0 and Q4_1): qweight uint8 [N, K/2]; group g of row n is the 16 bytes
//      qweight[n, 16g .. 16g + 16); byte j holds feature 32g + j in its low nibble and feature
//      32g + 16 + j in its high nibble (GGUF's own order); scales and mins float16 [N, K/32]:
//      w = scale * q + min, q in 0..15 (Q4_0: min = -8 scale).
//   Q8 (exact for GGUF Q8_0): qweight int8 [N, K]; scales float16 [N, K/32]: w = scale * q.
//
// x, y (and the optional bias [N]) are float16 or bfloat16, all the same; float32 arithmetic.
// Layout and host packing: python/lmrs/kernels/cuda_quant.py.
//
// quant_gemv_{q4,q8}_{f16,bf16}_m{1,2,4,8}: the small-M (decode) path, memory-bound. A CTA of 128
// threads owns kRows = 4 output columns n for every row m < M (<= MT, the compiled bound); thread t
// walks the groups t, t + 128, ... of K: it loads the 4 columns' codes of the group (one 16-byte
// load per column for Q4, two for Q8, consecutive threads on consecutive groups: coalesced), and
// for each 8-feature slice the matching 8 activations of each m (16 bytes; x is small and stays in
// L1/L2). Codes become exact floats with the 2^23 magic-number trick (a byte permute and a
// subtraction, no conversion instructions). MT <= 2: per group sq[m][n] = sum q x and (Q4)
// sx[m] = sum x, then acc += scale * sq + min * sx (one FMA per weight and m). MT >= 4: each
// weight is dequantized once (w = scale * q + min) and then takes one FMA per m (fewer live
// registers). The 128 partial sums are reduced with warp shuffles and shared memory at the end.
//
// quant_dequant_{q4,q8}_{f16,bf16}: W -> [N, K] in the activation dtype (one thread per group,
// grid-stride). The wrapper uses it above M = 8: dequantize, then a cuBLAS GEMM (large M is
// compute-bound: tensor cores beat any in-register dequantizing SIMT kernel there).
//
// Alignment (checked by the wrapper): qweight rows, x rows and dequantized rows 16-byte aligned.
#include "common.cuh"

namespace lmrs {

constexpr int kQuantThreads = 128;
constexpr int kQuantRows = 4;  // output columns n per GEMV CTA

// Byte i (0..3) of w as an exact float (0..255): the bits 0x4B0000bb are 2^23 + b.
__device__ __forceinline__ float byte_as_float(unsigned w, int i) {
  return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440 + i)) - 8388608.f;
}

// Codes of features 8c .. 8c + 7 of a group, as exact floats.
// Q4: c = 0, 1 are the low nibbles of bytes 8c .. 8c + 7, c = 2, 3 the high nibbles of bytes
// 8(c - 2) ..; `g` holds the group's 16 bytes.
__device__ __forceinline__ void codes8_q4(const uint4& g, int c, float* q) {
  const unsigned w0 = (c & 1) ? g.z : g.x, w1 = (c & 1) ? g.w : g.y;
  const unsigned a = ((c & 2) ? w0 >> 4 : w0) & 0x0F0F0F0Fu;
  const unsigned b = ((c & 2) ? w1 >> 4 : w1) & 0x0F0F0F0Fu;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[i] = byte_as_float(a, i);
    q[4 + i] = byte_as_float(b, i);
  }
}

// Q8: signed bytes 8c .. 8c + 7 of the group's 32 bytes (`lo` = bytes 0..15, `hi` = 16..31).
__device__ __forceinline__ void codes8_q8(const uint4& lo, const uint4& hi, int c, float* q) {
  const uint4& h = c < 2 ? lo : hi;
  // flip the sign bits: byte b ^ 0x80 = q + 128 as an unsigned byte
  const unsigned a = ((c & 1) ? h.z : h.x) ^ 0x80808080u;
  const unsigned b = ((c & 1) ? h.w : h.y) ^ 0x80808080u;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[i] = byte_as_float(a, i) - 128.f;
    q[4 + i] = byte_as_float(b, i) - 128.f;
  }
}

template <typename T, bool Q4, int MT>
__device__ __forceinline__ void quant_gemv_impl(T* __restrict__ out, i64 out_stride,
                                                const T* __restrict__ x, i64 x_stride,
                                                const unsigned char* __restrict__ qweight,
                                                const __half* __restrict__ scales,
                                                const __half* __restrict__ mins,
                                                const T* __restrict__ bias, int m, int n, int k) {
  constexpr int R = kQuantRows;
  constexpr int NW = kQuantThreads / 32;
  __shared__ float s_red[NW][MT * R];
  const int groups = k >> 5;
  const int n0 = blockIdx.x * R;
  const i64 row_bytes = Q4 ? (i64)(k >> 1) : (i64)k;

  float acc[MT][R];
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[mm][r] = 0.f;

  for (int g = threadIdx.x; g < groups; g += kQuantThreads) {
    uint4 lo[R], hi[R];
    float sc[R], mn[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = n0 + r;
      lo[r] = zero16();
      hi[r] = zero16();
      sc[r] = 0.f;
      mn[r] = 0.f;
      if (row < n) {
        const unsigned char* p = qweight + (i64)row * row_bytes + (i64)g * (Q4 ? 16 : 32);
        lo[r] = ld16(p);
        if (!Q4) hi[r] = ld16(p + 16);
        sc[r] = __half2float(scales[(i64)row * groups + g]);
        if (Q4) mn[r] = __half2float(mins[(i64)row * groups + g]);
      }
    }
    const T* xg = x + g * 32;
    if constexpr (MT <= 2) {
      // Few rows of x: sum q * x per group with the exact codes, scale once per group.
      float sq[MT][R], sx[MT];
#pragma unroll
      for (int mm = 0; mm < MT; ++mm) {
        sx[mm] = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) sq[mm][r] = 0.f;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float xf[MT][8];
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          if (mm < m) {
            load_vec(xg + (i64)mm * x_stride + c * 8, xf[mm]);
          } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) xf[mm][j] = 0.f;
          }
          if (Q4) {
#pragma unroll
            for (int j = 0; j < 8; ++j) sx[mm] += xf[mm][j];
          }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float q[8];
          if (Q4) codes8_q4(lo[r], c, q);
          else codes8_q8(lo[r], hi[r], c, q);
#pragma unroll
          for (int mm = 0; mm < MT; ++mm)
#pragma unroll
            for (int j = 0; j < 8; ++j) sq[mm][r] = fmaf(q[j], xf[mm][j], sq[mm][r]);
        }
      }
#pragma unroll
      for (int mm = 0; mm < MT; ++mm)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[mm][r] = fmaf(sc[r], sq[mm][r], acc[mm][r]);
          if (Q4) acc[mm][r] = fmaf(mn[r], sx[mm], acc[mm][r]);
        }
    } else {
      // More rows of x: dequantize 8 weights of each column once, then one FMA per row of x
      // (fewer registers than per-group partial sums for every (m, n)).
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float w[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (Q4) codes8_q4(lo[r], c, w[r]);
          else codes8_q8(lo[r], hi[r], c, w[r]);
#pragma unroll
          for (int j = 0; j < 8; ++j) w[r][j] = Q4 ? fmaf(sc[r], w[r][j], mn[r]) : sc[r] * w[r][j];
        }
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          if (mm < m) {
            float xf[8];
            load_vec(xg + (i64)mm * x_stride + c * 8, xf);
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[mm][r] = fmaf(w[r][j], xf[j], acc[mm][r]);
          }
        }
      }
    }
  }

  // Sum the 128 threads' partial sums: within each warp, then across warps in shared memory.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float v = group_sum<32>(acc[mm][r]);
      if (lane == 0) s_red[warp][mm * R + r] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < MT * R; i += kQuantThreads) {
    const int mm = i / R, r = i - mm * R;
    const int col = n0 + r;
    if (mm >= m || col >= n) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) v += s_red[w][i];
    if (bias != nullptr) v += to_float(bias[col]);
    out[(i64)mm * out_stride + col] = from_float<T>(v);
  }
}

// W [N, K] -> out [N, K] (dtype T, contiguous): one thread per group of 32 features.
template <typename T, bool Q4>
__device__ __forceinline__ void quant_dequant_impl(T* __restrict__ out,
                                                   const unsigned char* __restrict__ qweight,
                                                   const __half* __restrict__ scales,
                                                   const __half* __restrict__ mins, int n, int k) {
  static_assert(sizeof(T) == 2, "16-bit outputs only");
  const int groups = k >> 5;
  const i64 total = (i64)n * groups;
  for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += (i64)gridDim.x * blockDim.x) {
    const i64 row = item / groups;
    const int g = (int)(item - row * groups);
    const unsigned char* p = qweight + row * (Q4 ? (i64)(k >> 1) : (i64)k) + (i64)g * (Q4 ? 16 : 32);
    const uint4 lo = ld16(p);
    const uint4 hi = Q4 ? zero16() : ld16(p + 16);
    const float sc = __half2float(scales[item]);
    const float mn = Q4 ? __half2float(mins[item]) : 0.f;
    T* dst = out + row * k + g * 32;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float q[8];
      if (Q4) codes8_q4(lo, c, q);
      else codes8_q8(lo, hi, c, q);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[j] = Q4 ? fmaf(sc, q[j], mn) : sc * q[j];
      store_vec(dst + c * 8, q);  // 8 16-bit elements
    }
  }
}

}  // namespace lmrs

#define LMRS_QGEMV_ENTRY(SUF, T, FMT, Q4, MT)                                                       \
  extern "C" __global__ void __launch_bounds__(lmrs::kQuantThreads, 4)                            \
      quant_gemv_##FMT##_##SUF##_m##MT(T* out, long long out_stride, const T* x,                  \
                                       long long x_stride, const unsigned char* qweight,          \
                                       const __half* scales, const __half* mins, const T* bias,   \
                                       int m, int n, int k) {                                     \
    lmrs::quant_gemv_impl<T, Q4, MT>(out, out_stride, x, x_stride, qweight, scales, mins, bias,   \
                                     m, n, k);                                                    \
  }

#define LMRS_QUANT_ENTRY_FMT(SUF, T, FMT, Q4)                                                      \
  LMRS_QGEMV_ENTRY(SUF, T, FMT, Q4, 1)                                                             \
  LMRS_QGEMV_ENTRY(SUF, T, FMT, Q4, 2)                                                             \
  LMRS_QGEMV_ENTRY(SUF, T, FMT, Q4, 4)                                                             \
  LMRS_QGEMV_ENTRY(SUF, T, FMT, Q4, 8)                                                             \
  extern "C" __global__ void __launch_bounds__(256) quant_dequant_##FMT##_##SUF(                  \
      T* out, const unsigned char* qweight, const __half* scales, const __half* mins, int n,     \
      int k) {                                                                                     \
    lmrs::quant_dequant_impl<T, Q4>(out, qweight, scales, mins, n, k);                           \
  }

#define LMRS_QUANT_ENTRY(SUF, T)              \
  LMRS_QUANT_ENTRY_FMT(SUF, T, q4, true)      \
  LMRS_QUANT_ENTRY_FMT(SUF, T, q8, false)

LMRS_QUANT_ENTRY(f16, __half)
LMRS_QUANT_ENTRY(bf16, __nv_bfloat16)
