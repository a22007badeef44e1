// The weight-only tensors of the MoLE gate in rank space (lmops_kernels/mole_rank.py has the algebra),
// float32 and contiguous, cached per weight set. Device-generic (ATen ops): the CPU kernel and the
// Triton backend (through the op lmops::mole_gate_weights) share the cache.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace lmops {

struct MoleWeights {
  at::Tensor a;     // (N*r, K)  A_i stacked
  at::Tensor wy;    // (N*r, O)  B_i^T stacked
  at::Tensor b1;    // (N*r,)    B_i^T 1
  at::Tensor gram;  // (N, r, r) B_i^T B_i
  at::Tensor p;     // (N*r, N)  B_i^T (w_i * W_{j,i})
  at::Tensor c;     // (N,)      W w
  at::Tensor d;     // (N,)      W b (zeros without a bias)
};

// Computed once per weight set: an entry is valid while every tensor is alive and unchanged (version
// counters: in-place updates by optimizers bump them; writes through .data do not and are not seen). A new
// version of the gate alone keeps the expert part (gate training). Inference tensors have no version
// counter and are not cached.
MoleWeights mole_weights(const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& gate_weight,
                         const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias);

void clear_mole_weights_cache();

}  // namespace lmops
