// W2A8 ternary kernels for NVIDIA GPUs (sm_80, sm_90). See ternary_kernels.cuh for the contract.
// In CI (no GPU): compiled by nvcc (tests/kernels/test_cuda_compile.py) and run on the CPU under an emulator
// of the CUDA subset used here (tests/kernels/cuda_emu, tests/kernels/test_cuda_emulated.py); on a GPU:
// tests/kernels/test_gpu_cuda.py.
#include "ternary_kernels.cuh"

#include <math.h>

#include <type_traits>

// Kernel launch; under LMOPS_CUDA_EMULATE the emulator runs the kernel's threads on the CPU.
#ifdef LMOPS_CUDA_EMULATE
#define LMOPS_LAUNCH(kernel, grid, block, stream, ...) ::lmops_emu::launch(grid, dim3(block), [&] { kernel(__VA_ARGS__); })
#else
#define LMOPS_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

namespace lmops {
namespace cuda {
namespace {

constexpr uint32_t kCodeMask = 0x03030303u;  // the 2-bit code of each byte, after a shift by 2 j

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// y = float(acc) * (gamma / s) [+ bias]: explicit _rn intrinsics so nvcc cannot contract to an FMA
// (the CPU build uses -ffp-contract=off and the reference is unfused torch).
// The bias is read in its own dtype and widened here (exact), as the reference's bias.float(): no
// per-call conversion of it on the host side.
__device__ __forceinline__ float load_bias(Bias bias, int64_t n) {
  switch (bias.type) {
    case BiasType::kFloat:
      return static_cast<const float*>(bias.data)[n];
    case BiasType::kHalf:
      return to_float(static_cast<const __half*>(bias.data)[n]);
    default:
      return to_float(static_cast<const __nv_bfloat16*>(bias.data)[n]);
  }
}

__device__ __forceinline__ float epilogue(int32_t acc, float r, Bias bias, int64_t n) {
  float v = __fmul_rn(static_cast<float>(acc), r);
  if (bias.type != BiasType::kNone) v = __fadd_rn(v, load_bias(bias, n));
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Activation quantization: one block per row.
// ---------------------------------------------------------------------------------------------------
constexpr int kQuantThreads = 256;

__device__ __forceinline__ float block_max(float v, float* shm) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = lane < kQuantThreads / 32 ? shm[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;  // every thread holds the block maximum
}

__device__ __forceinline__ int32_t block_sum(int32_t v, int32_t* shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = lane < kQuantThreads / 32 ? shm[lane] : 0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t K, int64_t ldq, float qmax, int8_t* __restrict__ q,
                         float* __restrict__ scale, int32_t* __restrict__ rowsum) {
  __shared__ float smax[kQuantThreads / 32];
  __shared__ int32_t ssum[kQuantThreads / 32];
  const int64_t m = blockIdx.x;
  const T* xr = x + m * K;
  int8_t* qr = q + m * ldq;

  float amax = 0.f;
  int bad = 0;
  for (int64_t k = threadIdx.x; k < K; k += kQuantThreads) {
    const float v = to_float(xr[k]);
    bad |= !isfinite(v);
    amax = fmaxf(amax, fabsf(v));
  }
  bad = __syncthreads_or(bad);
  amax = block_max(amax, smax);
  // (1 / max(amax, 1e-5)) * qmax, each step IEEE round-to-nearest, as torch evaluates ActQuant.
  const float s = bad ? __int_as_float(0x7fc00000) : __fmul_rn(__frcp_rn(fmaxf(amax, 1e-5f)), qmax);

  int32_t sum = 0;
  for (int64_t k = threadIdx.x; k < ldq; k += kQuantThreads) {
    int32_t v = 0;
    if (k < K && !bad) {
      float r = rintf(__fmul_rn(to_float(xr[k]), s));  // round half to even
      r = fminf(fmaxf(r, -qmax - 1.f), qmax);
      v = static_cast<int32_t>(r);
    }
    qr[k] = static_cast<int8_t>(v);
    sum += v;
  }
  sum = block_sum(sum, ssum);
  if (threadIdx.x == 0) {
    scale[m] = s;
    if (rowsum != nullptr) rowsum[m] = sum;
  }
}

// Zero-padded copy of int8 rows (for ternary_matmul_int, whose activations arrive quantized): one block
// per row; q[m, k] = k < K ? x[m * ldx + k] : 0 for k < ldq, and rowsum[m] = the row's sum.
__global__ void __launch_bounds__(kQuantThreads)
    pad_rows_kernel(const int8_t* __restrict__ x, int64_t K, int64_t ldx, int64_t ldq, int8_t* __restrict__ q,
                    int32_t* __restrict__ rowsum) {
  __shared__ int32_t ssum[kQuantThreads / 32];
  const int64_t m = blockIdx.x;
  int32_t sum = 0;
  for (int64_t k = threadIdx.x; k < ldq; k += kQuantThreads) {
    const int8_t v = k < K ? x[m * ldx + k] : static_cast<int8_t>(0);
    q[m * ldq + k] = v;
    sum += v;
  }
  sum = block_sum(sum, ssum);
  if (threadIdx.x == 0) rowsum[m] = sum;
}

// ---------------------------------------------------------------------------------------------------
// Decode GEMV: one block of 4 warps per n-block of 8 output columns, MT activation rows per grid row.
// Full n-blocks: each thread streams 16-byte weight loads (half a k-block: 4 columns x 4 bytes); the k
// loop is split over the 128 threads, then warp shuffles and a shared-memory sum across the 4 warps.
// The last, narrower n-block (w < 8 columns, 4 w bytes per k-block) is read word by word.
// ---------------------------------------------------------------------------------------------------
constexpr int kGemvThreads = 128;
constexpr int kGemvWarps = kGemvThreads / 32;

// Not volatile: a pure load, so the compiler may batch and reorder it (memory-level parallelism).
__device__ __forceinline__ uint4 load_weights_streaming(const uint4* p) {
#ifdef LMOPS_CUDA_EMULATE
  return *p;
#else
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
#endif
}

constexpr int kGemvUnroll = 4;  // 16-byte weight loads each thread keeps in flight

template <typename T, int MT>
__global__ void __launch_bounds__(kGemvThreads)
    ternary_gemv_kernel(const int8_t* __restrict__ xq, const float* __restrict__ scale,
                        const int32_t* __restrict__ rowsum, int64_t M, int64_t ldq,
                        const uint8_t* __restrict__ packed, int64_t N, int64_t KB,
                        const float* __restrict__ gamma, Bias bias, T* __restrict__ y) {
  __shared__ int32_t part[kGemvWarps][MT][8];
  const int64_t nb = blockIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int mrows = static_cast<int>(M - m0 < MT ? M - m0 : MT);
  const int64_t full = N / 8;
  const int w = nb < full ? 8 : static_cast<int>(N - full * 8);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int8_t* xb = xq + m0 * ldq;

  if (w == 8) {
    int32_t acc[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[m][c] = 0;
    const uint4* wp = reinterpret_cast<const uint4*>(packed + nb * KB * 32);
    // uint4 i covers k-block i / 2, columns 4 (i % 2) .. 4 (i % 2) + 3; i % 2 == tid % 2 throughout.
    // kGemvUnroll loads are issued before any is used, so each thread has that many in flight.
    for (int64_t i0 = tid; i0 < 2 * KB; i0 += kGemvThreads * kGemvUnroll) {
      uint4 wv[kGemvUnroll];
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int64_t i = i0 + u * kGemvThreads;
        if (i < 2 * KB) wv[u] = load_weights_streaming(wp + i);
      }
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int64_t i = i0 + u * kGemvThreads;
        if (i >= 2 * KB) break;
        const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
        const int64_t kb = i >> 1;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < mrows) {
            const int4 xv = __ldg(reinterpret_cast<const int4*>(xb + m * ldq + kb * 16));
            const int xs[4] = {xv.x, xv.y, xv.z, xv.w};  // xs[j] = x[16 kb + 4 j + 0..3]
#pragma unroll
            for (int c = 0; c < 4; ++c)
#pragma unroll
              for (int j = 0; j < 4; ++j)
                acc[m][c] = __dp4a(static_cast<int>((words[c] >> (2 * j)) & kCodeMask), xs[j], acc[m][c]);
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        int32_t v = acc[m][c];
        for (int o = 2; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);  // keep lane parity
        if (lane < 2) part[warp][m][lane * 4 + c] = v;
      }
  } else {
    int32_t acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0;
    const int c = tid & 7;
    if (c < w) {
      const uint8_t* tb = packed + full * KB * 32;
      for (int64_t kb = tid >> 3; kb < KB; kb += kGemvThreads / 8) {
        const uint32_t word = __ldg(reinterpret_cast<const uint32_t*>(tb + kb * 4 * w + 4 * c));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < mrows) {
            const int4 xv = __ldg(reinterpret_cast<const int4*>(xb + m * ldq + kb * 16));
            const int xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
            for (int j = 0; j < 4; ++j)
              acc[m] = __dp4a(static_cast<int>((word >> (2 * j)) & kCodeMask), xs[j], acc[m]);
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      int32_t v = acc[m];
      for (int o = 8; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);  // keep lane % 8
      if (lane < 8) part[warp][m][lane] = v;
    }
  }
  __syncthreads();

  for (int o = tid; o < MT * 8; o += kGemvThreads) {
    const int m = o >> 3, c = o & 7;
    if (m < mrows && c < w) {
      int32_t a = -rowsum[m0 + m];
#pragma unroll
      for (int wi = 0; wi < kGemvWarps; ++wi) a += part[wi][m][c];
      const int64_t n = nb * 8 + c;
      if constexpr (std::is_same<T, int32_t>::value) {
        y[(m0 + m) * N + n] = a;  // raw product: gamma, scale and bias are unused (may be null)
      } else {
        const float r = __fdiv_rn(*gamma, scale[m0 + m]);
        y[(m0 + m) * N + n] = from_float<T>(epilogue(a, r, bias, n));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Prefill GEMM: int8 tensor cores, mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32.
// Block = 4 warps = 64 rows x (32 NT) columns; warp w owns the NT n-blocks 4 w * NT / 4 ... (NT per
// warp, 8 columns each) for all 64 rows (4 m-tiles), so each A fragment feeds NT MMAs and each B
// fragment 4. The activation tile (64 x 128 int8 per stage) is double-buffered in shared memory with
// cp.async (row stride 144 bytes: ldmatrix rows fall on distinct banks); A fragments come from one
// ldmatrix.x4 per m-tile. Weights are decoded straight into B-fragment registers: thread
// (g = lane / 4, t = lane % 4) needs column g, k = 4 t + 0..3 of k-block 2 s (b0) and of k-block
// 2 s + 1 (b1), i.e. bit pair t of column g's word. Tails: rows >= M and k >= 16 KB are zero-filled by
// cp.async; k-blocks >= KB decode from zero words; columns >= N are not stored.
// ---------------------------------------------------------------------------------------------------
constexpr int kGemmThreads = 128;
constexpr int kGemmWarps = kGemmThreads / 32;
constexpr int kGemmBM = 64;
constexpr int kGemmBK = 128;               // int8 activations (8 k-blocks) per shared-memory stage
constexpr int kGemmStride = kGemmBK + 16;  // bytes per shared row
constexpr int kGemmStages = 2;

__device__ __forceinline__ void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(LMOPS_CUDA_EMULATE)
  ::lmops_emu::mma_s8_16832(c, a, b0, b1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // built for sm_80+ only
#endif
}

// A fragment of m16n8k32 (.s8, row-major): a0 = (row g, k 4t..4t+3), a1 = (row g+8, k 4t..), a2 = (row g,
// k 16+4t..), a3 = (row g+8, k 16+4t..). As four 8x8 b16 matrices: rows 0-7 / 8-15 x k bytes 0-15 /
// 16-31; lane l supplies the address of row (l % 8) + 8 ((l / 8) % 2), byte 16 (l / 16).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const int8_t* smem_row) {
#if defined(LMOPS_CUDA_EMULATE)
  ::lmops_emu::ldmatrix_x4(a, smem_row);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
#else
  __trap();
#endif
}

// 16-byte global -> shared copy, zero-filled when !pred (no bytes are read then).
__device__ __forceinline__ void cp_async_16(int8_t* smem, const int8_t* gmem, bool pred) {
#if defined(LMOPS_CUDA_EMULATE)
  for (int i = 0; i < 16; ++i) smem[i] = pred ? gmem[i] : static_cast<int8_t>(0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(pred ? 16 : 0));
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

template <typename T, int NT>
__global__ void __launch_bounds__(kGemmThreads)
    ternary_gemm_kernel(const int8_t* __restrict__ xq, const float* __restrict__ scale,
                        const int32_t* __restrict__ rowsum, int64_t M, int64_t ldq,
                        const uint8_t* __restrict__ packed, int64_t N, int64_t KB,
                        const float* __restrict__ gamma, Bias bias, T* __restrict__ y) {
  __shared__ __align__(128) int8_t xs[kGemmStages][kGemmBM * kGemmStride];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmBM;
  const int64_t NB = (N + 7) / 8, full = N / 8;
  const int64_t K16 = KB * 16;
  const int64_t stages = (K16 + kGemmBK - 1) / kGemmBK;

  // This thread's weight column g of each of the warp's NT n-blocks: word of k-block kb at
  // colp[j] + kb * kbstride[j] (null: column outside the matrix, decodes as zero codes).
  const uint8_t* colp[NT];
  int64_t kbstride[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t nb = (static_cast<int64_t>(blockIdx.x) * kGemmWarps + warp) * NT + j;
    const int w = nb < full ? 8 : (nb < NB ? static_cast<int>(N - full * 8) : 0);
    colp[j] = nullptr;
    kbstride[j] = 0;
    if (g < w) {
      colp[j] = nb < full ? packed + nb * KB * 32 + 4 * g : packed + full * KB * 32 + 4 * g;
      kbstride[j] = nb < full ? 32 : 4 * w;
    }
  }

  int32_t acc[kGemmBM / 16][NT][4];
#pragma unroll
  for (int i = 0; i < kGemmBM / 16; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0;

  // Each thread copies (64 rows x 8 chunks of 16 bytes) / 128 threads = 4 chunks per stage.
  auto load_stage = [&](int buf, int64_t k0) {
#pragma unroll
    for (int i = 0; i < kGemmBM * (kGemmBK / 16) / kGemmThreads; ++i) {
      const int idx = tid + i * kGemmThreads;
      const int r = idx / (kGemmBK / 16), cc = (idx % (kGemmBK / 16)) * 16;
      const bool ok = m0 + r < M && k0 + cc < K16;
      cp_async_16(&xs[buf][r * kGemmStride + cc], ok ? xq + (m0 + r) * ldq + k0 + cc : xq, ok);
    }
    cp_async_commit();
  };

  load_stage(0, 0);
  for (int64_t s = 0; s < stages; ++s) {
    const int buf = static_cast<int>(s & 1);
    if (s + 1 < stages) {
      load_stage(buf ^ 1, (s + 1) * kGemmBK);
      cp_async_wait<1>();  // this stage's copies are done; the next stage's may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int8_t* tile = xs[buf];
#pragma unroll
    for (int ks = 0; ks < kGemmBK / 32; ++ks) {
      const int64_t kb0 = s * (kGemmBK / 16) + 2 * ks;
      uint32_t b0[NT], b1[NT];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        uint32_t w0 = 0, w1 = 0;
        if (colp[j] != nullptr) {
          if (kb0 < KB) w0 = __ldg(reinterpret_cast<const uint32_t*>(colp[j] + kb0 * kbstride[j]));
          if (kb0 + 1 < KB) w1 = __ldg(reinterpret_cast<const uint32_t*>(colp[j] + (kb0 + 1) * kbstride[j]));
        }
        b0[j] = (w0 >> (2 * t)) & kCodeMask;
        b1[j] = (w1 >> (2 * t)) & kCodeMask;
      }
#pragma unroll
      for (int mt = 0; mt < kGemmBM / 16; ++mt) {
        uint32_t a[4];
        const int row = mt * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
        ldmatrix_x4(a, tile + row * kGemmStride + ks * 32 + 16 * (lane >> 4));
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_s8_16832(acc[mt][j], a, b0[j], b1[j]);
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites the buffer just read
  }

  constexpr bool kRaw = std::is_same<T, int32_t>::value;  // ternary_matmul_int: no rescale
  const float gm = kRaw ? 0.f : *gamma;
  // Accumulator fragment: c[h * 2 + i] is row g + 8 h, column 2 t + i of the n-block.
#pragma unroll
  for (int mt = 0; mt < kGemmBM / 16; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + mt * 16 + g + 8 * h;
      if (m >= M) continue;
      const float r = kRaw ? 0.f : __fdiv_rn(gm, scale[m]);
      const int32_t rs = rowsum[m];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int64_t nb = (static_cast<int64_t>(blockIdx.x) * kGemmWarps + warp) * NT + j;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int64_t n = nb * 8 + 2 * t + i;
          if (n < N) {
            if constexpr (kRaw) {
              y[m * N + n] = acc[mt][j][h * 2 + i] - rs;
            } else {
              y[m * N + n] = from_float<T>(epilogue(acc[mt][j][h * 2 + i] - rs, r, bias, n));
            }
          }
        }
      }
    }
}

template <typename T, int NT>
void gemm_launch(int64_t M, int64_t NB, const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t ldq,
                 const uint8_t* packed, int64_t N, int64_t KB, const float* gamma, Bias bias, T* y,
                 cudaStream_t stream) {
  const int64_t per_block = static_cast<int64_t>(kGemmWarps) * NT;
  const dim3 grid(static_cast<unsigned>((NB + per_block - 1) / per_block),
                  static_cast<unsigned>((M + kGemmBM - 1) / kGemmBM));
  const auto kernel = ternary_gemm_kernel<T, NT>;
  LMOPS_LAUNCH(kernel, grid, kGemmThreads, stream, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y);
}

// Multiprocessors of the current device (cached per device; a host attribute query, no sync).
int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) {
    int n = 0;
    cached[dev] = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && n > 0 ? n : 132;
  }
  return cached[dev];
}

template <typename T, int MT>
void gemv_launch(dim3 grid, const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M, int64_t ldq,
                 const uint8_t* packed, int64_t N, int64_t KB, const float* gamma, Bias bias, T* y,
                 cudaStream_t stream) {
  grid.y = static_cast<unsigned>((M + MT - 1) / MT);
  const auto kernel = ternary_gemv_kernel<T, MT>;
  LMOPS_LAUNCH(kernel, grid, kGemvThreads, stream, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y);
}

}  // namespace

template <typename T>
cudaError_t launch_quantize_rows(const T* x, int64_t M, int64_t K, int64_t ldq, float qmax, int8_t* q, float* scale,
                                 int32_t* rowsum, cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  const auto kernel = quantize_rows_kernel<T>;
  LMOPS_LAUNCH(kernel, dim3(static_cast<unsigned>(M)), kQuantThreads, stream, x, K, ldq, qmax, q, scale, rowsum);
  return cudaGetLastError();
}

cudaError_t launch_pad_rows(const int8_t* x, int64_t M, int64_t K, int64_t ldx, int64_t ldq, int8_t* q,
                            int32_t* rowsum, cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  LMOPS_LAUNCH(pad_rows_kernel, dim3(static_cast<unsigned>(M)), kQuantThreads, stream, x, K, ldx, ldq, q, rowsum);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ternary_gemv(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                Bias bias, T* y, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const int64_t KB = (K + 15) / 16;
  const dim3 grid(static_cast<unsigned>((N + 7) / 8), 1);
  if (M <= 1) {
    gemv_launch<T, 1>(grid, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y, stream);
  } else if (M <= 2) {
    gemv_launch<T, 2>(grid, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y, stream);
  } else if (M <= 4) {
    gemv_launch<T, 4>(grid, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y, stream);
  } else if (M <= 8) {
    gemv_launch<T, 8>(grid, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y, stream);
  } else {
    gemv_launch<T, 16>(grid, xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y, stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ternary_gemm(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                Bias bias, T* y, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const int64_t KB = (K + 15) / 16;
  const int64_t NB = (N + 7) / 8;
  // Widest warp tile (most reuse of each A fragment) that still gives every SM a block (up to three
  // fit per SM by registers): short prefills (few 64-row tiles) get narrower tiles, not idle SMs.
  const int64_t m_tiles = (M + kGemmBM - 1) / kGemmBM;
  const int64_t want = sm_count();
  if (m_tiles * ((NB + 4 * kGemmWarps - 1) / (4 * kGemmWarps)) >= want) {
    gemm_launch<T, 4>(M, NB, xq, scale, rowsum, ldq, packed, N, KB, gamma, bias, y, stream);
  } else if (m_tiles * ((NB + 2 * kGemmWarps - 1) / (2 * kGemmWarps)) >= want) {
    gemm_launch<T, 2>(M, NB, xq, scale, rowsum, ldq, packed, N, KB, gamma, bias, y, stream);
  } else {
    gemm_launch<T, 1>(M, NB, xq, scale, rowsum, ldq, packed, N, KB, gamma, bias, y, stream);
  }
  return cudaGetLastError();
}

#define LMOPS_INSTANTIATE_QUANT(T)                                                                                \
  template cudaError_t launch_quantize_rows<T>(const T*, int64_t, int64_t, int64_t, float, int8_t*, float*,      \
                                               int32_t*, cudaStream_t);
#define LMOPS_INSTANTIATE(T)                                                                                      \
  template cudaError_t launch_ternary_gemv<T>(const int8_t*, const float*, const int32_t*, int64_t, int64_t,      \
                                              const uint8_t*, int64_t, int64_t, const float*, Bias, T*,           \
                                              cudaStream_t);                                                     \
  template cudaError_t launch_ternary_gemm<T>(const int8_t*, const float*, const int32_t*, int64_t, int64_t,      \
                                              const uint8_t*, int64_t, int64_t, const float*, Bias, T*,           \
                                              cudaStream_t);

LMOPS_INSTANTIATE_QUANT(float)
LMOPS_INSTANTIATE_QUANT(__half)
LMOPS_INSTANTIATE_QUANT(__nv_bfloat16)
LMOPS_INSTANTIATE(float)
LMOPS_INSTANTIATE(__half)
LMOPS_INSTANTIATE(__nv_bfloat16)
LMOPS_INSTANTIATE(int32_t)
#undef LMOPS_INSTANTIATE
#undef LMOPS_INSTANTIATE_QUANT

}  // namespace cuda
}  // namespace lmops
