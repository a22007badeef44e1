// CPU forward of lmops::mole_gate, the MoLE gate computed in rank space.
// Semantics: lmops_kernels/reference/mole.py; algebra and the weight-only tensors: lmops_kernels/mole_rank.py.
#pragma once
#include <ATen/ATen.h>
#include <string>
#include <tuple>

namespace lmops {
namespace cpu {

// x: (T, K) float32|bfloat16|float16.
// Weight-only tensors, float32 contiguous, from lmops_kernels.mole_rank (N experts, rank R, O outputs):
//   a (N*R, K) stacked A_i;  wy (N*R, O) stacked B_i^T;  b1 (N*R,) B_i^T 1;  gram (N, R, R) B_i^T B_i;
//   p (N*R, N) B_i^T (w_i * W_{j,i});  c (N,) W w;  d (N,) W b.
// scaling (N,) floating; temperature: one element; expert_mask (N,) bool or none;
// norm: "layernorm" | "rmsnorm" | "l2".
// Returns (y (T, O) in x's dtype, gates (T, N) float32).
std::tuple<at::Tensor, at::Tensor> mole_gate_forward(const at::Tensor& x, const at::Tensor& a, const at::Tensor& wy,
                                                     const at::Tensor& b1, const at::Tensor& gram,
                                                     const at::Tensor& p, const at::Tensor& c, const at::Tensor& d,
                                                     const at::Tensor& scaling, const at::Tensor& temperature,
                                                     const c10::optional<at::Tensor>& expert_mask,
                                                     const std::string& norm, double eps);

}  // namespace cpu
}  // namespace lmops
