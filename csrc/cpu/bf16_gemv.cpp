// Driver of the CPU bf16_linear: activations to float32, threading over weight rows, ISA choice, bias and
// the cast to the activations' dtype. Semantics: lmops_kernels/reference/bf16.py.
//
// Built for a 16-bit output head at decode: torch's bf16 F.linear streams a 32000 x 2048 head at
// 15-20 GB/s on a 2-core EPYC, this loop at the machine's read bandwidth (benches/bench_bf16_head.py).
#include "bf16_gemv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "bf16_gemv_args.h"

namespace lmops {
namespace cpu {

void bf16_gemv_scalar(const Bf16GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint16_t* w = a.w + n * a.K;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const float* x = a.x + m * a.K;
      float s = 0.f;
      for (int64_t k = 0; k < a.K; ++k) {
        const uint32_t bits = static_cast<uint32_t>(w[k]) << 16;
        float wv;
        std::memcpy(&wv, &bits, 4);
        s += x[k] * wv;
      }
      a.out[m * a.ldo + n] = s;
    }
  }
}

namespace {

constexpr int64_t kRowChunk = 4;  // activation rows per pass over a weight range (the AVX2 kernel's tile)

template <typename T>
void linear_impl(Isa isa, const at::Tensor& x, const at::Tensor& weight, const float* bias, at::Tensor& y) {
  const int64_t K = x.size(-1), M = x.numel() / K, N = weight.size(0);
  const at::Tensor x32 = x.reshape({M, K}).to(at::kFloat).contiguous();
  // Left uninitialized: the GEMV writes every output before the epilogue reads it.
  const std::unique_ptr<float[]> acc(new float[static_cast<size_t>(M * N)]);
  const Bf16GemvArgs a{x32.data_ptr<float>(), reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()),
                       K, acc.get(), N};
  const auto fn = isa == Isa::Scalar ? bf16_gemv_scalar : bf16_gemv_avx2;
  T* yp = y.data_ptr<T>();
  // Below ~256K multiply-adds per thread, waking a second thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, K * std::min<int64_t>(M, kRowChunk)));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowChunk) {
      const int64_t m1 = std::min(M, m0 + kRowChunk);
      fn(a, m0, m1, n0, n1);
      for (int64_t m = m0; m < m1; ++m) {
        const float* am = acc.get() + m * N;
        T* ym = yp + m * N;
        if (bias) {
          for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(am[n] + bias[n]);
        } else {
          for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(am[n]);
        }
      }
    }
  });
}

}  // namespace

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       Isa isa) {
  // The public wrapper validated the call; these checks keep the kernel memory-safe on its own.
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.is_contiguous(), "x: expected a contiguous tensor (..., in_features)");
  const int64_t K = x.size(-1);
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kBFloat16, "weight: expected bfloat16, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.is_contiguous() && weight.size(1) == K,
                    "weight: expected a contiguous (out_features, ", K, ") tensor, got ", weight.sizes());
  const int64_t N = weight.size(0);
  at::Tensor b32;
  if (bias && bias->defined()) {
    TORCH_CHECK_VALUE(bias->numel() == N && bias->is_floating_point(), "bias: expected ", N,
                      " floating-point elements, got ", bias->scalar_type(), " ", bias->sizes());
    b32 = bias->to(at::kFloat).contiguous();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, x.options());
  const int64_t M = K ? x.numel() / K : 0;
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bf16_linear", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK_TYPE(false, "x: float64 is not supported by the CPU kernel");
    } else {
      linear_impl<scalar_t>(isa, x, weight, bp, y);
    }
  });
  return y;
}

}  // namespace cpu
}  // namespace lmops
