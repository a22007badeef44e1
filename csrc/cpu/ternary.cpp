// Driver of the CPU ternary ops: activation quantization, threading, ISA choice and the float epilogue.
#include "ternary.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../packing.h"
#include "gemm_args.h"
#include "quant_args.h"

namespace lmops {
namespace cpu {

namespace {

constexpr int64_t kRowChunk = 64;  // rows of activations kept hot in L2 while a weight range streams

bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!std::strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!std::strcmp(feature, "avx512vnni"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
  (void)feature;
  return false;
}

template <typename T>
inline float to_float(T v) { return static_cast<float>(v); }

// Per-row absmax quantization with the reference's float32 arithmetic:
// s = (1 / max(max|x|, 1e-5)) * Qp; q = clamp(nearbyint(x * s)) (round half to even). A row holding a
// non-finite value gets s = NaN and q = 0. `ldq` >= K; the padding columns are zero.
template <typename T>
constexpr int quant_src() {
  if constexpr (std::is_same_v<T, float>) return static_cast<int>(QuantSrc::F32);
  else if constexpr (std::is_same_v<T, c10::BFloat16>) return static_cast<int>(QuantSrc::BF16);
  else if constexpr (std::is_same_v<T, c10::Half>) return static_cast<int>(QuantSrc::F16);
  else return -1;  // no vector path (float64)
}

template <typename T>
void quantize_rows(Isa isa, const T* x, int64_t M, int64_t K, int64_t ldq, int bits, int8_t* q, float* scale,
                   int32_t* rowsum) {
  const float qp = static_cast<float>((1 << (bits - 1)) - 1);
  const float qn = -static_cast<float>(1 << (bits - 1));
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  constexpr int src = quant_src<T>();
  // The vector quantizer computes the same float32 expressions; the scalar loop stays the path of
  // isa="scalar" (and of float64), so both are tested against the reference.
  static const bool has_avx2 = isa_supported(Isa::Avx2);
  const bool vec = src >= 0 && isa != Isa::Scalar && has_avx2;
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      if (vec) {
        quantize_row_avx2(x + m * K, static_cast<QuantSrc>(src), K, ldq, qp, qn, q + m * ldq, scale + m,
                          rowsum ? rowsum + m : nullptr);
        continue;
      }
      const T* xr = x + m * K;
      int8_t* qr = q + m * ldq;
      float amax = 0.f;
      bool finite = true;
      for (int64_t k = 0; k < K; ++k) {
        const float v = to_float(xr[k]);
        finite &= std::isfinite(v);
        amax = std::max(amax, std::fabs(v));
      }
      int32_t sum = 0;
      if (finite) {
        const float s = (1.f / std::max(amax, 1e-5f)) * qp;  // as torch evaluates ActQuant's 127 / amax
        for (int64_t k = 0; k < K; ++k) {
          float r = std::nearbyint(to_float(xr[k]) * s);
          r = std::min(std::max(r, qn), qp);
          qr[k] = static_cast<int8_t>(r);
          sum += qr[k];
        }
        scale[m] = s;
      } else {
        std::memset(qr, 0, K);
        scale[m] = std::nanf("");
      }
      if (ldq > K) std::memset(qr + K, 0, ldq - K);
      if (rowsum) rowsum[m] = sum;
    }
  });
}

void check_packed(const at::Tensor& packed, int64_t K) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: expected uint8, got ", packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() == 2 && packed.is_contiguous(), "packed: expected a contiguous 2-D tensor");
  TORCH_CHECK_VALUE(packed.size(1) == packed_cols(K), "packed: expected shape (N, ", packed_cols(K),
                    ") for in_features=", K, ", got ", packed.sizes());
}

using GemmFn = void (*)(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);

GemmFn gemm_for(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return gemm_avx512vnni;
    case Isa::Avx2: return gemm_avx2;
    default: return gemm_scalar;
  }
}

// One weight matrix of a (possibly grouped) GEMM: its packed codes, its width and its int32 output (M, N).
struct GemmJob {
  const at::Tensor* packed;
  int64_t N;
  int32_t* out;
};

// Runs C_i = xq @ q_i^T for every job over all rows, threaded over n-blocks of all jobs at once (one
// parallel region for q/k/v or gate/up: one wake-up of the pool, and the threads split the matrices'
// weight bytes evenly whatever their sizes); `epilogue(i, m0, m1, n0, n1)` is called by the thread that
// produced that rectangle of job i, while it is still in cache.
template <typename Epilogue>
void run_gemm(Isa isa, const int8_t* xq, int64_t M, int64_t ldq, const int32_t* rowsum, const std::vector<GemmJob>& jobs,
              Epilogue&& epilogue) {
  const int64_t KB = ldq / 16;
  const size_t J = jobs.size();
  std::vector<std::vector<uint8_t>> tails(J);
  std::vector<GemmArgs> args;
  std::vector<int64_t> first_unit(J + 1, 0);
  args.reserve(J);
  for (size_t i = 0; i < J; ++i) {
    const int64_t N = jobs[i].N, n_full = N / 8, NB = (N + 7) / 8;
    const uint8_t* p = jobs[i].packed->data_ptr<uint8_t>();
    if (NB > n_full) {
      // Widen the last partial block to 8 columns once, so the kernels never read past the tensor.
      const int64_t width = N - 8 * n_full;
      tails[i].assign(32 * KB, 0x55);
      const uint8_t* src = p + n_full * 32 * KB;
      for (int64_t kb = 0; kb < KB; ++kb) std::memcpy(tails[i].data() + kb * 32, src + kb * 4 * width, 4 * width);
    }
    args.push_back(GemmArgs{xq, ldq, rowsum, p, tails[i].empty() ? nullptr : tails[i].data(), N, KB, jobs[i].out, N});
    // Pairs of n-blocks are the unit of work; a thread streams its share of the weights once per
    // chunk of kRowChunk rows, which stay in L2 meanwhile.
    first_unit[i + 1] = first_unit[i] + (NB + 1) / 2;
  }
  const GemmFn fn = gemm_for(isa);
  // A unit is 16 columns x K x M multiply-adds; below ~256K of them per thread, waking a second
  // thread costs more than it saves (and much more when the cores are shared).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, 16 * ldq * M));
  at::parallel_for(0, first_unit[J], grain, [&](int64_t u0, int64_t u1) {
    for (size_t i = 0; i < J; ++i) {
      const int64_t lo = std::max(u0, first_unit[i]), hi = std::min(u1, first_unit[i + 1]);
      if (lo >= hi) continue;
      const int64_t N = jobs[i].N, NB = (N + 7) / 8;
      const int64_t nb0 = 2 * (lo - first_unit[i]), nb1 = std::min(NB, 2 * (hi - first_unit[i]));
      for (int64_t m0 = 0; m0 < M; m0 += kRowChunk) {
        const int64_t m1 = std::min(M, m0 + kRowChunk);
        fn(args[i], m0, m1, nb0, nb1);
        epilogue(i, m0, m1, nb0 * 8, std::min(N, nb1 * 8));
      }
    }
  });
}

// y_i = (Q(x) @ q_i^T) * (gamma_i / s_x) (+ bias_i) for every i, with x quantized once.
template <typename T>
void linear_impl(Isa isa, const at::Tensor& x, const std::vector<at::Tensor>& packed, const std::vector<float>& gamma,
                 const std::vector<const at::Tensor*>& bias, std::vector<at::Tensor>& y) {
  const int64_t K = x.size(-1), M = x.numel() / K;
  const int64_t ldq = 16 * ((K + 15) / 16);
  const size_t J = packed.size();
  // Scratch buffers are left uninitialized: quantize_rows writes every byte of xq (padding included)
  // and the GEMM every accumulator, so zero-filling them would only add memory traffic per call.
  const at::Tensor xq = at::empty({M, ldq}, x.options().dtype(at::kChar));
  std::vector<at::Tensor> acc(J), b32(J);
  std::vector<GemmJob> jobs(J);
  for (size_t i = 0; i < J; ++i) {
    const int64_t N = packed[i].size(0);
    acc[i] = at::empty({M, N}, x.options().dtype(at::kInt));
    jobs[i] = GemmJob{&packed[i], N, acc[i].data_ptr<int32_t>()};
    if (bias[i]) b32[i] = bias[i]->to(at::kFloat).contiguous();
  }
  std::vector<float> s(M);
  std::vector<int32_t> rowsum(M);
  quantize_rows<T>(isa, x.data_ptr<T>(), M, K, ldq, 8, xq.data_ptr<int8_t>(), s.data(), rowsum.data());
  run_gemm(isa, xq.data_ptr<int8_t>(), M, ldq, rowsum.data(), jobs,
           [&](size_t i, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
             const int64_t N = jobs[i].N;
             const int32_t* ap = jobs[i].out;
             T* yp = y[i].data_ptr<T>();
             const float* bp = b32[i].defined() ? b32[i].data_ptr<float>() : nullptr;
             for (int64_t m = m0; m < m1; ++m) {
               const int32_t* am = ap + m * N;
               T* ym = yp + m * N;
               const float rm = gamma[i] / s[m];
               if (bp) {
                 for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(static_cast<float>(am[n]) * rm + bp[n]);
               } else {
                 for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(static_cast<float>(am[n]) * rm);
               }
             }
           });
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return cpu_has("avx2");
    case Isa::Avx512Vnni: return cpu_has("avx512vnni");
  }
  return false;
}

Isa best_isa() {
  static const Isa best = isa_supported(Isa::Avx512Vnni) ? Isa::Avx512Vnni
                          : isa_supported(Isa::Avx2)     ? Isa::Avx2
                                                         : Isa::Scalar;
  return best;
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  Isa isa;
  if (name.empty() || name == "auto") return best_isa();
  if (name == "scalar") isa = Isa::Scalar;
  else if (name == "avx2") isa = Isa::Avx2;
  else if (name == "avx512vnni") isa = Isa::Avx512Vnni;
  else TORCH_CHECK_VALUE(false, "isa: expected one of auto, scalar, avx2, avx512vnni; got '", name, "'");
  TORCH_CHECK_VALUE(isa_supported(isa), "isa: '", name, "' is not supported by this CPU");
  return isa;
}

std::tuple<at::Tensor, at::Tensor> quantize_activation_absmax(const at::Tensor& x, int64_t bits) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: expected a contiguous 2-D tensor");
  TORCH_CHECK_VALUE(bits >= 2 && bits <= 8, "bits: expected 2..8, got ", bits);
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor s = at::empty({M, 1}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "quantize_activation_absmax", [&] {
    quantize_rows<scalar_t>(current_isa(), x.data_ptr<scalar_t>(), M, K, K, static_cast<int>(bits), q.data_ptr<int8_t>(),
                            s.data_ptr<float>(), nullptr);
  });
  return {q, s};
}

std::atomic<int> g_isa{-1};  // -1: auto (best_isa())

void set_isa(const std::string& name) {
  g_isa.store(name.empty() || name == "auto" ? -1 : static_cast<int>(parse_isa(name)));
}

Isa current_isa() {
  const int isa = g_isa.load(std::memory_order_relaxed);
  return isa < 0 ? best_isa() : static_cast<Isa>(isa);
}

at::Tensor ternary_matmul_int(const at::Tensor& x_q, const at::Tensor& packed, Isa isa) {
  TORCH_CHECK(x_q.dim() == 2 && x_q.scalar_type() == at::kChar, "x_q: expected a 2-D int8 tensor");
  const at::Tensor xc = x_q.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = packed.size(0);
  check_packed(packed, K);
  const int64_t ldq = 16 * ((K + 15) / 16);
  std::vector<int8_t> xq(M * ldq, 0);
  std::vector<int32_t> rowsum(M, 0);
  const int8_t* src = xc.data_ptr<int8_t>();
  for (int64_t m = 0; m < M; ++m) {
    std::memcpy(xq.data() + m * ldq, src + m * K, K);
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += src[m * K + k];
    rowsum[m] = s;
  }
  at::Tensor out = at::empty({M, N}, xc.options().dtype(at::kInt));
  if (M == 0 || N == 0) return out;
  run_gemm(isa, xq.data(), M, ldq, rowsum.data(), {GemmJob{&packed, N, out.data_ptr<int32_t>()}},
           [](size_t, int64_t, int64_t, int64_t, int64_t) {});
  return out;
}

std::vector<at::Tensor> ternary_linear_multi(const at::Tensor& x, const std::vector<at::Tensor>& packed,
                                             const std::vector<at::Tensor>& weight_scale,
                                             const std::vector<c10::optional<at::Tensor>>& bias, Isa isa) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous(), "x: expected a contiguous tensor (..., in_features)");
  TORCH_CHECK_VALUE(!packed.empty() && weight_scale.size() == packed.size() &&
                        (bias.empty() || bias.size() == packed.size()),
                    "packed, weight_scale, bias: expected equal, non-zero lengths (bias may be empty), got ",
                    packed.size(), ", ", weight_scale.size(), ", ", bias.size());
  const int64_t K = x.size(-1);
  const int64_t M = K ? x.numel() / K : 0;
  std::vector<at::Tensor> ys;
  std::vector<float> gamma;
  std::vector<const at::Tensor*> b;
  for (size_t i = 0; i < packed.size(); ++i) {
    check_packed(packed[i], K);
    std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
    out_shape.back() = packed[i].size(0);
    ys.push_back(at::empty(out_shape, x.options()));
    gamma.push_back(weight_scale[i].to(at::kFloat).item<float>());
    b.push_back(!bias.empty() && bias[i] && bias[i]->defined() ? &*bias[i] : nullptr);
  }
  // nothing to compute (a zero-width matrix simply has no units of work in run_gemm)
  if (M == 0 || std::all_of(packed.begin(), packed.end(), [](const at::Tensor& p) { return p.size(0) == 0; }))
    return ys;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ternary_linear", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK_TYPE(false, "x: float64 is not supported by the CPU kernel");
    } else {
      linear_impl<scalar_t>(isa, x, packed, gamma, b, ys);
    }
  });
  return ys;
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                          const c10::optional<at::Tensor>& bias, Isa isa) {
  return ternary_linear_multi(x, {packed}, {weight_scale}, {bias}, isa)[0];
}

}  // namespace cpu
}  // namespace lmops
