// Plain data shared by the ISA-specific ternary GEMM kernels and their driver.
// Deliberately free of standard-library and ATen includes: the ISA translation units compile
// everything they include with wider instruction sets (#pragma GCC target), and an inline function
// emitted there could be picked by the linker for the whole program.
#pragma once
#include <stdint.h>

namespace lmops {
namespace cpu {

// C[m, n] = sum_k xq[m, k] * q[n, k] for rows [m_begin, m_end) and n-blocks [nb_begin, nb_end),
// with q read from the lmops tiled 2-bit layout (see lmops_kernels/reference/packing.py).
struct GemmArgs {
  const int8_t* xq;        // (M, ldq) int8, rows zero-padded to ldq = 16 * KB
  int64_t ldq;
  const int32_t* rowsum;   // (M,) sum of each xq row: removes the +1 of the unsigned weight codes
  const uint8_t* packed;   // tiled codes, n-block after n-block, 32 * KB bytes per full block
  const uint8_t* tail;     // the last, partial n-block widened to 8 columns (code 1 = 0), or null
  int64_t N;
  int64_t KB;
  int32_t* out;            // (M, ldo) int32
  int64_t ldo;
};

// One entry point per instruction set. Each computes a rectangle of C, single-threaded.
void gemm_scalar(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end);
void gemm_avx2(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end);
void gemm_avx512vnni(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end);

}  // namespace cpu
}  // namespace lmops
