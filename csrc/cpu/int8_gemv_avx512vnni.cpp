// AVX-512 VNNI int8 GEMV (vpdpbusd on 512-bit vectors). Compiled for AVX-512 here only; chosen at run time.
//
// vpdpbusd multiplies unsigned by signed bytes. The weights are made unsigned on the fly by flipping
// their sign bit (w ^ 0x80 = w + 128, one vpxor per 64 weights), so that
//   sum_k (w + 128) x = sum_k w x + 128 * sum_k x,
// and the row sum of the activations (computed once per call) removes the offset: exact for any int8
// weight, no stored correction, no saturation (vpdpbusd accumulates in int32 without saturating).
// The alternative, x + 128 against signed weights, needs a per-weight-row sum (stored, or a second
// vpdpbusd per vector). Each weight row is read once, front to back (one sequential stream per
// thread), and reused for up to 4 activation rows.
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")
// GCC 12's AVX-512 headers build lane extracts on _mm512_undefined_* and then warn that it may be
// uninitialized (_mm512_reduce_add_epi32); the value is never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "int8_gemv_args.h"
#include "row_tiles.h"

namespace {

using lmops::cpu::Int8GemvArgs;

template <int R>
inline void row_kernel(const Int8GemvArgs& a, int64_t m0, int64_t n) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* w = a.w + n * a.K;
  const int8_t* x = a.xq + m0 * a.ldx;
  const int64_t k64 = a.K & ~int64_t{63};
  __m512i acc[R], acc2[R];
  for (int r = 0; r < R; ++r) acc[r] = acc2[r] = _mm512_setzero_si512();
  int64_t k = 0;
  if (R == 1) {  // decode: two chains, so two loads are in flight
    for (; k + 128 <= k64; k += 128) {
      const __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(w + k), flip);
      const __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(w + k + 64), flip);
      acc[0] = _mm512_dpbusd_epi32(acc[0], w0, _mm512_loadu_si512(x + k));
      acc2[0] = _mm512_dpbusd_epi32(acc2[0], w1, _mm512_loadu_si512(x + k + 64));
    }
  }
  for (; k < k64; k += 64) {
    const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(w + k), flip);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], wv, _mm512_loadu_si512(x + r * a.ldx + k));
  }
  if (k < a.K) {
    // The row's last K % 64 weights; the masked-off lanes read nothing and become 0x80 after the flip,
    // against the activations' zero padding.
    const __mmask64 mask = (~__mmask64{0}) >> (64 - (a.K - k));
    const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + k), flip);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], wv, _mm512_loadu_si512(x + r * a.ldx + k));
  }
  for (int r = 0; r < R; ++r) {
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[r], acc2[r]));
    a.out[(m0 + r) * a.ldo + n] = sum - 128 * a.xsum[m0 + r];
  }
}

}  // namespace

namespace lmops {
namespace cpu {

void int8_gemv_avx512vnni(const Int8GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n)
    for_row_tiles(m_begin, m_end, [&](auto tile, int64_t m) { row_kernel<decltype(tile)::rows>(a, m, n); });
}

}  // namespace cpu
}  // namespace lmops
