// CPU emulation of the CUDA subset that csrc/cuda/ternary_kernels.cu uses, so that CI (no GPU) runs
// the kernels' own source and compares them with the plain-torch reference
// (tests/kernels/test_cuda_emulated.py). Compiled only with -DLMOPS_CUDA_EMULATE, never into the
// extension.
//
// Model: blocks run one after another; the threads of a block are std::threads (blockDim.x of them),
// so __syncthreads is a std::barrier over the block and __shared__ arrays are function-local statics
// (one copy, used by the one block that runs). Warp-collective operations (shuffles, mma.sync
// m16n8k32 s8, ldmatrix.x4) exchange values through a per-warp scratch area between two barriers of
// that warp's 32 threads, and compute exactly what the PTX ISA specifies for each lane's registers.
// cp.async copies synchronously. Float intrinsics are the plain IEEE operations (the test build uses
// -ffp-contract=off); half and bfloat16 convert with round-to-nearest-even.
//
// What this does not model: timing, memory coalescing, bank conflicts, asynchronous-copy hazards
// (a missing wait would go unnoticed), or divergent warp-collective calls (all of ours are uniform).
#pragma once

#include <array>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

// ---- types and runtime API -------------------------------------------------------------------------
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  uint32_t x, y, z, w;
};
struct int4 {
  int32_t x, y, z, w;
};
inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
// LMOPS_EMU_SMS sets the multiprocessor count the launch heuristics see (default 4).
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  const char* env = std::getenv("LMOPS_EMU_SMS");
  *value = env != nullptr ? std::atoi(env) : 4;
  return cudaSuccess;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct __half {
  _Float16 v;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(static_cast<uint32_t>(b.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  return c;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
[[noreturn]] inline void __trap() { std::abort(); }

// ---- threads, blocks, barriers -----------------------------------------------------------------------
namespace lmops_emu {

struct Block {
  explicit Block(unsigned threads) : bar(threads), warps(threads / 32) {
    for (unsigned w = 0; w < warps; ++w) warp_bar.emplace_back(std::make_unique<std::barrier<>>(32));
    scratch.resize(warps);
  }
  std::barrier<> bar;
  unsigned warps;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<std::array<std::array<uint64_t, 6>, 32>> scratch;  // per warp, per lane: 6 words
  std::atomic<int> flag{0};
};

inline Block* g_block = nullptr;
inline dim3 g_block_idx, g_block_dim, g_grid_dim;
inline thread_local dim3 t_thread_idx;

inline int lane() { return static_cast<int>(t_thread_idx.x & 31u); }
inline unsigned warp() { return t_thread_idx.x >> 5; }
inline void warp_sync() { g_block->warp_bar[warp()]->arrive_and_wait(); }
inline std::array<std::array<uint64_t, 6>, 32>& warp_scratch() { return g_block->scratch[warp()]; }

// Runs body() once per thread of every block of the grid (x and y dimensions), blocks in order.
template <typename F>
void launch(dim3 grid, dim3 block, F&& body) {
  const unsigned threads = block.x;
  if (threads % 32 != 0) std::abort();  // the kernels launch whole warps
  g_grid_dim = grid;
  g_block_dim = block;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      Block b(threads);
      g_block = &b;
      g_block_idx = dim3(bx, by, 0);
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&body, t] {
          t_thread_idx = dim3(t, 0, 0);
          body();
        });
      for (auto& th : pool) th.join();
      g_block = nullptr;
    }
}

}  // namespace lmops_emu

#define threadIdx (::lmops_emu::t_thread_idx)
#define blockIdx (::lmops_emu::g_block_idx)
#define blockDim (::lmops_emu::g_block_dim)
#define gridDim (::lmops_emu::g_grid_dim)

inline void __syncthreads() { lmops_emu::g_block->bar.arrive_and_wait(); }

inline int __syncthreads_or(int predicate) {
  auto* b = lmops_emu::g_block;
  if (lmops_emu::t_thread_idx.x == 0) b->flag.store(0);
  b->bar.arrive_and_wait();
  if (predicate) b->flag.store(1);
  b->bar.arrive_and_wait();
  const int r = b->flag.load();
  b->bar.arrive_and_wait();
  return r;
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  auto& s = lmops_emu::warp_scratch();
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  s[lmops_emu::lane()][0] = bits;
  lmops_emu::warp_sync();
  T r;
  std::memcpy(&r, &s[lmops_emu::lane() ^ mask][0], sizeof(T));
  lmops_emu::warp_sync();
  return r;
}

namespace lmops_emu {

inline int8_t byte_of(uint32_t word, int i) { return static_cast<int8_t>(word >> (8 * i)); }

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, per the PTX ISA fragment layouts
// (g = lane / 4, t = lane % 4): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..],
// a3 = A[g+8][16+4t..]; b0 = B[4t..4t+3][g], b1 = B[16+4t..][g]; c[h*2+i] = C[g+8h][2t+i].
inline void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& s = warp_scratch();
  const int l = lane();
  for (int r = 0; r < 4; ++r) s[l][r] = a[r];
  s[l][4] = b0;
  s[l][5] = b1;
  warp_sync();
  auto A = [&](int row, int k) {
    const int reg = (row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
    return byte_of(static_cast<uint32_t>(s[(row % 8) * 4 + (k % 16) / 4][reg]), k % 4);
  };
  auto B = [&](int k, int col) {
    return byte_of(static_cast<uint32_t>(s[col * 4 + (k % 16) / 4][k >= 16 ? 5 : 4]), k % 4);
  };
  const int g = l / 4, t = l % 4;
  int32_t out[4];
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 2; ++i) {
      int32_t sum = c[h * 2 + i];
      for (int k = 0; k < 32; ++k) sum += static_cast<int32_t>(A(g + 8 * h, k)) * static_cast<int32_t>(B(k, 2 * t + i));
      out[h * 2 + i] = sum;
    }
  warp_sync();
  for (int r = 0; r < 4; ++r) c[r] = out[r];
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l supplies the address of row l % 8 of matrix l / 8;
// register q of lane l receives the 32-bit word (l % 4) of row l / 4 of matrix q.
inline void ldmatrix_x4(uint32_t (&a)[4], const int8_t* row_address) {
  auto& s = warp_scratch();
  const int l = lane();
  s[l][0] = reinterpret_cast<uintptr_t>(row_address);
  warp_sync();
  for (int q = 0; q < 4; ++q) {
    const auto* row = reinterpret_cast<const int8_t*>(static_cast<uintptr_t>(s[q * 8 + l / 4][0]));
    std::memcpy(&a[q], row + 4 * (l % 4), 4);
  }
  warp_sync();
}

}  // namespace lmops_emu
