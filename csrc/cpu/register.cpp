// The CPU kernels as the CPU-key implementations of the lmops:: ops (schemas: lmops_kernels/schemas.def).
// Inputs were validated once at the op boundary (lmops_kernels/ternary.py); the kernels keep only the
// checks their memory safety needs. The ISA is the one set_isa chose (LMOPS_CPU_ISA).
#include <torch/library.h>

#include "../mole_weights.h"
#include "../packing.h"
#include "bf16_gemv.h"
#include "int8_gemv.h"
#include "mole.h"
#include "ternary.h"

namespace {

using lmops::cpu::current_isa;

std::tuple<at::Tensor, at::Tensor> quantize_activation_absmax(const at::Tensor& x, int64_t bits) {
  const int64_t K = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  auto [q, s] = lmops::cpu::quantize_activation_absmax(x2, bits);
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = 1;
  return {q.view(x.sizes()), s.view(scale_shape)};
}

at::Tensor ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed, c10::string_view layout) {
  return lmops::cpu::ternary_matmul_int(x_q, lmops::as_tiled(packed, layout).contiguous(), current_isa());
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                          const std::optional<at::Tensor>& bias, c10::string_view layout) {
  return lmops::cpu::ternary_linear(x.contiguous(), lmops::as_tiled(packed, layout).contiguous(), weight_scale, bias,
                                    current_isa());
}

std::vector<at::Tensor> ternary_linear_multi(const at::Tensor& x, at::TensorList packed, at::TensorList weight_scale,
                                             const c10::List<std::optional<at::Tensor>>& bias, c10::string_view layout) {
  std::vector<at::Tensor> tiled;
  for (const at::Tensor& p : packed) tiled.push_back(lmops::as_tiled(p, layout).contiguous());
  std::vector<std::optional<at::Tensor>> b(bias.begin(), bias.end());
  return lmops::cpu::ternary_linear_multi(x.contiguous(), tiled, weight_scale.vec(), b, current_isa());
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias) {
  return lmops::cpu::int8_linear(x.contiguous(), weight.contiguous(), weight_scale, bias, current_isa());
}

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return lmops::cpu::bf16_linear(x.contiguous(), weight.contiguous(), bias, current_isa());
}

// x (T, K): the public wrapper flattens the leading dimensions. The weight-only tensors come from the
// cache of mole_weights.h.
std::tuple<at::Tensor, at::Tensor> mole_gate(const at::Tensor& x, const at::Tensor& lora_A, const at::Tensor& lora_B,
                                             const at::Tensor& scaling, const at::Tensor& gate_weight,
                                             const std::optional<at::Tensor>& norm_weight,
                                             const std::optional<at::Tensor>& norm_bias, const at::Tensor& temperature,
                                             const std::optional<at::Tensor>& expert_mask, c10::string_view norm,
                                             double eps) {
  const lmops::MoleWeights w = lmops::mole_weights(lora_A, lora_B, gate_weight, norm_weight, norm_bias);
  return lmops::cpu::mole_gate_forward(x, w.a, w.wy, w.b1, w.gram, w.p, w.c, w.d, scaling, temperature, expert_mask,
                                       std::string(norm), eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmops, CPU, m) {
  m.impl("bf16_linear", &bf16_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("mole_gate", &mole_gate);
  m.impl("quantize_activation_absmax", &quantize_activation_absmax);
  m.impl("ternary_matmul_int", &ternary_matmul_int);
  m.impl("ternary_linear", &ternary_linear);
  m.impl("ternary_linear_multi", &ternary_linear_multi);
}
