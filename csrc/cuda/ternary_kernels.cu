// W2A8 ternary kernels for NVIDIA GPUs (sm_80, sm_90). See ternary_kernels.cuh for the contract.
// Compile-tested in CI (tests/kernels/test_cuda_compile.py); run and checked on a GPU by tests/kernels/test_gpu_cuda.py.
#include "ternary_kernels.cuh"

#include <math.h>

#include <type_traits>

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
__device__ __forceinline__ float epilogue(int32_t acc, float r, const float* bias, int64_t n) {
  float v = __fmul_rn(static_cast<float>(acc), r);
  if (bias != nullptr) v = __fadd_rn(v, bias[n]);
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

__device__ __forceinline__ uint4 load_weights_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <typename T, int MT>
__global__ void __launch_bounds__(kGemvThreads)
    ternary_gemv_kernel(const int8_t* __restrict__ xq, const float* __restrict__ scale,
                        const int32_t* __restrict__ rowsum, int64_t M, int64_t ldq,
                        const uint8_t* __restrict__ packed, int64_t N, int64_t KB,
                        const float* __restrict__ gamma, const float* __restrict__ bias, T* __restrict__ y) {
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
    for (int64_t i = tid; i < 2 * KB; i += kGemvThreads) {
      const uint4 wv = load_weights_streaming(wp + i);
      const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
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
// Block = 4 warps = 64 rows x 32 columns (4 n-blocks, one per warp). The activation tile (64 x 128
// int8) is staged in shared memory (row stride 144 bytes: conflict-free fragment reads); the weights
// are decoded straight into B-fragment registers: thread (g = lane / 4, t = lane % 4) needs column g,
// k = 4 t + 0..3 of k-block 2 s (b0) and of k-block 2 s + 1 (b1), i.e. bit pair t of column g's word.
// Tails: rows >= M and k-blocks >= KB are zero in shared memory / zero codes; columns >= N are not
// stored (the narrower last n-block reads only its w columns).
// ---------------------------------------------------------------------------------------------------
constexpr int kGemmThreads = 128;
constexpr int kGemmBM = 64;
constexpr int kGemmBK = 128;                 // int8 activations (8 k-blocks) per shared-memory stage
constexpr int kGemmStride = kGemmBK + 16;    // bytes per shared row

__device__ __forceinline__ void mma_s8_16832(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // built for sm_80+ only
#endif
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    ternary_gemm_kernel(const int8_t* __restrict__ xq, const float* __restrict__ scale,
                        const int32_t* __restrict__ rowsum, int64_t M, int64_t ldq,
                        const uint8_t* __restrict__ packed, int64_t N, int64_t KB,
                        const float* __restrict__ gamma, const float* __restrict__ bias, T* __restrict__ y) {
  __shared__ __align__(16) int8_t xs[kGemmBM * kGemmStride];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmBM;
  const int64_t nb = static_cast<int64_t>(blockIdx.x) * (kGemmThreads / 32) + warp;
  const int64_t NB = (N + 7) / 8, full = N / 8;
  const int w = nb < full ? 8 : (nb < NB ? static_cast<int>(N - full * 8) : 0);

  // This thread's weight column g: its word of k-block kb is at colp + kb * kbstride.
  const uint8_t* colp = nullptr;
  int64_t kbstride = 0;
  if (g < w) {
    if (nb < full) {
      colp = packed + nb * KB * 32 + 4 * g;
      kbstride = 32;
    } else {
      colp = packed + full * KB * 32 + 4 * g;
      kbstride = 4 * w;
    }
  }

  int32_t acc[kGemmBM / 16][4];
#pragma unroll
  for (int i = 0; i < kGemmBM / 16; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;

  const int64_t K16 = KB * 16;
  for (int64_t k0 = 0; k0 < K16; k0 += kGemmBK) {
    __syncthreads();
    for (int i = tid; i < kGemmBM * (kGemmBK / 16); i += kGemmThreads) {
      const int r = i / (kGemmBK / 16), cc = (i % (kGemmBK / 16)) * 16;
      int4 v = make_int4(0, 0, 0, 0);
      if (m0 + r < M && k0 + cc < K16) v = __ldg(reinterpret_cast<const int4*>(xq + (m0 + r) * ldq + k0 + cc));
      *reinterpret_cast<int4*>(xs + r * kGemmStride + cc) = v;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kGemmBK / 32; ++ks) {
      const int64_t kb0 = (k0 >> 4) + 2 * ks;
      uint32_t w0 = 0, w1 = 0;
      if (colp != nullptr) {
        if (kb0 < KB) w0 = __ldg(reinterpret_cast<const uint32_t*>(colp + kb0 * kbstride));
        if (kb0 + 1 < KB) w1 = __ldg(reinterpret_cast<const uint32_t*>(colp + (kb0 + 1) * kbstride));
      }
      const uint32_t b0 = (w0 >> (2 * t)) & kCodeMask;
      const uint32_t b1 = (w1 >> (2 * t)) & kCodeMask;
#pragma unroll
      for (int mt = 0; mt < kGemmBM / 16; ++mt) {
        const int8_t* ap = xs + (mt * 16 + g) * kGemmStride + ks * 32 + 4 * t;
        const uint32_t a0 = *reinterpret_cast<const uint32_t*>(ap);                        // row g,   k 4t
        const uint32_t a1 = *reinterpret_cast<const uint32_t*>(ap + 8 * kGemmStride);       // row g+8, k 4t
        const uint32_t a2 = *reinterpret_cast<const uint32_t*>(ap + 16);                   // row g,   k 16+4t
        const uint32_t a3 = *reinterpret_cast<const uint32_t*>(ap + 8 * kGemmStride + 16);  // row g+8, k 16+4t
        mma_s8_16832(acc[mt], a0, a1, a2, a3, b0, b1);
      }
    }
  }

  if (w == 0) return;
  constexpr bool kRaw = std::is_same<T, int32_t>::value;  // ternary_matmul_int: no rescale
  const float gm = kRaw ? 0.f : *gamma;
  // Accumulator fragment: c[h * 2 + i] is row g + 8 h, column 2 t + i.
#pragma unroll
  for (int mt = 0; mt < kGemmBM / 16; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + mt * 16 + g + 8 * h;
      if (m < M) {
        const float r = kRaw ? 0.f : __fdiv_rn(gm, scale[m]);
        const int32_t rs = rowsum[m];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int c = 2 * t + i;
          if (c < w) {
            const int64_t n = nb * 8 + c;
            if constexpr (kRaw) {
              y[m * N + n] = acc[mt][h * 2 + i] - rs;
            } else {
              y[m * N + n] = from_float<T>(epilogue(acc[mt][h * 2 + i] - rs, r, bias, n));
            }
          }
        }
      }
    }
}

template <typename T, int MT>
void gemv_launch(dim3 grid, const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M, int64_t ldq,
                 const uint8_t* packed, int64_t N, int64_t KB, const float* gamma, const float* bias, T* y,
                 cudaStream_t stream) {
  grid.y = static_cast<unsigned>((M + MT - 1) / MT);
  ternary_gemv_kernel<T, MT><<<grid, kGemvThreads, 0, stream>>>(xq, scale, rowsum, M, ldq, packed, N, KB, gamma,
                                                               bias, y);
}

}  // namespace

template <typename T>
cudaError_t launch_quantize_rows(const T* x, int64_t M, int64_t K, int64_t ldq, float qmax, int8_t* q, float* scale,
                                 int32_t* rowsum, cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  quantize_rows_kernel<T><<<static_cast<unsigned>(M), kQuantThreads, 0, stream>>>(x, K, ldq, qmax, q, scale, rowsum);
  return cudaGetLastError();
}

cudaError_t launch_pad_rows(const int8_t* x, int64_t M, int64_t K, int64_t ldx, int64_t ldq, int8_t* q,
                            int32_t* rowsum, cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  pad_rows_kernel<<<static_cast<unsigned>(M), kQuantThreads, 0, stream>>>(x, K, ldx, ldq, q, rowsum);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ternary_gemv(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                const float* bias, T* y, cudaStream_t stream) {
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
                                const float* bias, T* y, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const int64_t KB = (K + 15) / 16;
  const int64_t NB = (N + 7) / 8;
  const dim3 grid(static_cast<unsigned>((NB + 3) / 4), static_cast<unsigned>((M + kGemmBM - 1) / kGemmBM));
  ternary_gemm_kernel<T><<<grid, kGemmThreads, 0, stream>>>(xq, scale, rowsum, M, ldq, packed, N, KB, gamma, bias, y);
  return cudaGetLastError();
}

#define LMOPS_INSTANTIATE_QUANT(T)                                                                                \
  template cudaError_t launch_quantize_rows<T>(const T*, int64_t, int64_t, int64_t, float, int8_t*, float*,      \
                                               int32_t*, cudaStream_t);
#define LMOPS_INSTANTIATE(T)                                                                                      \
  template cudaError_t launch_ternary_gemv<T>(const int8_t*, const float*, const int32_t*, int64_t, int64_t,      \
                                              const uint8_t*, int64_t, int64_t, const float*, const float*, T*,  \
                                              cudaStream_t);                                                     \
  template cudaError_t launch_ternary_gemm<T>(const int8_t*, const float*, const int32_t*, int64_t, int64_t,      \
                                              const uint8_t*, int64_t, int64_t, const float*, const float*, T*,  \
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
