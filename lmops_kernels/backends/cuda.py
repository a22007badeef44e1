"""The ``cuda`` backend: lmops' own CUDA kernels (``csrc/cuda``) for the W2A8 ternary ops.

``quantize_activation_absmax``, ``ternary_matmul_int`` and ``ternary_linear`` on CUDA tensors of an
sm_80+ GPU, where the extension was built with CUDA (``setup.py`` does that when torch has CUDA and
``nvcc`` exists). The kernels read the canonical tiled weight layout. Each call allocates its outputs
and workspace from torch's caching allocator and launches on the current stream without a host sync,
so the calls are capturable in CUDA graphs. Semantics: :mod:`lmops_kernels.ternary`; the int32 products
and the float32 outputs equal the reference bit for bit.
"""

from __future__ import annotations

import torch

from .. import _native, dispatch

_capability_ok: dict[int, bool] = {}


def unavailable(device: str) -> str | None:
    """None when the CUDA kernels can serve ``device`` tensors, else why not."""
    reason = _native.missing_reason()
    if reason is not None:
        return reason
    if not _native.with_cuda():
        return (
            "lmops was built without its CUDA kernels (at build time torch had no CUDA, nvcc was not on PATH, "
            "or LMOPS_BUILD_CUDA=0); rebuild with a CUDA torch and nvcc: pip install --no-build-isolation lmops"
        )
    if device != "cuda":
        return f"the CUDA kernels run on cuda tensors, not {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    index = torch.cuda.current_device()
    ok = _capability_ok.get(index)
    if ok is None:
        ok = _capability_ok[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    if not ok:
        major, minor = torch.cuda.get_device_capability(index)
        return f"the CUDA kernels need compute capability 8.0+ (int8 mma.sync); cuda:{index} has {major}.{minor}"
    return None


# The kernels are registered in C++ at the CUDA dispatch key (csrc/cuda/ops_cuda.cpp); the table records
# them (fn None) for the automatic choice, LMOPS_BACKEND and `lmops info`.
for _op in ("quantize_activation_absmax", "ternary_matmul_int", "ternary_linear"):
    dispatch.register(_op, "cuda", ("cuda",), unavailable=unavailable)(None)
