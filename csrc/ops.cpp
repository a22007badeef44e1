// Python bindings of the native kernels. The lmops:: operator schemas live in one place,
// lmops_kernels/ops.py; these functions are the CPU backend that its dispatcher calls. They are
// plain bindings rather than TORCH_LIBRARY_IMPL registrations because several backends (native,
// Triton, reference) serve the same device key and LMOPS_BACKEND chooses among them.
#include <torch/extension.h>

#include "cpu/mole.h"
#include "cpu/ternary.h"
#ifdef LMOPS_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

namespace {

pybind11::dict cpu_features() {
  using lmops::cpu::Isa;
  pybind11::dict d;
  d["avx2"] = lmops::cpu::isa_supported(Isa::Avx2);
  d["avx512vnni"] = lmops::cpu::isa_supported(Isa::Avx512Vnni);
  d["best_isa"] = lmops::cpu::isa_name(lmops::cpu::best_isa());
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lmops native kernels (CPU, and CUDA where built with it)";
  m.def("cpu_features", &cpu_features, "CPU features the kernels can use, and the ISA chosen by default");
  m.def("quantize_activation_absmax", &lmops::cpu::quantize_activation_absmax, "x (M, K) -> (q int8, scale f32)",
        pybind11::arg("x"), pybind11::arg("bits") = 8);
  m.def("ternary_matmul_int", &lmops::cpu::ternary_matmul_int, "x_q (M, K) int8 @ q^T -> (M, N) int32",
        pybind11::arg("x_q"), pybind11::arg("packed"), pybind11::arg("isa") = "auto");
  m.def("ternary_linear", &lmops::cpu::ternary_linear, "W2A8 linear on (M, K)", pybind11::arg("x"),
        pybind11::arg("packed"), pybind11::arg("weight_scale"), pybind11::arg("bias") = pybind11::none(),
        pybind11::arg("isa") = "auto");
  m.def("mole_gate_forward", &lmops::cpu::mole_gate_forward,
        "MoLE gate in rank space: x (T, K) and the weight-only tensors of lmops_kernels.mole_rank -> (y, gates)",
        pybind11::arg("x"), pybind11::arg("a"), pybind11::arg("wy"), pybind11::arg("b1"), pybind11::arg("gram"),
        pybind11::arg("p"), pybind11::arg("c"), pybind11::arg("d"), pybind11::arg("scaling"),
        pybind11::arg("temperature"), pybind11::arg("expert_mask") = pybind11::none(),
        pybind11::arg("norm") = "layernorm", pybind11::arg("eps") = 1e-5);

#ifdef LMOPS_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_quantize_activation_absmax", &lmops::cuda::quantize_activation_absmax,
        "x (..., K) CUDA -> (q int8, scale f32 (..., 1))", pybind11::arg("x"), pybind11::arg("bits") = 8);
  m.def("cuda_ternary_matmul_int", &lmops::cuda::ternary_matmul_int, "x_q (M, K) int8 @ q^T -> (M, N) int32, CUDA",
        pybind11::arg("x_q"), pybind11::arg("packed"));
  m.def("cuda_ternary_linear", &lmops::cuda::ternary_linear, "W2A8 linear on CUDA: x (..., K) -> (..., N)",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("weight_scale"),
        pybind11::arg("bias") = pybind11::none());
#else
  m.attr("with_cuda") = false;
#endif
}
