// Variable-length causal attention for a batch of prefill chunks (flash-attention style, float32
// on CUDA cores). Row r's queries are tokens [qsl[r], qsl[r+1]) of q [T, Hq, D] at positions
// seq_len[r] - qlen ... seq_len[r] - 1; each attends to keys 0..its position, read through the
// block table from the paged KV cache [num_blocks, block_size, Hk, D] (this chunk's K/V already
// written there by reshape_and_cache), cached prefix included. Matches reference.prefill_attention.
//
// Options: window > 0 (sliding window): a query at position p sees keys p - window < j <= p, and
// a tile starts at the first key its earliest query sees (the blocks before are never read).
// soft_cap > 0 (Gemma 2): q_scale is the plain softmax scale and each score s becomes
// soft_cap * tanh(s / soft_cap) * log2(e); otherwise q_scale = scale * log2(e).
//
// Grid: x = query tile (heaviest, i.e. latest, tiles first), y = row r, z = KV head h.
// GQA packing: a tile is M = 64 "query rows" taken from the row's qlen * group (token, head)
// pairs, token-major: packed p -> token p / group, head h * group + p % group. All query heads of
// a KV head therefore share each K/V tile loaded into shared memory.
//
// Block: 128 threads, tx = tid % 8, ty = tid / 8 (0..15).
//   S = Q K^T on a 64 x 32 tile: thread owns query rows ty + 16 i (i < 4) and key columns
//   tx + 8 j (j < 4); the 8 lanes sharing a row (same ty) are consecutive, so row max/sum use
//   xor-shuffles 1, 2, 4. O += P V: the same rows, and output columns 4 tx + 32 c .. + 3
//   (c < D / 32). Row ownership is identical in both phases, so the online-softmax rescale stays
//   in registers. P goes through shared memory.
// Shared memory (dynamic, float32, rows padded by 4 floats so float4 reads are conflict-free):
//   Qs [64][D+4], Ks [32][D+4], Vs [32][D+4], Ps [64][36]: 44 KB for D = 64, 75 KB for D = 128
//   (the wrapper raises the dynamic shared memory limit above 48 KB). Q is pre-scaled by
//   q_scale (softmax in the log2 domain).
// Alignment: q/out rows, cache rows and D * sizeof(T) are 16-byte aligned (checked by the
// wrapper); out rows are written 4 elements at a time.
#include "common.cuh"

namespace lmrs {

constexpr int kPrefillM = 64;
constexpr int kPrefillN = 32;
constexpr int kPrefillThreads = 128;

template <int D>
struct PrefillSmem {
  static constexpr int DP = D + 4;
  static constexpr int NP = kPrefillN + 4;
  static constexpr int floats = kPrefillM * DP + 2 * kPrefillN * DP + kPrefillM * NP;
  static constexpr int bytes = floats * 4;
};

template <typename T, int D>
__device__ __forceinline__ void prefill_attention_impl(
    T* __restrict__ out, i64 out_stride, const T* __restrict__ q, i64 q_stride,
    const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ block_table, i64 bt_stride, const int* __restrict__ seq_lens,
    const int* __restrict__ query_start_loc, float q_scale, float soft_cap, int window,
    int num_kv_heads, int group, int bs_shift, int num_blocks) {
  constexpr int M = kPrefillM, BN = kPrefillN, NT = kPrefillThreads;
  constexpr int N = Vec<T>::N;
  constexpr int VPR = D / N;  // 16-byte vectors per head row
  constexpr int DP = PrefillSmem<D>::DP, NP = PrefillSmem<D>::NP;
  constexpr int DC = D / 32;  // float4 output chunks per thread
  LMRS_DYNAMIC_SMEM(float4, smem4);
  float* Qs = reinterpret_cast<float*>(smem4);
  float* Ks = Qs + M * DP;
  float* Vs = Ks + BN * DP;
  float* Ps = Vs + BN * DP;

  const int r = blockIdx.y, kvh = blockIdx.z;
  const int q0 = query_start_loc[r];
  const int qlen = query_start_loc[r + 1] - q0;
  const int kv_len = seq_lens[r];
  const int ctx = kv_len - qlen;  // cached prefix length
  const int packed = qlen * group;
  const int p0 = (gridDim.x - 1 - blockIdx.x) * M;
  if (p0 >= packed) return;  // uniform over the block, before any barrier

  const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
  const int hq0 = kvh * group;

  // Load the Q tile (float32, scaled), zeros for rows past the end.
  for (int idx = tid; idx < M * VPR; idx += NT) {
    const int row = idx / VPR, v = idx - row * VPR;
    const int p = p0 + row;
    float f[N];
    if (p < packed) {
      const int t = p / group, g = p - t * group;
      load_vec(q + (i64)(q0 + t) * q_stride + (i64)(hq0 + g) * D + v * N, f);
#pragma unroll
      for (int i = 0; i < N; ++i) f[i] *= q_scale;
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) f[i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < N; i += 4)
      *reinterpret_cast<float4*>(&Qs[row * DP + v * N + i]) = make_float4(f[i], f[i + 1], f[i + 2], f[i + 3]);
  }

  // Each owned row's query position (-1: padding row, everything masked) and first visible key.
  int qpos[4], qlo[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int p = p0 + ty + 16 * i;
    qpos[i] = p < packed ? ctx + p / group : -1;
    qlo[i] = window > 0 ? qpos[i] - window + 1 : 0;
  }
  const int p_last = min(p0 + M, packed) - 1;
  const int kv_end = min(kv_len, ctx + p_last / group + 1);  // keys this tile can see
  const int kv_start = window > 0 ? max(0, ctx + p0 / group - window + 1) : 0;
  const float inv_cap = soft_cap > 0.f ? 2.0f * kLog2e / soft_cap : 0.f;
  const float cap_log2 = soft_cap * kLog2e;

  float m[4], l[4];
  float4 acc[4][DC];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = neg_inf();
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < DC; ++c) acc[i][c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  const i64 tok_stride = (i64)num_kv_heads * D;
  const int* bt = block_table + (i64)r * bt_stride;
  const int bs_mask = (1 << bs_shift) - 1;

  for (int k0 = kv_start; k0 < kv_end; k0 += BN) {
    __syncthreads();  // Qs written (first tile) / previous Ks, Vs, Ps reads done
    for (int idx = tid; idx < BN * VPR; idx += NT) {
      const int j = idx / VPR, v = idx - j * VPR;
      const int key = k0 + j;
      float kf[N], vf[N];
      if (key < kv_end) {
        int blk = bt[key >> bs_shift];
        blk = (unsigned)blk < (unsigned)num_blocks ? blk : 0;  // never read outside the cache
        const i64 off = (((i64)blk << bs_shift) + (key & bs_mask)) * tok_stride + (i64)kvh * D + v * N;
        const uint4 ku = ld16(k_cache + off), vu = ld16(v_cache + off);
        unpack16<T>(ku, kf);
        unpack16<T>(vu, vf);
      } else {
#pragma unroll
        for (int i = 0; i < N; ++i) kf[i] = vf[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < N; i += 4) {
        *reinterpret_cast<float4*>(&Ks[j * DP + v * N + i]) = make_float4(kf[i], kf[i + 1], kf[i + 2], kf[i + 3]);
        *reinterpret_cast<float4*>(&Vs[j * DP + v * N + i]) = make_float4(vf[i], vf[i + 1], vf[i + 2], vf[i + 3]);
      }
    }
    __syncthreads();

    // S = Q K^T for the owned 4 x 4 (row, key) pairs.
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
      float4 a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const float4*>(&Qs[(ty + 16 * i) * DP + d]);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const float4*>(&Ks[(tx + 8 * j) * DP + d]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[i][j] = fmaf(a[i].x, b[j].x, s[i][j]);
          s[i][j] = fmaf(a[i].y, b[j].y, s[i][j]);
          s[i][j] = fmaf(a[i].z, b[j].z, s[i][j]);
          s[i][j] = fmaf(a[i].w, b[j].w, s[i][j]);
        }
    }

    // Soft-cap, causal and window mask (key > query position, which also covers keys >= kv_end;
    // key before the query's window) and online softmax.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mx = neg_inf();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int key = k0 + tx + 8 * j;
        if (soft_cap > 0.f) s[i][j] = soft_cap_log2(s[i][j], inv_cap, cap_log2);
        if (key > qpos[i] || key < qlo[i]) s[i][j] = neg_inf();
        mx = fmaxf(mx, s[i][j]);
      }
      mx = group_max<8>(mx);
      const float mn = fmaxf(m[i], mx);
      const float mr = safe_max_ref(mn);
      const float alpha = fast_exp2(m[i] - mr);
      m[i] = mn;
      float ls = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = fast_exp2(s[i][j] - mr);
        ls += p;
        Ps[(ty + 16 * i) * NP + tx + 8 * j] = p;
      }
      l[i] = l[i] * alpha + ls;  // per-thread partial row sum; summed over the 8 lanes at the end
#pragma unroll
      for (int c = 0; c < DC; ++c) {
        acc[i][c].x *= alpha;
        acc[i][c].y *= alpha;
        acc[i][c].z *= alpha;
        acc[i][c].w *= alpha;
      }
    }
    __syncthreads();

    // O += P V, four keys at a time.
#pragma unroll 2
    for (int j = 0; j < BN; j += 4) {
      float4 p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = *reinterpret_cast<const float4*>(&Ps[(ty + 16 * i) * NP + j]);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
        for (int c = 0; c < DC; ++c) {
          const float4 v = *reinterpret_cast<const float4*>(&Vs[(j + jj) * DP + 4 * tx + 32 * c]);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float pv = jj == 0 ? p[i].x : jj == 1 ? p[i].y : jj == 2 ? p[i].z : p[i].w;
            acc[i][c].x = fmaf(pv, v.x, acc[i][c].x);
            acc[i][c].y = fmaf(pv, v.y, acc[i][c].y);
            acc[i][c].z = fmaf(pv, v.z, acc[i][c].z);
            acc[i][c].w = fmaf(pv, v.w, acc[i][c].w);
          }
        }
      }
    }
  }

  // Normalize and write the owned rows.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float lt = group_sum<8>(l[i]);
    const int p = p0 + ty + 16 * i;
    if (p >= packed) continue;
    const int t = p / group, g = p - t * group;
    const float inv = lt > 0.f ? 1.0f / lt : 0.f;
    T* dst = out + (i64)(q0 + t) * out_stride + (i64)(hq0 + g) * D + 4 * tx;
#pragma unroll
    for (int c = 0; c < DC; ++c)
      store4(dst + 32 * c, make_float4(acc[i][c].x * inv, acc[i][c].y * inv, acc[i][c].z * inv, acc[i][c].w * inv));
  }
}

}  // namespace lmrs

#define LMRS_PREFILL_ENTRY_D(SUF, T, D)                                                          \
  extern "C" __global__ void __launch_bounds__(lmrs::kPrefillThreads) prefill_attention_##SUF##_d##D( \
      T* out, long long out_stride, const T* q, long long q_stride, const T* k_cache,            \
      const T* v_cache, const int* block_table, long long bt_stride, const int* seq_lens,        \
      const int* query_start_loc, float q_scale, float soft_cap, int window, int num_kv_heads,   \
      int group, int bs_shift, int num_blocks) {                                                 \
    lmrs::prefill_attention_impl<T, D>(out, out_stride, q, q_stride, k_cache, v_cache,           \
                                       block_table, bt_stride, seq_lens, query_start_loc,        \
                                       q_scale, soft_cap, window, num_kv_heads, group, bs_shift, \
                                       num_blocks);                                              \
  }

#define LMRS_PREFILL_ENTRY(SUF, T) \
  LMRS_PREFILL_ENTRY_D(SUF, T, 64) \
  LMRS_PREFILL_ENTRY_D(SUF, T, 128)

LMRS_FOR_EACH_DTYPE(LMRS_PREFILL_ENTRY)
