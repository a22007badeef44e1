// AVX2 + FMA bf16-weight GEMV: each weight row is widened to float32 (a 16-bit shift) and multiplied
// into float32 accumulators. Rows are streamed one after another, so each thread reads one sequential
// stream (what the hardware prefetchers follow best; see gemm_simd.inc); up to 4 activation rows share
// each widened weight vector. Chosen at run time.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "bf16_gemv_args.h"
#include "row_tiles.h"

namespace lmops {
namespace cpu {
namespace {

inline __m256 widen(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// R activation rows against one weight row: two accumulators per row (16 columns a step) keep the FMA
// chains short; the K % 8 tail in scalar.
template <int R>
inline void row_dot(const Bf16GemvArgs& a, int64_t m0, const uint16_t* w, float* out) {
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  const int64_t K = a.K;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 w0 = widen(w + k), w1 = widen(w + k + 8);
    for (int r = 0; r < R; ++r) {
      const float* x = a.x + (m0 + r) * K + k;
      acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc1[r]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 w0 = widen(w + k);
    for (int r = 0; r < R; ++r) acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a.x + (m0 + r) * K + k), acc0[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(acc0[r], acc1[r]));
    const float* x = a.x + (m0 + r) * K;
    for (int64_t kk = k; kk < K; ++kk) {
      uint32_t bits = static_cast<uint32_t>(w[kk]) << 16;
      float wv;
      __builtin_memcpy(&wv, &bits, 4);
      s += x[kk] * wv;
    }
    out[(m0 + r) * a.ldo] = s;
  }
}

}  // namespace

void bf16_gemv_avx2(const Bf16GemvArgs& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint16_t* w = a.w + n * a.K;
    float* out = a.out + n;
    for_row_tiles(m_begin, m_end, [&](auto tile, int64_t m) { row_dot<decltype(tile)::rows>(a, m, w, out); });
  }
}

}  // namespace cpu
}  // namespace lmops
