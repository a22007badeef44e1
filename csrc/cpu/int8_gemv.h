// CPU entry point of lmops::int8_linear (W8A8, per-output-channel weight scales).
// Semantics: lmops_kernels/reference/int8.py; contract: lmops_kernels/int8.py.
#pragma once
#include <ATen/ATen.h>

#include "ternary.h"  // Isa

namespace lmops {
namespace cpu {

// x: (..., K) contiguous float32|bfloat16|float16; weight: (N, K) int8 contiguous; weight_scale: (N,) float32;
// bias: (N,) floating or none -> (..., N) in x's dtype.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const c10::optional<at::Tensor>& bias, Isa isa);

}  // namespace cpu
}  // namespace lmops
