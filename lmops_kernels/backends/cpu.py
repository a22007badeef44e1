"""The ``cpu`` backend: the native extension's kernels (``csrc/cpu``) for the hot ops on CPU tensors.

They read packed weights in the canonical ``"tiled"`` layout (``csrc/packing.h`` converts others
through ``lmops::convert_layout``). Where the extension is missing, the backend reports why and the
dispatcher falls back to the reference.
"""

from __future__ import annotations

import torch

from .. import _native, dispatch


def _native_missing(device: str) -> str | None:
    return _native.missing_reason()


# The kernels are registered in C++ at the CPU dispatch key (csrc/cpu/register.cpp); the
# table records them (fn None) for the automatic choice, LMOPS_BACKEND and `lmops info`.
for _op in ("quantize_activation_absmax", "ternary_matmul_int", "ternary_linear", "mole_gate"):
    dispatch.register(_op, "cpu", ("cpu",), unavailable=_native_missing)(None)


def _kernel_missing(op: str):
    def unavailable(device: str) -> str | None:
        # a library built before the op existed loads fine but has no CPU kernel for it
        reason = _native.missing_reason()
        if reason is None and not torch._C._dispatch_has_kernel_for_dispatch_key(f"lmops::{op}", "CPU"):
            reason = (f"the loaded native library {_native.library_path()} predates lmops::{op}; rebuild it: "
                      f"`{_native.REBUILD_COMMAND}`")
        return reason

    return unavailable


for _op in ("int8_linear", "bf16_linear", "ternary_linear_multi"):
    dispatch.register(_op, "cpu", ("cpu",), unavailable=_kernel_missing(_op))(None)
