// Gated activations: x [T, 2I] = [gate | up] -> out [T, I] = T(float(T(act(gate))) * float(up)),
// the rounding steps of the reference (act(gate) * up in the model dtype):
//   silu_and_mul_*       SwiGLU (Llama, Qwen, Mistral, Phi): act = silu(g) = g / (1 + e^-g);
//   gelu_tanh_and_mul_*  GeGLU (Gemma): act = gelu(g, approximate="tanh")
//                        = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), as PyTorch computes it.
//
// Thread mapping: blockIdx.x = token row; blockIdx.y splits the row into chunks of
// blockDim.x * Vec<T>::N elements (when I is large); each thread handles one 16-byte vector of gate
// and the matching vector of up (or, when `vec` == 0, strides over single elements).
// `vec` == 1 requires I % Vec<T>::N == 0 and 16-byte aligned pointers (checked by the wrapper).
#include "common.cuh"

namespace lmrs {

struct Silu {
  static __device__ __forceinline__ float apply(float g) { return g / (1.0f + expf(-g)); }
};

struct GeluTanh {
  static __device__ __forceinline__ float apply(float g) {
    const float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
    const float inner = kBeta * (g + 0.044715f * g * g * g);
    return 0.5f * g * (1.0f + tanhf(inner));
  }
};

template <typename T, typename Act>
__device__ __forceinline__ void gated_and_mul_impl(T* __restrict__ out, const T* __restrict__ x,
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
      for (int k = 0; k < N; ++k) g[k] = round_to<T>(Act::apply(g[k])) * u[k];
      store_vec(o + i, g);
    }
  } else {
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inter; i += gridDim.y * blockDim.x)
      o[i] = from_float<T>(round_to<T>(Act::apply(to_float(gate[i]))) * to_float(up[i]));
  }
}

}  // namespace lmrs

#define LMRS_ACT_ENTRY(SUF, T)                                                                 \
  extern "C" __global__ void __launch_bounds__(256)                                            \
      silu_and_mul_##SUF(T* out, const T* x, int inter, int vec) {                             \
    lmrs::gated_and_mul_impl<T, lmrs::Silu>(out, x, inter, vec);                               \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(256)                                            \
      gelu_tanh_and_mul_##SUF(T* out, const T* x, int inter, int vec) {                        \
    lmrs::gated_and_mul_impl<T, lmrs::GeluTanh>(out, x, inter, vec);                           \
  }

LMRS_FOR_EACH_DTYPE(LMRS_ACT_ENTRY)
