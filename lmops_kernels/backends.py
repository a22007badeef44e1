"""Registers every backend's implementations with the dispatcher.

- ``reference``: plain torch (``lmops_kernels.reference``), every op, every device.
- ``cpu``: the native extension (``csrc/cpu``), the hot ops on CPU tensors.

Both read packed weights in the canonical ``"tiled"`` layout only (the default ``layouts`` of
:func:`dispatch.register`); the op hands them that layout, converting when needed.
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


def _native_missing(device: str) -> str | None:
    return _native.missing_reason()


@dispatch.register("quantize_activation_absmax", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_quantize_activation_absmax(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    q, s = _native.module().quantize_activation_absmax(x2, bits)
    return q.view(x.shape), s.view(*x.shape[:-1], 1)


@dispatch.register("ternary_matmul_int", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor, layout: str = "tiled") -> torch.Tensor:
    return _native.module().ternary_matmul_int(x_q, packed, _native.cpu_isa())


@dispatch.register("ternary_linear", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    layout: str = "tiled",
) -> torch.Tensor:
    return _native.module().ternary_linear(x.contiguous(), packed.contiguous(), weight_scale, bias, _native.cpu_isa())


# ----------------------------------------------------------------------------------------------
# mole_gate: reference (materializes the expert outputs), cpu (native, rank space), triton
# ----------------------------------------------------------------------------------------------

from . import mole_rank as _mole_rank  # noqa: E402
from . import triton as _triton  # noqa: E402  (does not import triton itself)
from .reference.mole import mole_gate as _ref_mole_gate  # noqa: E402

dispatch.register("mole_gate", "reference", _ALL_DEVICES)(_ref_mole_gate)


@dispatch.register("mole_gate", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    # Weight-only tensors (stacked A and B^T, Gram matrices, gate projections) come from a cache per
    # weight set; the native kernel does the two GEMMs and one fused loop over tokens.
    ex, gt = _mole_rank.cached_tensors(lora_A, lora_B, gate_weight, norm_weight, norm_bias)
    return _native.module().mole_gate_forward(
        x, ex.a, ex.wy, ex.b1, ex.gram, gt.p, gt.c, gt.d, scaling, temperature, expert_mask, norm, eps
    )


@dispatch.register(
    "mole_gate", "triton", ("cuda", "cpu"), auto_devices=("cuda",), unavailable=_triton.unavailable
)
def _triton_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    from .triton.mole import mole_gate

    return mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps)
