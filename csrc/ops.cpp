// The lmops:: operator library: every schema (declared once, in lmops_kernels/schemas.def) and the Python
// module lmops_kernels._C. The kernels register themselves at their dispatch keys (TORCH_LIBRARY_IMPL):
// cpu/register.cpp (CPU), cuda/ops_cuda.cpp (CUDA, where built), autograd.cpp (Autograd). So the ops are
// callable from C++ and AOTInductor once this library is loaded, without Python. The plain-torch
// reference, the Triton kernels, the fake (meta) kernels and LMOPS_BACKEND's overrides are registered
// from Python by lmops_kernels.
//
// The pybind functions below are the raw kernels (for benchmarks that measure the op's own overhead)
// and the CPU ISA switch; no op is reached through them.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/mole.h"
#include "cpu/ternary.h"

TORCH_LIBRARY(lmops, m) {
#define LMOPS_SCHEMA(schema) m.def(schema);
#include "schemas.def"
#undef LMOPS_SCHEMA
}

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
  m.doc() = "lmops native kernels (CPU, and CUDA where built with it); the ops are torch.ops.lmops.*";
  m.def("cpu_features", &cpu_features, "CPU features the kernels can use, and the ISA chosen by default");
  m.def("set_cpu_isa", &lmops::cpu::set_isa, "ISA of the registered CPU kernels: auto|scalar|avx2|avx512vnni",
        pybind11::arg("isa"));
  m.def("cpu_isa", [] { return lmops::cpu::isa_name(lmops::cpu::current_isa()); },
        "the ISA the registered CPU kernels use now");
  // The raw CPU kernels, bypassing the dispatcher (benchmarks of the op's overhead only).
  m.def("ternary_linear", &lmops::cpu::ternary_linear_isa, "W2A8 linear on (M, K), raw kernel", pybind11::arg("x"),
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
#else
  m.attr("with_cuda") = false;
#endif
}
