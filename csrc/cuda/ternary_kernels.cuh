// CUDA kernels of the W2A8 ternary linear (BitNet b1.58): activation quantization, decode GEMV,
// prefill GEMM. Plain CUDA: no torch/ATen include, so nvcc compiles this standalone
// (tests/kernels/test_cuda_compile.py). Targets sm_80 and sm_90 (int8 mma.sync needs sm_80+).
//
// Semantics are those of lmops_kernels/reference/ternary.py, bit for bit in float32:
//   s = (1 / max(absmax(x_row), 1e-5)) * 127 (reciprocal then multiply, both IEEE round-to-nearest),
//   q = clamp(rint(x * s), -128, 127); a row holding NaN/Inf gets s = NaN and q = 0;
//   y = float(acc) * (gamma / s) [+ bias], float32, no FMA contraction, then cast to T.
// Weights use the lmops tiled 2-bit layout (lmops_kernels/reference/packing.py): per n-block of 8
// output columns (the last may hold w < 8, taking 4 * w bytes per k-block), per k-block of 16 inputs,
// byte c * 4 + kk, bit pair j = code (q + 1) of weight (n = 8 nb + c, k = 16 kb + 4 j + kk).
// Decoding bit pair j of the 32-bit word of column c gives the 4 codes of k = 16 kb + 4 j + 0..3, i.e.
// exactly one dp4a operand against 4 consecutive int8 activations, and exactly one B-fragment register
// of mma.m16n8k32 (thread (g, t) holds column g, k = 4 t + 0..3 and 16 + 4 t + 0..3).
// Codes are unsigned (0..2), so both kernels compute acc = sum(codes * xq) - rowsum(xq).
//
// Contracts every caller must meet (the kernels do not check them):
//   - xq is (M, ldq) int8 with ldq a multiple of 16, ldq >= 16 * ceil(K / 16), padding columns zero
//     (launch_quantize_rows writes exactly that); xq 16-byte aligned.
//   - packed is the contiguous (N, 4 * ceil(K / 16)) uint8 tiled packing, 16-byte aligned.
//   - gamma is a device pointer to one float32 (no host read: CUDA-graph safe); bias is Bias{} (none)
//     or a device (N,) vector in float32, float16 or bfloat16; scale/rowsum are (M,) from launch_quantize_rows; y is (M, N) contiguous T.
//   - No launcher allocates, synchronizes or reads device memory on the host: all are capturable in a
//     CUDA graph. Each returns cudaGetLastError() of its launch (cudaSuccess for empty problems).
//
// Bindings: csrc/cuda/ops_cuda.cpp (the torch-facing functions, registered as the `cuda` backend by
// lmops_kernels/backends/cuda.py). GPU tests: tests/kernels/test_gpu_cuda.py (@pytest.mark.gpu).
#pragma once

#ifdef LMOPS_CUDA_EMULATE  // CPU emulation for CI without a GPU: tests/kernels/test_cuda_emulated.py
#include "cuda_emu.h"  // tests/kernels/cuda_emu/, on the include path of the emulated build only
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif
#include <stdint.h>

namespace lmops {
namespace cuda {

// The optional (N,) bias of ternary_linear, in its own dtype (read on the device, widened to float32).
enum class BiasType : int { kNone = 0, kFloat = 1, kHalf = 2, kBFloat16 = 3 };
struct Bias {
  const void* data = nullptr;
  BiasType type = BiasType::kNone;
};

// Per-row absmax quantization. One block per row. x: (M, K) contiguous; qmax = 2^(bits-1) - 1 (127 for
// int8), q in [-qmax - 1, qmax]; q: (M, ldq), ldq >= K, columns [K, ldq) written as zero; scale: (M,)
// float32; rowsum: (M,) sum of the q row, or null.
template <typename T>
cudaError_t launch_quantize_rows(const T* x, int64_t M, int64_t K, int64_t ldq, float qmax, int8_t* q, float* scale,
                                 int32_t* rowsum, cudaStream_t stream);

// Zero-padded copy of already-quantized rows: x (M, K) int8 with row stride ldx -> q (M, ldq), and
// rowsum (M,) int32 (what the matmul kernels subtract). For ternary_matmul_int.
cudaError_t launch_pad_rows(const int8_t* x, int64_t M, int64_t K, int64_t ldx, int64_t ldq, int8_t* q,
                            int32_t* rowsum, cudaStream_t stream);

// Decode GEMV (intended for M <= 16; any M works, rows are processed 16 at a time per grid row).
// y[m, n] = float(sum_k xq[m, k] * q[n, k]) * (gamma / scale[m]) (+ bias[n]). With T = int32_t, y is the
// exact integer product and gamma, scale and bias are not read (pass null and Bias{}).
template <typename T>
cudaError_t launch_ternary_gemv(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                Bias bias, T* y, cudaStream_t stream);

// Prefill GEMM (int8 mma.sync m16n8k32 tensor cores, sm_80+); same contract and result as the GEMV.
template <typename T>
cudaError_t launch_ternary_gemm(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                Bias bias, T* y, cudaStream_t stream);

}  // namespace cuda
}  // namespace lmops
