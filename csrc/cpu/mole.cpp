// CPU forward of lmops::mole_gate in rank space: two GEMMs through ATen (MKL/oneDNN; for up to
// kFewTokens tokens, two-thread matrix-vector kernels below) around one parallel loop over tokens
// that does everything else (statistics, logits, masked softmax, mixing weights). The (T, N, O)
// expert outputs are never formed. Algebra: lmops_kernels/mole_rank.py.
//
//   z = x @ a^T                                     (T, N*R)   GEMM
//   per token: u_i = s_i z_i; S1 = b1.u; S2 = sum_i u_i^T Gram_i u_i (both summed in float64); Q = u @ p
//              mu, sigma by the norm; logits = (Q - mu c) / sigma + d; g = softmax(logits / tau) over kept experts
//              v_i = g_i u_i
//   y = v @ wy                                      (T, O)     GEMM
#include "mole.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)  // ifunc
#define LMOPS_MOLE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LMOPS_MOLE_CLONES
#endif

namespace lmops {
namespace cpu {

namespace {

enum class Norm { LayerNorm, RmsNorm, L2 };

Norm parse_norm(const std::string& norm) {
  if (norm == "layernorm") return Norm::LayerNorm;
  if (norm == "rmsnorm") return Norm::RmsNorm;
  if (norm == "l2") return Norm::L2;
  TORCH_CHECK_VALUE(false, "norm: expected one of layernorm, rmsnorm, l2; got '", norm, "'");
}

void check_f32(const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(), name,
              ": expected a contiguous float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
}

struct GateParams {
  int64_t N, R;
  double n_features, eps;
  Norm norm;
  double inv_tau;
  const float* b1;
  const float* gram;
  const float* p;
  const float* c;
  const float* d;
  const float* s;
  const bool* keep;  // nullptr: every expert kept
};

// One token: z (N*R) -> gates (N), v (N*R). `u`, `q`, `gu` are float scratch of N*R, N and R;
// `e` of N doubles. The inner loops run over independent outputs (axpy form), so they vectorize
// (an AVX2 clone is picked at load time where the CPU has it); the sums S1, S2 are float64.
LMOPS_MOLE_CLONES
void gate_token(const GateParams& g, const float* z, float* gates, float* v, float* u, float* q, double* e,
                float* gu) {
  const int64_t N = g.N, R = g.R;
  double s1 = 0.0, s2 = 0.0;
  std::fill(q, q + N, 0.f);
  for (int64_t i = 0; i < N; ++i) {
    float* ui = u + i * R;
    const float si = g.s[i];
    for (int64_t a = 0; a < R; ++a) ui[a] = z[i * R + a] * si;
    // gu = Gram_i u_i (Gram_i symmetric: row b is column b)
    std::fill(gu, gu + R, 0.f);
    const float* gi = g.gram + i * R * R;
    for (int64_t b = 0; b < R; ++b) {
      const float ub = ui[b];
      const float* row = gi + b * R;
      for (int64_t a = 0; a < R; ++a) gu[a] += row[a] * ub;
    }
    const float* b1 = g.b1 + i * R;
    for (int64_t a = 0; a < R; ++a) {
      s2 += static_cast<double>(ui[a]) * gu[a];
      s1 += static_cast<double>(ui[a]) * b1[a];
    }
    const float* pi = g.p + i * R * N;
    for (int64_t a = 0; a < R; ++a) {
      const float ua = ui[a];
      const float* pa = pi + a * N;
      for (int64_t j = 0; j < N; ++j) q[j] += ua * pa[j];
    }
  }
  double mu = 0.0, sigma;
  if (g.norm == Norm::LayerNorm) {
    mu = s1 / g.n_features;
    sigma = std::sqrt(std::max(s2 / g.n_features - mu * mu, 0.0) + g.eps);
  } else if (g.norm == Norm::RmsNorm) {
    sigma = std::sqrt(s2 / g.n_features + g.eps);
  } else {
    sigma = std::max(std::sqrt(std::max(s2, 0.0)), g.eps);
  }
  const double inv_sigma = 1.0 / sigma;
  double amax = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < N; ++j) {
    if (g.keep && !g.keep[j]) continue;
    const double logit = (static_cast<double>(q[j]) - mu * g.c[j]) * inv_sigma + g.d[j];
    e[j] = logit * g.inv_tau;
    amax = std::max(amax, e[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < N; ++j) {
    if (g.keep && !g.keep[j]) {
      e[j] = 0.0;
      continue;
    }
    e[j] = std::exp(e[j] - amax);
    sum += e[j];
  }
  const double inv_sum = 1.0 / sum;
  for (int64_t i = 0; i < N; ++i) {
    const double gi = e[i] * inv_sum;
    gates[i] = static_cast<float>(gi);
    const float gf = static_cast<float>(gi);
    for (int64_t a = 0; a < R; ++a) v[i * R + a] = gf * u[i * R + a];
  }
}

// ---- few tokens (decode): both products are matrix-vector products bound by memory bandwidth;
// MKL streams the weights on one thread, these split them into contiguous parts over the threads.
// Measured on 2 cores (K=O=4096, N*R=128): T=1 0.15 vs 0.18 ms cold, T=4 0.28 vs 0.49 ms; equal
// at T=8; MKL ahead from T=16.

constexpr int64_t kFewTokens = 6;

// out[t, j] = x[t, :] . w[j, :] for j in [j0, j1); w rows contiguous (streamed once, x stays in L1).
LMOPS_MOLE_CLONES
void rows_dot(const float* x, const float* w, float* out, int64_t T, int64_t K, int64_t J, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const float* wj = w + j * K;
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * K;
      float acc[16] = {};
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; ++l) acc[l] += xt[k + l] * wj[k + l];
      float sum = 0.f;
      for (int l = 0; l < 16; ++l) sum += acc[l];
      for (; k < K; ++k) sum += xt[k] * wj[k];
      out[t * J + j] = sum;
    }
  }
}

// acc[t, :] += sum_{j in [j0, j1)} v[t, j] w[j, :]; w rows contiguous (streamed once).
LMOPS_MOLE_CLONES
void rows_axpy(const float* v, const float* w, float* acc, int64_t T, int64_t J, int64_t O, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const float* wj = w + j * O;
    for (int64_t t = 0; t < T; ++t) {
      const float c = v[t * J + j];
      float* at = acc + t * O;
      for (int64_t o = 0; o < O; ++o) at[o] += c * wj[o];
    }
  }
}

// z (T, J) = x (T, K) @ w^T with w (J, K): threads split the rows of w.
void few_xwt(const float* x, const float* w, float* z, int64_t T, int64_t K, int64_t J) {
  at::parallel_for(0, J, std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)),
                   [&](int64_t j0, int64_t j1) { rows_dot(x, w, z, T, K, J, j0, j1); });
}

// y (T, O) = v (T, J) @ w with w (J, O): threads split the rows of w, each into its own partial sum.
void few_vw(const float* v, const float* w, float* y, int64_t T, int64_t J, int64_t O) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(O, 1));
  const int64_t chunks = std::min<int64_t>(at::get_num_threads(), (J + grain - 1) / grain);
  if (chunks <= 1) {
    std::fill(y, y + T * O, 0.f);
    rows_axpy(v, w, y, T, J, O, 0, J);
    return;
  }
  std::vector<float> part(static_cast<size_t>(chunks) * T * O, 0.f);
  const int64_t step = (J + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      rows_axpy(v, w, part.data() + c * T * O, T, J, O, c * step, std::min(J, (c + 1) * step));
  });
  for (int64_t i = 0; i < T * O; ++i) {
    float s = 0.f;
    for (int64_t c = 0; c < chunks; ++c) s += part[c * T * O + i];
    y[i] = s;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mole_gate_forward(const at::Tensor& x, const at::Tensor& a, const at::Tensor& wy,
                                                     const at::Tensor& b1, const at::Tensor& gram,
                                                     const at::Tensor& p, const at::Tensor& c, const at::Tensor& d,
                                                     const at::Tensor& scaling, const at::Tensor& temperature,
                                                     const c10::optional<at::Tensor>& expert_mask,
                                                     const std::string& norm, double eps) {
  const Norm nrm = parse_norm(norm);
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x: expected a 2-D CPU tensor (T, K), got ", x.sizes(), " on ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x: expected float32, bfloat16 or float16, got ", x.scalar_type());
  const int64_t T = x.size(0), K = x.size(1);
  const int64_t N = c.size(0);
  TORCH_CHECK(N >= 1 && a.dim() == 2 && a.size(0) % N == 0, "a: expected (N*R, K) for N=", N, ", got ", a.sizes());
  const int64_t NR = a.size(0), R = NR / N, O = wy.size(1);
  check_f32("a", a, {NR, K});
  check_f32("wy", wy, {NR, O});
  check_f32("b1", b1, {NR});
  check_f32("gram", gram, {N, R, R});
  check_f32("p", p, {NR, N});
  check_f32("c", c, {N});
  check_f32("d", d, {N});
  TORCH_CHECK(scaling.numel() == N, "scaling: expected ", N, " elements, got ", scaling.sizes());
  TORCH_CHECK(temperature.numel() == 1, "temperature: expected one element, got ", temperature.sizes());
  const at::Tensor s32 = scaling.to(at::kFloat).contiguous();
  const double tau = temperature.item<double>();
  TORCH_CHECK_VALUE(tau > 0.0, "temperature: expected > 0, got ", tau);
  at::Tensor keep;
  if (expert_mask && expert_mask->defined()) {
    keep = expert_mask->to(at::kBool).contiguous();
    TORCH_CHECK(keep.numel() == N, "expert_mask: expected ", N, " elements, got ", keep.sizes());
    const bool* kp = keep.data_ptr<bool>();
    TORCH_CHECK_VALUE(std::any_of(kp, kp + N, [](bool k) { return k; }),
                      "expert_mask: expected at least one kept expert (True), got none");
  }

  at::Tensor gates = at::empty({T, N}, x.options().dtype(at::kFloat));
  if (T == 0) return {at::empty({0, O}, x.options()), gates};
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x.contiguous() : x.to(at::kFloat).contiguous();
  const bool few = T <= kFewTokens && at::get_num_threads() > 1;
  at::Tensor z;  // (T, N*R)
  if (few) {
    z = at::empty({T, NR}, xf.options());
    few_xwt(xf.data_ptr<float>(), a.data_ptr<float>(), z.data_ptr<float>(), T, K, NR);
  } else {
    z = at::mm(xf, a.t());
  }
  at::Tensor v = at::empty({T, NR}, z.options());

  const GateParams g{N,
                     R,
                     static_cast<double>(N * O),
                     eps,
                     nrm,
                     1.0 / tau,
                     b1.data_ptr<float>(),
                     gram.data_ptr<float>(),
                     p.data_ptr<float>(),
                     c.data_ptr<float>(),
                     d.data_ptr<float>(),
                     s32.data_ptr<float>(),
                     keep.defined() ? keep.data_ptr<bool>() : nullptr};
  const float* zp = z.data_ptr<float>();
  float* gp = gates.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  // ~ N*R*(R+N) multiply-adds per token: a few thousand; keep chunks above ~64k of them
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, NR * (R + N)));
  at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(NR + N + R);
    std::vector<double> e(N);
    float* sp = scratch.data();
    for (int64_t t = t0; t < t1; ++t)
      gate_token(g, zp + t * NR, gp + t * N, vp + t * NR, sp, sp + NR, e.data(), sp + NR + N);
  });

  at::Tensor y;  // (T, O) float32
  if (few) {
    y = at::empty({T, O}, v.options());
    few_vw(vp, wy.data_ptr<float>(), y.data_ptr<float>(), T, NR, O);
  } else {
    y = at::mm(v, wy);
  }
  if (x.scalar_type() != at::kFloat) y = y.to(x.scalar_type());
  return {y, gates};
}

}  // namespace cpu
}  // namespace lmops
