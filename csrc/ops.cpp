// The lmops:: operator library: every schema (declared once, in lmops_kernels/schemas.def) and the few
// utility ops the Python package uses to talk to the native code. The kernels register themselves at
// their dispatch keys (TORCH_LIBRARY_IMPL): cpu/register.cpp (CPU), cuda/ops_cuda.cpp (CUDA, where
// built), autograd.cpp (Autograd), mole_weights.cpp (the MoLE weight cache). The library includes no
// Python header and links no Python library (built with py_limited_api): a C++ program or an AOTInductor
// model loads it with dlopen (or torch::ops::load_library) and calls torch.ops.lmops.* without Python.
// lmops_kernels._native loads it with torch.ops.load_library; the plain-torch reference, the Triton
// kernels, the fake (meta) kernels and LMOPS_BACKEND's overrides are registered from Python.
#include <torch/library.h>

#include <chrono>
#include <string>

#include "cpu/ternary.h"

namespace {

std::string cpu_features() {
  using lmops::cpu::Isa;
  auto flag = [](Isa isa) { return lmops::cpu::isa_supported(isa) ? "true" : "false"; };
  return std::string("{\"avx2\": ") + flag(Isa::Avx2) + ", \"avx512vnni\": " + flag(Isa::Avx512Vnni) +
         ", \"best_isa\": \"" + lmops::cpu::isa_name(lmops::cpu::best_isa()) + "\"}";
}

void set_cpu_isa(c10::string_view isa) { lmops::cpu::set_isa(std::string(isa)); }

std::string cpu_isa() { return lmops::cpu::isa_name(lmops::cpu::current_isa()); }

bool with_cuda() {
#ifdef LMOPS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Seconds per call of the raw CPU ternary_linear kernel (no dispatcher, no validation), over the weight
// sets in turn, `reps` times: the baseline of benches/bench_op_overhead.py.
double bench_ternary_linear_raw(const at::Tensor& x, at::TensorList packed, at::TensorList weight_scale, int64_t reps) {
  TORCH_CHECK_VALUE(packed.size() == weight_scale.size() && !packed.empty() && reps >= 1,
                    "packed, weight_scale: expected two non-empty lists of one length, and reps >= 1");
  const auto isa = lmops::cpu::current_isa();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < reps; ++r) {
    for (size_t i = 0; i < packed.size(); ++i) {
      lmops::cpu::ternary_linear(x, packed[i], weight_scale[i], std::nullopt, isa);
    }
  }
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  return dt.count() / static_cast<double>(reps * static_cast<int64_t>(packed.size()));
}

}  // namespace

TORCH_LIBRARY(lmops, m) {
#define LMOPS_SCHEMA(schema) m.def(schema);
#include "schemas.def"
#undef LMOPS_SCHEMA
  // utility ops of the native library (not part of the public op set; see lmops_kernels/_native.py)
  m.def("_cpu_features() -> str", &cpu_features);
  m.def("_set_cpu_isa(str isa) -> ()", &set_cpu_isa);
  m.def("_cpu_isa() -> str", &cpu_isa);
  m.def("_with_cuda() -> bool", &with_cuda);
  m.def("_bench_ternary_linear_raw(Tensor x, Tensor[] packed, Tensor[] weight_scale, int reps) -> float",
        &bench_ternary_linear_raw);
}
