// The vectorized per-row absmax quantizer shared by ternary_linear, int8_linear and
// quantize_activation_absmax. Free of standard-library and ATen includes for the reason given in
// gemm_args.h (its translation unit is compiled with #pragma GCC target).
#pragma once
#include <stdint.h>

namespace lmops {
namespace cpu {

enum class QuantSrc : int { F32 = 0, BF16 = 1, F16 = 2 };

// One row of K elements of `x` (float32, or bfloat16/float16 as raw uint16 bits) -> `q` (K int8, then
// ldq - K zero bytes), `*scale` and `*rowsum`, with the scalar reference's arithmetic in float32:
// s = (1 / max(amax, 1e-5)) * qp; q = clamp(round_half_even(x * s), qn, qp). A row holding NaN/Inf gets
// s = NaN and q = 0. AVX2 + F16C: the caller checks the CPU.
void quantize_row_avx2(const void* x, QuantSrc src, int64_t K, int64_t ldq, float qp, float qn, int8_t* q,
                       float* scale, int32_t* rowsum);

}  // namespace cpu
}  // namespace lmops
