// CPU entry point of lmops::bf16_linear (bfloat16 weights, float32 accumulation; a decode GEMV).
// Semantics: lmops_kernels/reference/bf16.py; contract: lmops_kernels/bf16.py.
#pragma once
#include <ATen/ATen.h>

#include "ternary.h"  // Isa

namespace lmops {
namespace cpu {

// x: (..., K) contiguous float32|bfloat16|float16; weight: (N, K) bfloat16 contiguous; bias: (N,) floating
// or none -> (..., N) in x's dtype.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       Isa isa);

}  // namespace cpu
}  // namespace lmops
