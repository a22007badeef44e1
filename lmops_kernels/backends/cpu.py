"""The ``cpu`` backend: the native extension's kernels (``csrc/cpu``) for the hot ops on CPU tensors.

They read packed weights in the canonical ``"tiled"`` layout only. Where the extension is missing,
the backend reports why and the dispatcher falls back to the reference.
"""

from __future__ import annotations

import torch

from .. import _native, dispatch
from .. import mole_rank as _mole_rank


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


@dispatch.register("mole_gate", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    # Weight-only tensors (stacked A and B^T, Gram matrices, gate projections) come from a cache per
    # weight set; the native kernel does the two GEMMs and one fused loop over tokens.
    ex, gt = _mole_rank.cached_tensors(lora_A, lora_B, gate_weight, norm_weight, norm_bias)
    return _native.module().mole_gate_forward(
        x, ex.a, ex.wy, ex.b1, ex.gram, gt.p, gt.c, gt.d, scaling, temperature, expert_mask, norm, eps
    )
