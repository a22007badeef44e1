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
//   - gamma is a device pointer to one float32 (no host read: CUDA-graph safe); bias is null or a
//     device (N,) float32; scale/rowsum are (M,) from launch_quantize_rows; y is (M, N) contiguous T.
//   - No launcher allocates, synchronizes or reads device memory on the host: all are capturable in a
//     CUDA graph. Each returns cudaGetLastError() of its launch (cudaSuccess for empty problems).
//
// BINDING PLAN (not wired yet; the lead adds it when a GPU can validate it):
//   csrc/cuda/bindings.cpp (compiled by setup.py's CUDAExtension with -DLMOPS_WITH_CUDA) would
//   #include <ATen/ATen.h>, <ATen/cuda/CUDAContext.h>, <c10/cuda/CUDAGuard.h>, <torch/library.h> and
//   this header, and register TORCH_LIBRARY_IMPL(lmops, CUDA, m) for the schemas already declared in
//   lmops_kernels/ops.py:
//   * quantize_activation_absmax(x, bits): TORCH_CHECK(bits == 8) (the CUDA path is 8-bit only; other
//     bits fall back or error), x CUDA, dtype in {float, half, bfloat16}; x = x.contiguous();
//     c10::cuda::CUDAGuard guard(x.device()); M = numel / K; q = at::empty_like(x, kChar);
//     scale = at::empty({..., 1}, kFloat); stream = at::cuda::getCurrentCUDAStream();
//     AT_DISPATCH over the three dtypes (at::Half -> __half, at::BFloat16 -> __nv_bfloat16 via
//     reinterpret_cast of data_ptr) -> launch_quantize_rows<T>(x, M, K, /*ldq=*/K, q, scale,
//     /*rowsum=*/nullptr, stream); C10_CUDA_CHECK on the returned error.
//   * ternary_linear(x, packed, weight_scale, bias): check x/packed/weight_scale/bias all on the same
//     CUDA device (error naming both sides otherwise), packed uint8 contiguous of shape
//     (N, 4 * ceil(K / 16)) and data_ptr % 16 == 0 (else .clone() it), weight_scale float32 numel 1
//     (.to(kFloat) if not), bias (N,) -> bias.to(kFloat).contiguous(); ldq = 16 * ceil(K / 16);
//     workspace: one at::empty of M * ldq int8 + M float + M int32 (caching allocator: graph-safe);
//     launch_quantize_rows<T>(x, M, K, ldq, xq, s, rowsum, stream); then
//     M <= 16 ? launch_ternary_gemv<T>(...) : launch_ternary_gemm<T>(...) into y = at::empty({..., N}, x).
//   * ternary_matmul_int could reuse the GEMM with a raw int32 epilogue (not provided here).
//   Then lmops_kernels/dispatch.py marks the "cuda" backend available when _native reports it, and
//   the GPU tests (@pytest.mark.gpu) compare against the reference on odd shapes (N % 8 != 0,
//   K % 16 != 0, K % 32 == 16 for the GEMM's half k-step, M in {1, 3, 16, 17, 65}, NaN rows).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace lmops {
namespace cuda {

// Per-row absmax int8 quantization. One block per row. x: (M, K) contiguous; q: (M, ldq), ldq >= K,
// columns [K, ldq) written as zero; scale: (M,) float32; rowsum: (M,) sum of the q row, or null.
template <typename T>
cudaError_t launch_quantize_rows(const T* x, int64_t M, int64_t K, int64_t ldq, int8_t* q, float* scale,
                                 int32_t* rowsum, cudaStream_t stream);

// Decode GEMV (intended for M <= 16; any M works, rows are processed 16 at a time per grid row).
// y[m, n] = float(sum_k xq[m, k] * q[n, k]) * (gamma / scale[m]) (+ bias[n]).
template <typename T>
cudaError_t launch_ternary_gemv(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                const float* bias, T* y, cudaStream_t stream);

// Prefill GEMM (int8 mma.sync m16n8k32 tensor cores, sm_80+); same contract and result as the GEMV.
template <typename T>
cudaError_t launch_ternary_gemm(const int8_t* xq, const float* scale, const int32_t* rowsum, int64_t M,
                                int64_t ldq, const uint8_t* packed, int64_t N, int64_t K, const float* gamma,
                                const float* bias, T* y, cudaStream_t stream);

}  // namespace cuda
}  // namespace lmops
