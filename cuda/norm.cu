// RMSNorm and fused residual-add + RMSNorm (Llama-style), matching reference.rms_norm /
// reference.fused_add_rms_norm in their rounding steps:
//   rms_norm:            out = TO( (x * rsqrt(mean(x^2) + eps)) * w )     (float32 math, one rounding)
//   fused_add_rms_norm:  residual = TR(residual + x)  (in place);  out = rms_norm(residual)
// Operands may have different dtypes (run-time codes, see common.cuh): e.g. a float32 residual
// stream with bfloat16 activations, weights and output, or a float32 output of the final norm.
//
// Thread mapping (both kernels): one thread block per row (token); blockDim.x threads (a multiple
// of 32, chosen by the wrapper to cover the row once in 8-element chunks where possible) stride
// over the row. Pass 1 accumulates the sum of squares in float32 and reduces it over the block;
// pass 2 re-reads the row (an L1/L2 hit) and writes the normalized output. Rows are contiguous:
// row r starts at element r * hidden of every operand.
//
// `vec` (uniform per launch): 1 when hidden % 8 == 0 and every pointer is 16-byte aligned
// (checked by the wrapper): 8-element chunks with 16-byte loads/stores; 0: one element at a time.
#include "common.cuh"

namespace lmrs {

__device__ __forceinline__ void rms_norm_impl(void* __restrict__ out, const void* __restrict__ x,
                                              const void* __restrict__ w, float eps, int hidden, int vec,
                                              int out_dt, int x_dt, int w_dt) {
  __shared__ float scratch[32];
  const i64 base = (i64)blockIdx.x * hidden;

  float ss = 0.f;
  if (vec) {
    for (int i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
      float f[8];
      load8_dt(x, base + i, x_dt, f);
#pragma unroll
      for (int k = 0; k < 8; ++k) ss += f[k] * f[k];
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float f = load_dt(x, base + i, x_dt);
      ss += f * f;
    }
  }
  ss = block_sum(ss, scratch);
  const float rinv = 1.0f / sqrtf(ss / (float)hidden + eps);

  if (vec) {
    for (int i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
      float f[8], g[8];
      load8_dt(x, base + i, x_dt, f);
      load8_dt(w, i, w_dt, g);
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] = (f[k] * rinv) * g[k];
      store8_dt(out, base + i, out_dt, f);
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
      store_dt(out, base + i, out_dt, (load_dt(x, base + i, x_dt) * rinv) * load_dt(w, i, w_dt));
  }
}

// Each thread re-reads in pass 2 only the residual elements it wrote itself in pass 1, so the
// write -> read order needs no extra barrier.
__device__ __forceinline__ void fused_add_rms_norm_impl(void* __restrict__ out, const void* __restrict__ x,
                                                        void* __restrict__ residual,
                                                        const void* __restrict__ w, float eps, int hidden,
                                                        int vec, int out_dt, int x_dt, int r_dt, int w_dt) {
  __shared__ float scratch[32];
  const i64 base = (i64)blockIdx.x * hidden;

  float ss = 0.f;
  if (vec) {
    for (int i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
      float a[8], b[8];
      load8_dt(x, base + i, x_dt, a);
      load8_dt(residual, base + i, r_dt, b);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        b[k] = round_dt(b[k] + a[k], r_dt);
        ss += b[k] * b[k];
      }
      store8_dt(residual, base + i, r_dt, b);
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float b = round_dt(load_dt(residual, base + i, r_dt) + load_dt(x, base + i, x_dt), r_dt);
      store_dt(residual, base + i, r_dt, b);
      ss += b * b;
    }
  }
  ss = block_sum(ss, scratch);
  const float rinv = 1.0f / sqrtf(ss / (float)hidden + eps);

  if (vec) {
    for (int i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
      float f[8], g[8];
      load8_dt(residual, base + i, r_dt, f);
      load8_dt(w, i, w_dt, g);
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] = (f[k] * rinv) * g[k];
      store8_dt(out, base + i, out_dt, f);
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
      store_dt(out, base + i, out_dt, (load_dt(residual, base + i, r_dt) * rinv) * load_dt(w, i, w_dt));
  }
}

}  // namespace lmrs

extern "C" __global__ void __launch_bounds__(1024)
    rms_norm(void* out, const void* x, const void* w, float eps, int hidden, int vec, int out_dt, int x_dt,
             int w_dt) {
  lmrs::rms_norm_impl(out, x, w, eps, hidden, vec, out_dt, x_dt, w_dt);
}

extern "C" __global__ void __launch_bounds__(1024)
    fused_add_rms_norm(void* out, const void* x, void* residual, const void* w, float eps, int hidden, int vec,
                       int out_dt, int x_dt, int r_dt, int w_dt) {
  lmrs::fused_add_rms_norm_impl(out, x, residual, w, eps, hidden, vec, out_dt, x_dt, r_dt, w_dt);
}
