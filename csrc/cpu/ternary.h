// CPU entry points of the BitNet b1.58 ops. Semantics: lmops_kernels/reference/ternary.py.
#pragma once
#include <ATen/ATen.h>
#include <string>
#include <tuple>
#include <vector>

namespace lmops {
namespace cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512Vnni = 2 };

Isa best_isa();
bool isa_supported(Isa isa);
Isa parse_isa(const std::string& name);  // "auto" | "scalar" | "avx2" | "avx512vnni"
std::string isa_name(Isa isa);

// The ISA the registered CPU kernels use: set_isa("auto" | "scalar" | ...) (LMOPS_CPU_ISA, read by
// lmops_kernels._native at import); "auto" is best_isa().
void set_isa(const std::string& name);
Isa current_isa();

// x: (M, K) float32|bfloat16|float16, contiguous -> q (M, K) int8, scale (M, 1) float32.
std::tuple<at::Tensor, at::Tensor> quantize_activation_absmax(const at::Tensor& x, int64_t bits);

// x_q: (M, K) int8; packed: (N, 4 * ceil(K / 16)) uint8 -> (M, N) int32.
at::Tensor ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed, Isa isa);

// x: (..., K) contiguous float32|bfloat16|float16; weight_scale: one float; bias: (N,) or undefined -> (..., N), x's dtype.
at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                          const c10::optional<at::Tensor>& bias, Isa isa);

// The same for several weight matrices over one x (q/k/v, gate/up): x is quantized once and one parallel
// region covers all of them. bias: empty, or one entry (possibly none) per matrix.
std::vector<at::Tensor> ternary_linear_multi(const at::Tensor& x, const std::vector<at::Tensor>& packed,
                                             const std::vector<at::Tensor>& weight_scale,
                                             const std::vector<c10::optional<at::Tensor>>& bias, Isa isa);

}  // namespace cpu
}  // namespace lmops
