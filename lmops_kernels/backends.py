"""Registers every backend's implementations with the dispatcher.

- ``reference``: plain torch (``lmops_kernels.reference``), every op, every device.
- ``cpu``: the native extension (``csrc/cpu``), the hot ops on CPU tensors.
"""

from __future__ import annotations

import torch

from . import _native, dispatch
from . import reference as ref

_ALL_DEVICES = ("cpu", "cuda", "meta", "xpu", "mps")

for _op in (
    "quantize_weight_absmean",
    "quantize_activation_absmax",
    "pack_ternary",
    "unpack_ternary",
    "to_hf_bitnet",
    "from_hf_bitnet",
    "ternary_matmul_int",
    "ternary_linear",
):
    dispatch.register(_op, "reference", _ALL_DEVICES)(getattr(ref, _op))


def _native_missing(device: str) -> str | None:
    return _native.missing_reason()


@dispatch.register("quantize_activation_absmax", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_quantize_activation_absmax(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    q, s = _native.module().quantize_activation_absmax(x2, bits)
    return q.view(x.shape), s.view(*x.shape[:-1], 1)


@dispatch.register("ternary_matmul_int", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return _native.module().ternary_matmul_int(x_q, packed, _native.cpu_isa())


@dispatch.register("ternary_linear", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_ternary_linear(
    x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return _native.module().ternary_linear(x.contiguous(), packed.contiguous(), weight_scale, bias, _native.cpu_isa())
