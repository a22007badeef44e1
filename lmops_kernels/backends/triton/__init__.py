"""Triton kernels of lmops ops and their host launchers (one module per op: ``mole.py``).

Importing this package does not import ``triton``: the kernels are built on first use, so
``import lmops_kernels`` works where triton is not installed. Triton serves CUDA tensors, and CPU
tensors only under its interpreter (``TRITON_INTERPRET=1`` set before triton is imported), where
the dispatcher uses it only when ``LMOPS_BACKEND=triton`` forces it: that is how CI tests the
kernels without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

_installed: bool | None = None


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels built now run in triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def unavailable(device: str) -> str | None:
    """None when the Triton kernels can run on ``device`` tensors, else why not."""
    global _installed
    if _installed is None:
        _installed = importlib.util.find_spec("triton") is not None
    if not _installed:
        return "triton is not installed (pip install 'lmops[triton]')"
    if device == "cpu":
        if not interpreting():
            return "Triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing triton"
        return None
    if device == "cuda":
        import torch

        return None if torch.cuda.is_available() else "CUDA is not available"
    return f"Triton kernels run on cuda tensors (or cpu under TRITON_INTERPRET=1), not {device}"


# ----------------------------------------------------------------------------------------------
# registered here as the ``triton`` backend (kernels in ``ternary.py`` and ``mole.py``); the functions
# import the kernel module (and so triton) on first call only.
# ----------------------------------------------------------------------------------------------


def _register() -> None:
    from ... import dispatch

    def _triton_quantize_activation_absmax(x, bits=8):
        from .ternary import quantize_activation_absmax

        return quantize_activation_absmax(x, bits)

    def _triton_ternary_matmul_int(x_q, packed, layout="tiled"):
        from .ternary import ternary_matmul_int

        return ternary_matmul_int(x_q, packed, layout)

    def _triton_ternary_linear(x, packed, weight_scale, bias=None, layout="tiled"):
        from .ternary import ternary_linear

        return ternary_linear(x, packed, weight_scale, bias, layout)

    # The matmul kernels read both layouts; "planes" first: weight tiles and the activations of each
    # bit pair are then plain 2-D block loads (contiguous along k), not 4-byte gathers every 16 bytes.
    for op, fn, layouts in (
        ("quantize_activation_absmax", _triton_quantize_activation_absmax, ("tiled",)),
        ("ternary_matmul_int", _triton_ternary_matmul_int, ("planes", "tiled")),
        ("ternary_linear", _triton_ternary_linear, ("planes", "tiled")),
    ):
        dispatch.register(
            op, "triton", ("cuda", "cpu"), auto_devices=("cuda",), unavailable=unavailable, layouts=layouts
        )(fn)

    def _triton_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
        from .mole import mole_gate

        return mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps)

    dispatch.register("mole_gate", "triton", ("cuda", "cpu"), auto_devices=("cuda",), unavailable=unavailable)(
        _triton_mole_gate
    )


_register()

