// AVX-512 VNNI ternary GEMM (vpdpbusd on 256-bit vectors, AVX512VL). Chosen at run time.
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")
#define LMOPS_VNNI 1
#include "gemm_simd.inc"

namespace lmops {
namespace cpu {
void gemm_avx512vnni(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end) {
  gemm_simd(a, m_begin, m_end, nb_begin, nb_end);
}
}  // namespace cpu
}  // namespace lmops
