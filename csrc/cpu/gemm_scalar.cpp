// Portable scalar path of the ternary GEMM: the same tiled layout, decoded one code at a time.
#include "gemm_args.h"

namespace lmops {
namespace cpu {

void gemm_scalar(const GemmArgs& a, int64_t m_begin, int64_t m_end, int64_t nb_begin, int64_t nb_end) {
  const int64_t n_full = a.N / 8;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = nb < n_full ? a.packed + nb * 32 * a.KB : a.tail;
    const int64_t width = nb < n_full ? 8 : a.N - 8 * n_full;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int8_t* x = a.xq + m * a.ldq;
      int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t kb = 0; kb < a.KB; ++kb) {
        const uint8_t* tile = wb + kb * 32;
        const int8_t* xk = x + kb * 16;
        for (int c = 0; c < 8; ++c) {
          int32_t s = 0;
          for (int kk = 0; kk < 4; ++kk) {
            const uint8_t byte = tile[c * 4 + kk];
            for (int j = 0; j < 4; ++j) s += (int32_t)((byte >> (2 * j)) & 3) * xk[4 * j + kk];
          }
          acc[c] += s;
        }
      }
      int32_t* o = a.out + m * a.ldo + nb * 8;
      for (int64_t c = 0; c < width; ++c) o[c] = acc[c] - a.rowsum[m];
    }
  }
}

}  // namespace cpu
}  // namespace lmops
