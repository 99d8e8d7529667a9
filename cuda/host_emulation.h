// Host emulation of the small CUDA subset the lmrs kernels use, so the real kernel sources can be
// compiled by a host C++ compiler (g++ -DLMRS_HOST_EMULATION) and run on the CPU in tests
// (tests/test_cuda_emulated.py). Never used on a GPU; NVRTC never sees this file.
//
// Model: one thread block at a time; each CUDA thread is an OS thread. __syncthreads is a
// pthread barrier over the block, warp shuffles exchange values through a per-warp buffer between
// two barriers over the warp's 32 threads. `__shared__` becomes `static` (blocks run one at a
// time), dynamic shared memory is one buffer sized at launch. Blocks must be multiples of 32
// threads and every thread must reach every barrier/shuffle (true for all lmrs kernels).
#pragma once

#include <pthread.h>
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define LMRS_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(lmrs_emu::dyn_smem)

struct dim3 { unsigned int x = 1, y = 1, z = 1; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

namespace lmrs_emu {
inline thread_local dim3 tid, bid;
inline dim3 bdim, gdim;
inline unsigned char* dyn_smem = nullptr;
inline pthread_barrier_t block_bar;
inline pthread_barrier_t warp_bar[32];
inline unsigned long long warp_buf[32][32];
}  // namespace lmrs_emu

#define threadIdx (lmrs_emu::tid)
#define blockIdx (lmrs_emu::bid)
#define blockDim (lmrs_emu::bdim)
#define gridDim (lmrs_emu::gdim)

inline void __syncthreads() { pthread_barrier_wait(&lmrs_emu::block_bar); }

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int o) {
  static_assert(sizeof(V) <= 8, "shuffle of at most 8 bytes");
  const unsigned flat = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned w = flat / 32, lane = flat % 32;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  lmrs_emu::warp_buf[w][lane] = bits;
  pthread_barrier_wait(&lmrs_emu::warp_bar[w]);
  bits = lmrs_emu::warp_buf[w][lane ^ (unsigned)o];
  pthread_barrier_wait(&lmrs_emu::warp_bar[w]);
  V r;
  std::memcpy(&r, &bits, sizeof(V));
  return r;
}

// Bit casts and IEEE-rounded arithmetic.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __log2f(float x) { return std::log2(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Byte i of the result = byte (s >> 4i) & 7 of the 8 bytes {y, x} (x the low word).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xffu) << (8 * i);
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

// 16-bit floats (round to nearest even, like the device conversions).
struct __half { unsigned short x; };
struct __nv_bfloat16 { unsigned short x; };
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return (float)f;
}
inline __half __float2half_rn(float x) {
  _Float16 f = (_Float16)x;
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(unsigned short)(u >> 16)};
}

// Launch: run every block of the grid in turn; each block's threads are OS threads calling
// `thunk` (which calls the kernel with its arguments).
extern "C" int lmrs_emu_launch(void (*thunk)(void), unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, unsigned long long smem_bytes) {
  using namespace lmrs_emu;
  const unsigned nthreads = bx * by * bz;
  if (nthreads == 0 || nthreads % 32 != 0 || nthreads > 1024) return 1;
  std::vector<unsigned char> smem(smem_bytes + 16);
  dyn_smem = smem.data() + (16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16;
  bdim = {bx, by, bz};
  gdim = {gx, gy, gz};
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        pthread_barrier_init(&block_bar, nullptr, nthreads);
        for (unsigned w = 0; w < nthreads / 32; ++w) pthread_barrier_init(&warp_bar[w], nullptr, 32);
        std::memset(dyn_smem, 0xff, smem_bytes);  // poison: NaN floats
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (unsigned t = 0; t < nthreads; ++t)
          threads.emplace_back([=] {
            tid = {t % bx, (t / bx) % by, t / (bx * by)};
            bid = {x, y, z};
            thunk();
          });
        for (auto& th : threads) th.join();
        pthread_barrier_destroy(&block_bar);
        for (unsigned w = 0; w < nthreads / 32; ++w) pthread_barrier_destroy(&warp_bar[w]);
      }
  dyn_smem = nullptr;
  return 0;
}
