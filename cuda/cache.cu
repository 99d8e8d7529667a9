// reshape_and_cache: write this step's key/value [T, Hk, D] into the paged KV cache
// [num_blocks, block_size, Hk, D] ("NHD") at flat slots slot_mapping[t] = block * block_size +
// offset; slots < 0 (padding) are skipped, and so are slots >= num_blocks * block_size (a
// corrupt plan must not write outside the cache).
//
// key/value rows may be strided (views into a fused qkv projection): token t's heads start at
// key + t * key_stride and are contiguous (Hk * D elements). The cache is contiguous, so slot s
// starts at s * Hk * D (64-bit: slot * row can exceed 2^31 for large caches).
//
// Thread mapping: a flat grid-stride loop over T * 2 * R work items, R = Hk * D / Vec<T>::N
// 16-byte vectors per token row; item -> (token, k-or-v, vector). Consecutive threads copy
// consecutive vectors of one row, so reads and writes are coalesced. Requires Hk * D to be a
// multiple of Vec<T>::N and 16-byte aligned rows (checked by the wrapper; D is 64 or 128).
#include "common.cuh"

namespace lmrs {

template <typename T>
__device__ __forceinline__ void reshape_and_cache_impl(const T* __restrict__ key, i64 key_stride,
                                                       const T* __restrict__ value, i64 value_stride,
                                                       T* __restrict__ k_cache, T* __restrict__ v_cache,
                                                       const int* __restrict__ slot_mapping,
                                                       int num_tokens, int row_elems, i64 num_slots) {
  constexpr int N = Vec<T>::N;
  const int vecs = row_elems / N;  // 16-byte vectors per token row
  const i64 total = (i64)num_tokens * 2 * vecs;
  for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += (i64)gridDim.x * blockDim.x) {
    const i64 tok = item / (2 * vecs);
    const int rem = (int)(item - tok * 2 * vecs);
    const int is_v = rem >= vecs;
    const int v = is_v ? rem - vecs : rem;
    const i64 slot = slot_mapping[tok];
    if (slot < 0 || slot >= num_slots) continue;  // padding (or out of range: never write)
    const T* src = is_v ? value + tok * value_stride : key + tok * key_stride;
    T* dst = (is_v ? v_cache : k_cache) + slot * row_elems;
    st16(dst + v * N, ld16(src + v * N));
  }
}

}  // namespace lmrs

#define LMRS_CACHE_ENTRY(SUF, T)                                                                  \
  extern "C" __global__ void __launch_bounds__(256) reshape_and_cache_##SUF(                      \
      const T* key, long long key_stride, const T* value, long long value_stride, T* k_cache,     \
      T* v_cache, const int* slot_mapping, int num_tokens, int row_elems, long long num_slots) {                    \
    lmrs::reshape_and_cache_impl<T>(key, key_stride, value, value_stride, k_cache, v_cache,       \
                                    slot_mapping, num_tokens, row_elems, num_slots);                         \
  }

LMRS_FOR_EACH_DTYPE(LMRS_CACHE_ENTRY)
