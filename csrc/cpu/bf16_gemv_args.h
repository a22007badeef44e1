// Plain data shared by the bf16-weight GEMV kernels and their driver (csrc/cpu/bf16_gemv.cpp). Free of
// standard-library and ATen includes for the reason given in gemm_args.h.
#pragma once
#include <stdint.h>

namespace lmops {
namespace cpu {

// out[m, n] = sum_k x[m, k] * float(w[n, k]) in float32, for rows [m_begin, m_end) of x and weight rows
// [n_begin, n_end).
struct Bf16GemvArgs {
  const float* x;     // (M, K) float32 activations
  const uint16_t* w;  // (N, K) bfloat16 bits, row-major
  int64_t K;
  float* out;         // (M, ldo) float32
  int64_t ldo;
};

void bf16_gemv_scalar(const Bf16GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);
void bf16_gemv_avx2(const Bf16GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);

}  // namespace cpu
}  // namespace lmops
