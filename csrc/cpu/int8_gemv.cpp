// Driver of the CPU int8_linear (W8A8 with per-output-channel weight scales): activation quantization,
// threading, ISA choice and the float epilogue. Semantics: lmops_kernels/reference/int8.py.
//
// y[m, n] = float(sum_k xq[m, k] w[n, k]) * (weight_scale[n] / s[m]) (+ bias[n]), where (xq, s) is
// quantize_activation_absmax(x) (the same function ternary_linear uses: per-row absmax int8, s = 127 /
// absmax); the product is exact in int32 and the epilogue is the reference's float32 operations in its
// order, so every ISA gives the reference's output bit for bit.
#include "int8_gemv.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "int8_gemv_args.h"

namespace lmops {
namespace cpu {

void int8_gemv_scalar(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* w = a.w + n * a.K;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int8_t* x = a.xq + m * a.ldx;
      int32_t sum = 0;
      for (int64_t k = 0; k < a.K; ++k) sum += static_cast<int32_t>(w[k]) * x[k];
      a.out[m * a.ldo + n] = sum;
    }
  }
}

namespace {

// |sum| <= 127 * 128 * K stays in int32, and so does the VNNI kernel's offset sum (<= 255 * 127 * K).
constexpr int64_t kMaxK = 65536;
constexpr int64_t kRowChunk = 64;  // activation rows kept hot in L2 while a range of weight rows streams

using GemvFn = void (*)(const Int8GemvArgs&, int64_t, int64_t, int64_t, int64_t);

GemvFn gemv_for(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return int8_gemv_avx512vnni;
    case Isa::Avx2: return int8_gemv_avx2;
    default: return int8_gemv_scalar;
  }
}

template <typename T>
void linear_impl(Isa isa, const at::Tensor& x, const at::Tensor& weight, const float* sw, const float* bias,
                 at::Tensor& y) {
  const int64_t K = x.size(-1), M = x.numel() / K, N = weight.size(0);
  const int64_t ldx = 64 * ((K + 63) / 64);
  auto [q, s] = quantize_activation_absmax(x.reshape({M, K}), 8);
  // Pad each row to ldx with zeros (the SIMD kernels read whole 64-byte vectors of activations) and sum it.
  std::vector<int8_t> xq(static_cast<size_t>(M * ldx), 0);
  std::vector<int32_t> xsum(static_cast<size_t>(M), 0);
  const int8_t* qp = q.data_ptr<int8_t>();
  for (int64_t m = 0; m < M; ++m) {
    std::memcpy(xq.data() + m * ldx, qp + m * K, static_cast<size_t>(K));
    int32_t total = 0;
    for (int64_t k = 0; k < K; ++k) total += qp[m * K + k];
    xsum[m] = total;
  }
  const float* sx = s.data_ptr<float>();
  // Left uninitialized: the GEMV writes every accumulator (zero-filling would only add memory traffic).
  const std::unique_ptr<int32_t[]> acc(new int32_t[static_cast<size_t>(M * N)]);
  const Int8GemvArgs a{xq.data(), ldx, xsum.data(), weight.data_ptr<int8_t>(), K, acc.get(), N};
  const GemvFn fn = gemv_for(isa);
  T* yp = y.data_ptr<T>();
  // Weight rows are the unit of work; below ~256K multiply-adds per thread, waking a second thread costs
  // more than it saves (the ternary GEMV's rule, csrc/cpu/ternary.cpp).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, K * M));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowChunk) {
      const int64_t m1 = std::min(M, m0 + kRowChunk);
      fn(a, m0, m1, n0, n1);
      // The epilogue of this rectangle, by the thread that produced it, while it is in cache.
      for (int64_t m = m0; m < m1; ++m) {
        const int32_t* am = acc.get() + m * N;
        T* ym = yp + m * N;
        const float sm = sx[m];
        if (bias) {
          for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(static_cast<float>(am[n]) * (sw[n] / sm) + bias[n]);
        } else {
          for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(static_cast<float>(am[n]) * (sw[n] / sm));
        }
      }
    }
  });
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const c10::optional<at::Tensor>& bias, Isa isa) {
  // The public wrapper validated the call; these checks keep the kernel memory-safe on its own.
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.is_contiguous(), "x: expected a contiguous tensor (..., in_features)");
  const int64_t K = x.size(-1);
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, "weight: expected int8, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.is_contiguous() && weight.size(1) == K,
                    "weight: expected a contiguous (out_features, ", K, ") tensor, got ", weight.sizes());
  TORCH_CHECK_VALUE(K >= 1 && K <= kMaxK, "x: expected in_features in 1..", kMaxK, ", got ", K);
  const int64_t N = weight.size(0);
  TORCH_CHECK_VALUE(weight_scale.scalar_type() == at::kFloat && weight_scale.numel() == N,
                    "weight_scale: expected float32 of ", N, " elements, got ", weight_scale.scalar_type(), " ",
                    weight_scale.sizes());
  const at::Tensor sw = weight_scale.contiguous();
  at::Tensor b32;
  if (bias && bias->defined()) {
    TORCH_CHECK_VALUE(bias->numel() == N && bias->is_floating_point(), "bias: expected ", N,
                      " floating-point elements, got ", bias->scalar_type(), " ", bias->sizes());
    b32 = bias->to(at::kFloat).contiguous();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, x.options());
  const int64_t M = x.numel() / K;
  if (M == 0 || N == 0) return y;
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_linear", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK_TYPE(false, "x: float64 is not supported by the CPU kernel");
    } else {
      linear_impl<scalar_t>(isa, x, weight, sw.data_ptr<float>(), bp, y);
    }
  });
  return y;
}

}  // namespace cpu
}  // namespace lmops
