// Torch-facing entry points of the CUDA kernels (csrc/cuda/ternary_kernels.cu): the `cuda` backend of
// the lmops ops, registered at the CUDA dispatch key at the end of ops_cuda.cpp (built only with
// LMOPS_WITH_CUDA). Semantics, shapes and dtypes: lmops_kernels/ternary.py. ATen only, no CUDA header.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace lmops {
namespace cuda {

// x (..., K) float32|float16|bfloat16 on CUDA -> (q int8 (..., K), scale float32 (..., 1)).
std::tuple<at::Tensor, at::Tensor> quantize_activation_absmax(const at::Tensor& x, int64_t bits);

// x_q (M, K) int8, packed (N, 4 ceil(K / 16)) uint8 tiled layout -> (M, N) int32, exact.
at::Tensor ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed);

// x (..., K) float, packed tiled layout, weight_scale one float element, bias (N,) or none ->
// (..., N) in x's dtype. M <= 16 rows take the dp4a GEMV, more rows the int8 mma.sync GEMM.
at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                          const std::optional<at::Tensor>& bias);

// Rows at or below which ternary_linear uses the decode GEMV rather than the tensor-core GEMM.
constexpr int64_t kGemvMaxRows = 16;

}  // namespace cuda
}  // namespace lmops
