// Plain data shared by the ISA-specific int8 GEMV kernels and their driver (csrc/cpu/int8_gemv.cpp).
// Free of standard-library and ATen includes for the reason given in gemm_args.h: the ISA translation
// units compile what they include with wider instruction sets (#pragma GCC target).
#pragma once
#include <stdint.h>

namespace lmops {
namespace cpu {

// C[m, n] = sum_k xq[m, k] * w[n, k] for activation rows [m_begin, m_end) and weight rows [n_begin, n_end),
// exact in int32 (|C| <= 127 * 128 * K; the driver limits K to 65536).
struct Int8GemvArgs {
  const int8_t* xq;     // (M, ldx) int8 activations in [-127, 127] (the AVX2 kernel's sign trick needs
                        // no -128), each row zero-padded from K to ldx (a multiple of 64)
  int64_t ldx;
  const int32_t* xsum;  // (M,) sum of each xq row: removes the +128 offset of the VNNI kernel's u8 weights
  const int8_t* w;      // (N, K) int8, row-major, rows not padded (any value, -128 included)
  int64_t K;
  int32_t* out;         // (M, ldo) int32
  int64_t ldo;
};

// One entry point per instruction set; each computes a rectangle of C, single-threaded.
void int8_gemv_scalar(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);
void int8_gemv_avx2(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);
void int8_gemv_avx512vnni(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);

}  // namespace cpu
}  // namespace lmops
