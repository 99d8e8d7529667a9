// Paged decode attention: one query token per sequence against its cached keys/values, read
// through the block table. KV cache layout [num_blocks, block_size, Hk, D] ("NHD"); block_size is
// a power of two passed as bs_shift (16 -> 4, 32 -> 5). Softmax in float32, in the log2 domain
// (q is pre-multiplied by q_scale = scale * log2(e)); outputs match reference.decode_attention.
//
// Options: soft_cap > 0 (Gemma 2, the `_cap` entry points: a separate build so that the default
// one keeps its registers): q_scale is the plain softmax scale and each score s becomes
// soft_cap * tanh(s / soft_cap) * log2(e). window > 0 (sliding window): the query at position
// seq_len - 1 sees the keys [seq_len - window, seq_len) only, and the CTAs (and KV splits) cover
// just those: the blocks before the window are never read.
//
// Grid: x = sequence b, y = KV head * head chunks, z = KV split. Each CTA handles one KV head and
// a chunk of HPC query heads of its GQA group (group = Hq / Hk; chunks = ceil(group / HPC)), so
// every K/V vector read from memory is used by all HPC heads (GQA sharing). Split z covers keys
// [lo + z * partition, min(lo + (z + 1) * partition, seq_len)), lo = the window's first key (0
// without a window); gridDim.z == 1 means no split.
//
// Thread mapping inside a CTA (NW warps, 32 * NW threads):
//   N = LB / sizeof(T) elements per load (LB = 16 bytes; 8 for 16-bit types with HPC = 8, see
//   DecodeCfg); TPK = D / N lanes ("key group") cover one key row of D elements, lane sl of the
//   group owning d in [sl * N, sl * N + N); KPW = 32 / TPK key groups per warp; SLOTS = NW * KPW
//   key groups per CTA. Each iteration a key group loads U keys (U * 2 independent LB-byte loads
//   per lane in flight), keys interleaved across key groups so a
//   warp reads KPW consecutive tokens of a block per load instruction (full 32-byte sectors).
//   Each key group keeps its own online softmax state (m, l, acc[HPC][N]) for its keys; the states
//   are merged across key groups with shuffles and across warps through shared memory at the end.
//
// Split-KV (flash-decoding): with part_out != null every CTA writes its normalized partial
// output part_out[b, hq, z, :] (float32) and log2-sum-exp part_lse[b, hq, z], and
// decode_reduce_* combines the splits. Alignment: q rows, cache rows and D * sizeof(T) are
// 16-byte aligned (checked by the wrapper).
#include "common.cuh"

namespace lmrs {

constexpr int kDecodeWarps = 4;
constexpr int kMaxSplits = 256;  // the wrapper never launches more splits than this

// Per-variant tuning: U keys per lane per iteration, LB bytes per lane per load. Eight 16-bit
// heads per CTA would need ~220 registers with 16-byte loads (q and acc are HPC * N floats each);
// 8-byte loads halve that, so 4 CTAs fit per SM and more loads are in flight.
template <typename T, int HPC>
struct DecodeCfg {
  static constexpr int LB = (HPC == 8 && sizeof(T) == 2) ? 8 : 16;
  static constexpr int U = HPC <= 4 ? 4 : (LB == 8 ? 4 : 2);
};

template <typename T, int D, int HPC, int NW, int U, int LB, bool CAP>
__device__ __forceinline__ void decode_attention_impl(
    T* __restrict__ out, i64 out_stride, const T* __restrict__ q, i64 q_stride,
    const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ block_table, i64 bt_stride, const int* __restrict__ seq_lens,
    float q_scale, float soft_cap, int window, int num_kv_heads, int group, int bs_shift,
    int num_blocks, int partition, float* __restrict__ part_out, float* __restrict__ part_lse) {
  constexpr int N = LB / sizeof(T);  // elements per lane per load
  constexpr int TPK = D / N;
  static_assert(TPK >= 1 && TPK <= 32 && 32 % TPK == 0, "D / N must divide 32");
  constexpr int KPW = 32 / TPK;
  constexpr int SLOTS = NW * KPW;
  constexpr int STEP = SLOTS * U;

  __shared__ float s_acc[NW][HPC][D];
  __shared__ float s_ml[NW][HPC][2];

  const int b = blockIdx.x;
  const int chunks = (group + HPC - 1) / HPC;
  const int kvh = blockIdx.y / chunks;
  const int chunk = blockIdx.y - kvh * chunks;
  const int split = blockIdx.z;
  const int num_q_heads = num_kv_heads * group;
  const int h0 = kvh * group + chunk * HPC;   // first query head of this CTA
  const int nh = min(HPC, group - chunk * HPC);  // valid query heads in this chunk (>= 1)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kg = lane / TPK, sl = lane - kg * TPK;
  const int slot = warp * KPW + kg;

  const int seq_len = seq_lens[b];
  const int lo = window > 0 ? max(0, seq_len - window) : 0;
  const int start = lo + split * partition;
  const int end = min(seq_len, start + partition);
  const float inv_cap = soft_cap > 0.f ? 2.0f * kLog2e / soft_cap : 0.f;
  const float cap_log2 = soft_cap * kLog2e;

  // Query vectors of the HPC heads, this lane's N elements each, scaled into the log2 domain.
  float qf[HPC][N];
#pragma unroll
  for (int g = 0; g < HPC; ++g) {
    if (g < nh) {
      unpack_raw<T, LB>(ld_raw<LB>(q + (i64)b * q_stride + (i64)(h0 + g) * D + sl * N), qf[g]);
#pragma unroll
      for (int i = 0; i < N; ++i) qf[g][i] *= q_scale;
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) qf[g][i] = 0.f;
    }
  }

  float m[HPC], l[HPC], acc[HPC][N];
#pragma unroll
  for (int g = 0; g < HPC; ++g) {
    m[g] = neg_inf();
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[g][i] = 0.f;
  }

  const i64 tok_stride = (i64)num_kv_heads * D;  // elements between consecutive tokens of a block
  const T* kb = k_cache + (i64)kvh * D + sl * N;
  const T* vb = v_cache + (i64)kvh * D + sl * N;
  const int* bt = block_table + (i64)b * bt_stride;
  const int bs_mask = (1 << bs_shift) - 1;

  // The trip count is uniform over the CTA, so the shuffles below run with all lanes active.
  for (int base = start; base < end; base += STEP) {
    Raw<LB> kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + u * SLOTS + slot;
      kr[u] = zero_raw<LB>();
      vr[u] = zero_raw<LB>();
      if (key < end) {
        int blk = bt[key >> bs_shift];
        blk = (unsigned)blk < (unsigned)num_blocks ? blk : 0;  // never read outside the cache
        const i64 off = (((i64)blk << bs_shift) + (key & bs_mask)) * tok_stride;
        kr[u] = ld_raw<LB>(kb + off);
        vr[u] = ld_raw<LB>(vb + off);
      }
    }
    float s[U][HPC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[N];
      unpack_raw<T, LB>(kr[u], kf);
      const bool valid = base + u * SLOTS + slot < end;
#pragma unroll
      for (int g = 0; g < HPC; ++g) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) d = fmaf(qf[g][i], kf[i], d);
        d = group_sum<TPK>(d);
        if (CAP) d = soft_cap_log2(d, inv_cap, cap_log2);
        s[u][g] = valid ? d : neg_inf();
      }
    }
    float mref[HPC];
#pragma unroll
    for (int g = 0; g < HPC; ++g) {
      float mx = s[0][g];
#pragma unroll
      for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      const float mn = fmaxf(m[g], mx);
      mref[g] = safe_max_ref(mn);
      const float alpha = fast_exp2(m[g] - mref[g]);  // 0 while nothing was seen (m = -inf)
      m[g] = mn;
      l[g] *= alpha;
#pragma unroll
      for (int i = 0; i < N; ++i) acc[g][i] *= alpha;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[N];
      unpack_raw<T, LB>(vr[u], vf);
#pragma unroll
      for (int g = 0; g < HPC; ++g) {
        const float p = fast_exp2(s[u][g] - mref[g]);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < N; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
      }
    }
  }

  // Merge the KPW key groups of the warp (lanes with the same sl hold the same d range).
#pragma unroll
  for (int o = TPK; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < HPC; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mn = fmaxf(m[g], mo);
      const float mr = safe_max_ref(mn);
      const float a = fast_exp2(m[g] - mr), c = fast_exp2(mo - mr);
      l[g] = l[g] * a + lo * c;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
        acc[g][i] = acc[g][i] * a + ao * c;
      }
      m[g] = mn;
    }
  }

  // Merge the warps through shared memory; threads then own (head, d) outputs.
  if (kg == 0) {
#pragma unroll
    for (int g = 0; g < HPC; ++g) {
#pragma unroll
      for (int i = 0; i < N; ++i) s_acc[warp][g][sl * N + i] = acc[g][i];
      if (sl == 0) {
        s_ml[warp][g][0] = m[g];
        s_ml[warp][g][1] = l[g];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * D; idx += NW * 32) {
    const int g = idx / D, d = idx - g * D;
    float M = neg_inf();
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, s_ml[w][g][0]);
    const float mr = safe_max_ref(M);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float e = fast_exp2(s_ml[w][g][0] - mr);
      L += s_ml[w][g][1] * e;
      O += s_acc[w][g][d] * e;
    }
    const float res = L > 0.f ? O / L : 0.f;  // seq_len == 0 (or an empty split) -> 0
    const int hq = h0 + g;
    if (part_out == nullptr) {
      out[(i64)b * out_stride + (i64)hq * D + d] = from_float<T>(res);
    } else {
      const i64 pidx = ((i64)b * num_q_heads + hq) * gridDim.z + split;
      part_out[pidx * D + d] = res;
      if (d == 0) part_lse[pidx] = L > 0.f ? M + __log2f(L) : neg_inf();
    }
  }
}

// Combine the splits of one (sequence, query head): out = sum_z 2^lse_z * part_z / sum_z 2^lse_z.
// Grid: x = sequence b, y = query head; blockDim.x = D threads (64 or 128), thread = output
// element d. Warp 0 computes the split weights into shared memory first. Only the splits that hold
// keys of this sequence (ceil(keys / partition), keys = seq_len or, with a window, at most
// window) are read.
template <typename T, int D>
__device__ __forceinline__ void decode_reduce_impl(T* __restrict__ out, i64 out_stride,
                                                   const float* __restrict__ part_out,
                                                   const float* __restrict__ part_lse,
                                                   const int* __restrict__ seq_lens, int window,
                                                   int num_q_heads, int num_splits, int partition) {
  __shared__ float w[kMaxSplits];
  __shared__ float inv_total;
  const int b = blockIdx.x, hq = blockIdx.y;
  const int len = window > 0 ? min(seq_lens[b], window) : seq_lens[b];  // keys the query sees
  const int n = len <= 0 ? 0 : min(min(num_splits, kMaxSplits), (len + partition - 1) / partition);
  const i64 p0 = ((i64)b * num_q_heads + hq) * num_splits;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float M = neg_inf();
    for (int z = lane; z < n; z += 32) M = fmaxf(M, part_lse[p0 + z]);
    M = group_max<32>(M);
    const float mr = safe_max_ref(M);
    float tot = 0.f;
    for (int z = lane; z < n; z += 32) {
      const float e = fast_exp2(part_lse[p0 + z] - mr);
      w[z] = e;
      tot += e;
    }
    tot = group_sum<32>(tot);
    if (lane == 0) inv_total = tot > 0.f ? 1.0f / tot : 0.f;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int z = 0; z < n; ++z) {
      const float e = w[z];
      if (e > 0.f) o = fmaf(e, part_out[(p0 + z) * D + d], o);
    }
    out[(i64)b * out_stride + (i64)hq * D + d] = from_float<T>(o * inv_total);
  }
}

}  // namespace lmrs

#define LMRS_DECODE_ARGS(T)                                                                        \
  T *out, long long out_stride, const T *q, long long q_stride, const T *k_cache,                  \
      const T *v_cache, const int *block_table, long long bt_stride, const int *seq_lens,          \
      float q_scale, float soft_cap, int window, int num_kv_heads, int group, int bs_shift,        \
      int num_blocks, int partition, float *part_out, float *part_lse

#define LMRS_DECODE_ENTRY_DHC(SUF, T, D, HPC, NAME_TAIL, CAP)                                      \
  extern "C" __global__ void __launch_bounds__(lmrs::kDecodeWarps * 32)                            \
      decode_attention_##SUF##_d##D##_g##HPC##NAME_TAIL(LMRS_DECODE_ARGS(T)) {                     \
    lmrs::decode_attention_impl<T, D, HPC, lmrs::kDecodeWarps, lmrs::DecodeCfg<T, HPC>::U,         \
                                lmrs::DecodeCfg<T, HPC>::LB, CAP>(                                 \
        out, out_stride, q, q_stride, k_cache, v_cache, block_table, bt_stride, seq_lens, q_scale, \
        soft_cap, window, num_kv_heads, group, bs_shift, num_blocks, partition, part_out,          \
        part_lse);                                                                                 \
  }

#define LMRS_DECODE_ENTRY_DH(SUF, T, D, HPC)             \
  LMRS_DECODE_ENTRY_DHC(SUF, T, D, HPC, , false)         \
  LMRS_DECODE_ENTRY_DHC(SUF, T, D, HPC, _cap, true)

#define LMRS_DECODE_ENTRY_D(SUF, T, D)                                                             \
  LMRS_DECODE_ENTRY_DH(SUF, T, D, 1)                                                               \
  LMRS_DECODE_ENTRY_DH(SUF, T, D, 2)                                                               \
  LMRS_DECODE_ENTRY_DH(SUF, T, D, 4)                                                               \
  LMRS_DECODE_ENTRY_DH(SUF, T, D, 8)                                                               \
  extern "C" __global__ void __launch_bounds__(128) decode_reduce_##SUF##_d##D(                    \
      T *out, long long out_stride, const float *part_out, const float *part_lse,                  \
      const int *seq_lens, int window, int num_q_heads, int num_splits, int partition) {           \
    lmrs::decode_reduce_impl<T, D>(out, out_stride, part_out, part_lse, seq_lens, window,          \
                                   num_q_heads, num_splits, partition);                            \
  }

#define LMRS_DECODE_ENTRY(SUF, T) \
  LMRS_DECODE_ENTRY_D(SUF, T, 64) \
  LMRS_DECODE_ENTRY_D(SUF, T, 128)

LMRS_FOR_EACH_DTYPE(LMRS_DECODE_ENTRY)
