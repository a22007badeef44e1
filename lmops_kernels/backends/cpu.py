"""The ``cpu`` backend: the native extension's kernels (``csrc/cpu``) for the hot ops on CPU tensors.

They read packed weights in the canonical ``"tiled"`` layout (``csrc/packing.h`` converts others
through ``lmops::convert_layout``). Where the extension is missing, the backend reports why and the
dispatcher falls back to the reference.
"""

from __future__ import annotations

from .. import _native, dispatch
from .. import mole_rank as _mole_rank


def _native_missing(device: str) -> str | None:
    return _native.missing_reason()


# The ternary ops' kernels are registered in C++ at the CPU dispatch key (csrc/cpu/register.cpp); the
# table records them (fn None) for the automatic choice, LMOPS_BACKEND and `lmops info`.
for _op in ("quantize_activation_absmax", "ternary_matmul_int", "ternary_linear"):
    dispatch.register(_op, "cpu", ("cpu",), unavailable=_native_missing)(None)


# mole_gate: Python around the native forward (the weight-only tensors come from a cache in Python).
@dispatch.register("mole_gate", "cpu", ("cpu",), unavailable=_native_missing)
def _cpu_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    # Weight-only tensors (stacked A and B^T, Gram matrices, gate projections) come from a cache per
    # weight set; the native kernel does the two GEMMs and one fused loop over tokens.
    ex, gt = _mole_rank.cached_tensors(lora_A, lora_B, gate_weight, norm_weight, norm_bias)
    return _native.module().mole_gate_forward(
        x, ex.a, ex.wy, ex.b1, ex.gram, gt.p, gt.c, gt.d, scaling, temperature, expert_mask, norm, eps
    )
