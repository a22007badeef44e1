// The row tiling shared by the CPU GEMV/GEMM kernels: rows [m_begin, m_end) in tiles of 4, then one
// tile of the 1-3 left, each tile size a compile-time constant for the kernel's register arrays.
// Free of standard-library and ATen includes for the reason given in gemm_args.h; `f` is a lambda of
// the including (ISA-specific) translation unit, so every instantiation stays local to it.
#pragma once
#include <stdint.h>

namespace lmops {
namespace cpu {

template <int R>
struct RowTile {
  static constexpr int rows = R;
};

// Calls f(RowTile<R>{}, m) for each tile of R rows starting at row m.
template <typename F>
inline void for_row_tiles(int64_t m_begin, int64_t m_end, F&& f) {
  int64_t m = m_begin;
  for (; m + 4 <= m_end; m += 4) f(RowTile<4>{}, m);
  switch (m_end - m) {
    case 3: f(RowTile<3>{}, m); break;
    case 2: f(RowTile<2>{}, m); break;
    case 1: f(RowTile<1>{}, m); break;
    default: break;
  }
}

}  // namespace cpu
}  // namespace lmops
