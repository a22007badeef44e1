// AVX2 int8 GEMV (vpmaddubsw + vpmaddwd). Compiled for AVX2 here only; chosen at run time.
//
// vpmaddubsw multiplies unsigned by signed bytes and adds pairs into saturating int16. With |w| as the
// unsigned operand (0..128, -128 included) and x * sign(w) as the signed one (vpsignb; the activations
// are in [-127, 127], so the negation never wraps), a pair is at most 2 * 128 * 127 = 32512 < 32767:
// never saturates. vpmaddwd against ones widens the pairs to int32. Each weight row is read once, front
// to back, and reused for up to 4 activation rows; the last K % 32 weights are summed in scalar code.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "int8_gemv_args.h"
#include "row_tiles.h"

namespace {

using lmops::cpu::Int8GemvArgs;

inline __m256i dot32(__m256i wv, __m256i xv, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv)), ones);
}

inline int32_t hsum(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1)));
}

template <int R>
inline void row_kernel(const Int8GemvArgs& a, int64_t m0, int64_t n) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* w = a.w + n * a.K;
  const int8_t* x = a.xq + m0 * a.ldx;
  const int64_t k32 = a.K & ~int64_t{31};
  __m256i acc[R], acc2[R];
  for (int r = 0; r < R; ++r) acc[r] = acc2[r] = _mm256_setzero_si256();
  int64_t k = 0;
  if (R == 1) {
    for (; k + 64 <= k32; k += 64) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 32));
      acc[0] = _mm256_add_epi32(acc[0], dot32(w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)), ones));
      acc2[0] = _mm256_add_epi32(acc2[0],
                                 dot32(w1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + 32)), ones));
    }
  }
  for (; k < k32; k += 32) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_add_epi32(
          acc[r], dot32(wv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * a.ldx + k)), ones));
  }
  for (int r = 0; r < R; ++r) {
    int32_t sum = hsum(_mm256_add_epi32(acc[r], acc2[r]));
    const int8_t* xr = x + r * a.ldx;
    for (int64_t kk = k32; kk < a.K; ++kk) sum += static_cast<int32_t>(w[kk]) * xr[kk];
    a.out[(m0 + r) * a.ldo + n] = sum;
  }
}

}  // namespace

namespace lmops {
namespace cpu {

void int8_gemv_avx2(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n)
    for_row_tiles(m_begin, m_end, [&](auto tile, int64_t m) { row_kernel<decltype(tile)::rows>(a, m, n); });
}

}  // namespace cpu
}  // namespace lmops
