// The CPU kernels as the CPU-key implementations of the lmops:: ops (schemas: lmops_kernels/schemas.def).
// Inputs were validated once at the op boundary (lmops_kernels/ternary.py); the kernels keep only the
// checks their memory safety needs. The ISA is the one set_isa chose (LMOPS_CPU_ISA).
#include <torch/library.h>

#include "../packing.h"
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

}  // namespace

TORCH_LIBRARY_IMPL(lmops, CPU, m) {
  m.impl("quantize_activation_absmax", &quantize_activation_absmax);
  m.impl("ternary_matmul_int", &ternary_matmul_int);
  m.impl("ternary_linear", &ternary_linear);
}
