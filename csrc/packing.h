// The packed ternary weight format, as the native kernels see it: K is padded to a multiple of kBlockK
// and every row holds packed_cols(K) bytes (2 bits a weight). The layouts: lmops_kernels/layouts.py; the
// Python side's one definition of the same numbers: lmops_kernels/reference/packing.py.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>

namespace lmops {

constexpr int64_t kBlockK = 16;  // weights along K in one k-block: 4 bytes of 4 bit pairs

constexpr int64_t packed_cols(int64_t in_features) { return 4 * ((in_features + kBlockK - 1) / kBlockK); }

// ``packed`` in the canonical "tiled" layout: itself, or a converted copy through the lmops::convert_layout
// op (registered by lmops_kernels). The native kernels read "tiled" only; layers keep their weights in the
// layout their backend reads (lmops_kernels.dispatch.preferred_layout), so this copy is the rare case.
inline at::Tensor as_tiled(const at::Tensor& packed, c10::string_view layout) {
  if (layout == "tiled") return packed;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lmops::convert_layout", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view, c10::string_view)>();
  return op.call(packed, layout, "tiled");
}

}  // namespace lmops
