"""The ``reference`` backend: plain torch (:mod:`lmops_kernels.reference`), every op, every device.

It reads packed weights in the canonical ``"tiled"`` layout only; the op converts other layouts.
"""

from __future__ import annotations

import torch

from .. import dispatch, layouts
from .. import reference as ref

_ALL_DEVICES = ("cpu", "cuda", "meta", "xpu", "mps")

for _op in (
    "quantize_weight_absmean",
    "quantize_activation_absmax",
    "pack_ternary",
    "unpack_ternary",
    "to_hf_bitnet",
    "from_hf_bitnet",
):
    dispatch.register(_op, "reference", _ALL_DEVICES)(getattr(ref, _op))


@dispatch.register("ternary_matmul_int", "reference", _ALL_DEVICES)
def _ref_ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor, layout: str = "tiled") -> torch.Tensor:
    return ref.ternary_matmul_int(x_q, packed)


@dispatch.register("ternary_linear", "reference", _ALL_DEVICES)
def _ref_ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    layout: str = "tiled",
) -> torch.Tensor:
    return ref.ternary_linear(x, packed, weight_scale, bias)


dispatch.register("int8_linear", "reference", _ALL_DEVICES)(ref.int8_linear)


@dispatch.register("ternary_linear_multi", "reference", _ALL_DEVICES)
def _ternary_linear_multi(x, packed, weight_scale, bias, layout="tiled"):
    # one ternary_linear per matrix, each dispatched as usual (so on GPUs to their own kernels)
    return [torch.ops.lmops.ternary_linear(x, p, s, b, layout) for p, s, b in zip(packed, weight_scale, bias)]


dispatch.register("bf16_linear", "reference", _ALL_DEVICES)(ref.bf16_linear)
dispatch.register("mole_gate", "reference", _ALL_DEVICES)(ref.mole_gate)
dispatch.register("convert_layout", "reference", _ALL_DEVICES)(layouts.convert)
