// The `cuda` backend of lmops' ternary ops: argument checks, output and workspace allocation (torch's
// caching allocator, so a CUDA graph can capture these calls), and the kernel launches on the current
// stream. Nothing here synchronizes or reads device memory on the host. Contract of the kernels:
// ternary_kernels.cuh.
#include "ops_cuda.h"

#include <cuda_runtime.h>
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "../packing.h"
#include "ternary_kernels.cuh"

namespace lmops {
namespace cuda {
namespace {

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& x, const char* x_name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but ", x_name, " is on ", x.device(),
                    "; move them to one device");
}

void check_float(const at::Tensor& x, const char* name) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
                   ": expected float32, float16 or bfloat16, got ", st);
}

// The 16-byte loads of the kernels need 16-byte aligned rows: torch's allocator gives that, views at an
// odd offset do not, so those are copied once.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<std::uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

void check_packed(const at::Tensor& packed, int64_t K, const at::Tensor& x, const char* x_name) {
  check_on_device(packed, "packed", x, x_name);
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: expected uint8, got ", packed.scalar_type());
  const int64_t kb = (K + 15) / 16;
  TORCH_CHECK_VALUE(packed.dim() == 2 && packed.size(1) == 4 * kb, "packed: expected shape (N, ", 4 * kb,
                    ") for in_features=", K, ", got ", packed.sizes());
}

template <typename F>
cudaError_t with_float_type(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat:
      return f(static_cast<float*>(nullptr));
    case at::kHalf:
      return f(static_cast<__half*>(nullptr));
    default:
      return f(static_cast<__nv_bfloat16*>(nullptr));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_activation_absmax(const at::Tensor& x, int64_t bits) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", x.device());
  check_float(x, "x");
  TORCH_CHECK_VALUE(bits >= 2 && bits <= 8, "bits: expected an int in 2..8, got ", bits);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "x: expected shape (..., K) with K >= 1, got ", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t K = xc.size(-1), M = xc.numel() / K;
  at::Tensor q = at::empty(xc.sizes(), xc.options().dtype(at::kChar));
  std::vector<int64_t> scale_shape = xc.sizes().vec();
  scale_shape.back() = 1;
  at::Tensor scale = at::empty(scale_shape, xc.options().dtype(at::kFloat));
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(with_float_type(xc.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch_quantize_rows<T>(static_cast<const T*>(xc.const_data_ptr()), M, K, /*ldq=*/K, qmax,
                                   static_cast<int8_t*>(q.mutable_data_ptr()),
                                   static_cast<float*>(scale.mutable_data_ptr()), /*rowsum=*/nullptr, stream);
  }));
  return {q, scale};
}

at::Tensor ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed) {
  TORCH_CHECK_VALUE(x_q.is_cuda(), "x_q: expected a CUDA tensor, got one on ", x_q.device());
  TORCH_CHECK_TYPE(x_q.scalar_type() == at::kChar && x_q.dim() == 2 && x_q.size(1) >= 1,
                   "x_q: expected a 2-D int8 tensor (M, K >= 1), got ", x_q.scalar_type(), " ", x_q.sizes());
  const int64_t M = x_q.size(0), K = x_q.size(1);
  check_packed(packed, K, x_q, "x_q");
  const c10::cuda::CUDAGuard guard(x_q.device());
  const at::Tensor w = aligned_contiguous(packed);
  const int64_t N = w.size(0), ldq = 16 * ((K + 15) / 16);
  at::Tensor out = at::empty({M, N}, x_q.options().dtype(at::kInt));
  if (M == 0 || N == 0) return out;
  const at::Tensor xs = x_q.stride(1) == 1 ? x_q : x_q.contiguous();
  at::Tensor xq = at::empty({M, ldq}, x_q.options().dtype(at::kChar));
  at::Tensor rowsum = at::empty({M}, x_q.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_pad_rows(static_cast<const int8_t*>(xs.const_data_ptr()), M, K, xs.stride(0), ldq,
                                 static_cast<int8_t*>(xq.mutable_data_ptr()),
                                 static_cast<int32_t*>(rowsum.mutable_data_ptr()), stream));
  const auto launch = M <= kGemvMaxRows ? launch_ternary_gemv<int32_t> : launch_ternary_gemm<int32_t>;
  C10_CUDA_CHECK(launch(static_cast<const int8_t*>(xq.const_data_ptr()), nullptr,
                        static_cast<const int32_t*>(rowsum.const_data_ptr()), M, ldq,
                        static_cast<const uint8_t*>(w.const_data_ptr()), N, K, nullptr, Bias{},
                        static_cast<int32_t*>(out.mutable_data_ptr()), stream));
  return out;
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                          const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", x.device());
  check_float(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "x: expected shape (..., K) with K >= 1, got ", x.sizes());
  const int64_t K = x.size(-1);
  check_packed(packed, K, x, "x");
  check_on_device(weight_scale, "weight_scale", x, "x");
  TORCH_CHECK_VALUE(weight_scale.numel() == 1 && weight_scale.is_floating_point(),
                    "weight_scale: expected a one-element floating tensor, got ", weight_scale.scalar_type(), " ",
                    weight_scale.sizes());
  const int64_t N = packed.size(0);
  if (bias.has_value()) {
    check_on_device(*bias, "bias", x, "x");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N && bias->is_floating_point(),
                      "bias: expected a floating tensor of shape (", N, ",), got ", bias->scalar_type(), " ",
                      bias->sizes());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.numel() / K, ldq = 16 * ((K + 15) / 16);
  std::vector<int64_t> out_shape = xc.sizes().vec();
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, xc.options());
  if (M == 0 || N == 0) return y;
  const at::Tensor w = aligned_contiguous(packed);
  // gamma as a device float32 (a no-op when it already is, as BitLinear keeps it): the kernels read it
  // on the device, so a captured graph picks up a new weight_scale without a host read.
  const at::Tensor gamma = weight_scale.reshape({1}).to(at::kFloat).contiguous();
  // The bias is read in its own dtype (float32, float16 or bfloat16) and widened in the epilogue.
  at::Tensor bias_c;
  Bias bias_arg;
  if (bias.has_value()) {
    const auto st = bias->scalar_type();
    TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
                     "bias: expected float32, float16 or bfloat16, got ", st);
    bias_c = bias->contiguous();
    bias_arg.data = bias_c.const_data_ptr();
    bias_arg.type = st == at::kFloat ? BiasType::kFloat : st == at::kHalf ? BiasType::kHalf : BiasType::kBFloat16;
  }
  at::Tensor xq = at::empty({M, ldq}, xc.options().dtype(at::kChar));
  at::Tensor scale = at::empty({M}, xc.options().dtype(at::kFloat));
  at::Tensor rowsum = at::empty({M}, xc.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(with_float_type(xc.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cudaError_t err = launch_quantize_rows<T>(static_cast<const T*>(xc.const_data_ptr()), M, K, ldq, 127.f,
                                              static_cast<int8_t*>(xq.mutable_data_ptr()),
                                              static_cast<float*>(scale.mutable_data_ptr()),
                                              static_cast<int32_t*>(rowsum.mutable_data_ptr()), stream);
    if (err != cudaSuccess) return err;
    const auto launch = M <= kGemvMaxRows ? launch_ternary_gemv<T> : launch_ternary_gemm<T>;
    return launch(static_cast<const int8_t*>(xq.const_data_ptr()), static_cast<const float*>(scale.const_data_ptr()),
                  static_cast<const int32_t*>(rowsum.const_data_ptr()), M, ldq,
                  static_cast<const uint8_t*>(w.const_data_ptr()), N, K,
                  static_cast<const float*>(gamma.const_data_ptr()),
                  bias_arg,
                  static_cast<T*>(y.mutable_data_ptr()), stream);
  }));
  return y;
}

}  // namespace cuda
}  // namespace lmops

// ---------------------------------------------------------------------------------------------------------
// Registration at the CUDA key of the lmops:: ops (schemas: lmops_kernels/schemas.def). The kernels need
// int8 mma.sync (sm_80+); on an older GPU the call says so and names the backends that run there.

namespace {

void check_capability(const at::Tensor& x) {
  static std::vector<int> major_of(64, -1);  // per device index, read once
  const int index = x.get_device();
  int& major = major_of.at(index);
  if (major < 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  if (major < 8) {
    int minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
    TORCH_CHECK(false, "the lmops CUDA kernels need compute capability 8.0+ (int8 mma.sync); cuda:", index, " has ",
                major, ".", minor, ": set LMOPS_BACKEND=triton or LMOPS_BACKEND=reference");
  }
}

std::tuple<at::Tensor, at::Tensor> registered_quantize_activation_absmax(const at::Tensor& x, int64_t bits) {
  check_capability(x);
  return lmops::cuda::quantize_activation_absmax(x, bits);
}

at::Tensor registered_ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed, c10::string_view layout) {
  check_capability(x_q);
  return lmops::cuda::ternary_matmul_int(x_q, lmops::as_tiled(packed, layout));
}

at::Tensor registered_ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                                     const std::optional<at::Tensor>& bias, c10::string_view layout) {
  check_capability(x);
  return lmops::cuda::ternary_linear(x, lmops::as_tiled(packed, layout), weight_scale, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmops, CUDA, m) {
  m.impl("quantize_activation_absmax", &registered_quantize_activation_absmax);
  m.impl("ternary_matmul_int", &registered_ternary_matmul_int);
  m.impl("ternary_linear", &registered_ternary_linear);
}
