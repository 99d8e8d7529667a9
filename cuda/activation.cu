// SwiGLU activation: x [T, 2I] = [gate | up] -> out [T, I] = T(float(T(silu(gate))) * float(up)),
// the rounding steps of reference.silu_and_mul (F.silu(gate) * up in the model dtype).
//
// Thread mapping: blockIdx.x = token row; blockIdx.y splits the row into chunks of
// blockDim.x * Vec<T>::N elements (when I is large); each thread handles one 16-byte vector of gate
// and the matching vector of up (or, when `vec` == 0, strides over single elements).
// `vec` == 1 requires I % Vec<T>::N == 0 and 16-byte aligned pointers (checked by the wrapper).
#include "common.cuh"

namespace lmrs {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

template <typename T>
__device__ __forceinline__ void silu_and_mul_impl(T* __restrict__ out, const T* __restrict__ x,
                                                  int inter, int vec) {
  constexpr int N = Vec<T>::N;
  const i64 row = blockIdx.x;
  const T* gate = x + row * 2 * inter;
  const T* up = gate + inter;
  T* o = out + row * inter;
  if (vec) {
    for (int i = (blockIdx.y * blockDim.x + threadIdx.x) * N; i < inter; i += gridDim.y * blockDim.x * N) {
      float g[N], u[N];
      load_vec(gate + i, g);
      load_vec(up + i, u);
#pragma unroll
      for (int k = 0; k < N; ++k) g[k] = round_to<T>(silu(g[k])) * u[k];
      store_vec(o + i, g);
    }
  } else {
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inter; i += gridDim.y * blockDim.x)
      o[i] = from_float<T>(round_to<T>(silu(to_float(gate[i]))) * to_float(up[i]));
  }
}

}  // namespace lmrs

#define LMRS_ACT_ENTRY(SUF, T)                                                                 \
  extern "C" __global__ void __launch_bounds__(256)                                            \
      silu_and_mul_##SUF(T* out, const T* x, int inter, int vec) {                             \
    lmrs::silu_and_mul_impl<T>(out, x, inter, vec);                                            \
  }

LMRS_FOR_EACH_DTYPE(LMRS_ACT_ENTRY)
