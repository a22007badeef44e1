// AVX2 ternary GEMM (vpmaddubsw + vpmaddwd). Compiled for AVX2 here only; chosen at run time.
#pragma GCC target("avx2,fma")
#define LMOPS_VNNI 0
#include "gemm_simd.inc"

namespace lmops {
namespace cpu {
void gemm_avx2(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end) {
  gemm_simd(a, m_begin, m_end, nb_begin, nb_end);
}
}  // namespace cpu
}  // namespace lmops
