"""int8 weights with per-output-channel scales: the weight quantizer and ``int8_linear``, a W8A8 linear
whose native CPU kernel is a decode GEMV (built for an LLM's output head).

Each function's docstring is its contract; the plain-torch reference
(:mod:`lmops_kernels.reference.int8`) is its specification.

Why W8A8 and not weight-only int8 (float activations): on this project's 2-core AVX-512 VNNI EPYC
(Zen 4), one thread, a 32000 x 2048 GEMV streaming from memory (standalone C++ loops, one weight row at
a time), the vpdpbusd loop read 24.5 GB/s of weights and a weight-only loop (int8 -> float32 convert +
FMA) 12.5 GB/s: compute-bound on the conversions, so it needs both cores to reach the memory bandwidth
that W8A8 reaches on one, and falls behind as soon as a core is busy. The activation quantization is
the one ``ternary_linear`` already applies to every projection of a BitNet model (per-token absmax
int8); on the ``lmops demo`` model it changed the validation loss by 1e-4 nats (as much as a bf16
head; ``benches/RESULTS.md``).
"""

from __future__ import annotations

import torch

from .checks import FLOAT_ACTIVATIONS as _FLOAT_ACTIVATIONS
from .checks import check_bias as _check_bias
from .checks import check_no_grad as _check_no_grad
from .checks import check_same_device as _check_same_device
from .checks import check_tensor as _check_tensor
from .reference.int8 import quantize_weight_int8 as _quantize_weight_int8

__all__ = ["MAX_IN_FEATURES", "int8_linear", "quantize_weight_int8"]

#: largest ``K`` of :func:`int8_linear`: keeps every integer sum of the kernels inside int32
MAX_IN_FEATURES = 65536


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (row) absmax int8 quantization of a weight matrix.

    ``scale[n] = max(max_k |w[n, k]|, 1e-12) / 127``; ``q = clamp(round(w / scale[:, None]), -127, 127)``
    (round half to even, in float32).

    Args:
        w: ``(N, K)`` float16|bfloat16|float32|float64, finite, on any device.
    Returns:
        ``(q, scale)``: ``q`` int8 ``(N, K)`` in [-127, 127]; ``scale`` float32 ``(N,)``, so that
        ``w ~= q * scale[:, None]`` (each element within ``scale[n] / 2``).
    """
    _check_tensor("w", w)
    if not w.dtype.is_floating_point:
        raise TypeError(f"w: expected a floating-point tensor, got {w.dtype}")
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"w: expected a non-empty (out_features, in_features) matrix, got shape {tuple(w.shape)}")
    w = w.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w: expected finite values; it holds NaN or Inf")
    return _quantize_weight_int8(w)


def _check_int8_linear(x, weight, weight_scale, bias) -> None:
    """The checks of :func:`int8_linear`: one expression accepts every valid call (this runs once per
    decoded token); only a call it rejects walks the checks one by one to word the error."""
    try:
        k = x.shape[-1]
        device = x.device
        if (
            x.dtype in _FLOAT_ACTIVATIONS
            and 0 < k <= MAX_IN_FEATURES
            and weight.dtype is torch.int8
            and weight.dim() == 2
            and weight.shape[1] == k
            and weight.device == device
            and weight_scale.dtype is torch.float32
            and weight_scale.shape == (weight.shape[0],)
            and weight_scale.device == device
            and (
                bias is None
                or (bias.shape == (weight.shape[0],) and bias.is_floating_point() and bias.device == device)
            )
            and isinstance(x, torch.Tensor)
            and isinstance(weight, torch.Tensor)
            and isinstance(weight_scale, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))
            and not ((x.requires_grad or (bias is not None and bias.requires_grad)) and torch.is_grad_enabled())
        ):
            return
    except (AttributeError, IndexError, TypeError):
        pass
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    k = x.shape[-1] if x.dim() else 0
    if not 0 < k <= MAX_IN_FEATURES:
        raise ValueError(
            f"x: expected shape (..., in_features) with 1 <= in_features <= {MAX_IN_FEATURES}, got {tuple(x.shape)}"
        )
    _check_tensor("weight", weight)
    if weight.dtype != torch.int8:
        raise TypeError(f"weight: expected int8 (from quantize_weight_int8), got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight: expected shape (out_features, {k}) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    _check_same_device("x", x, "weight", weight)
    _check_tensor("weight_scale", weight_scale)
    if weight_scale.dtype != torch.float32 or weight_scale.shape != (weight.shape[0],):
        raise ValueError(f"weight_scale: expected float32 of shape ({weight.shape[0]},), "
                         f"got {weight_scale.dtype} {tuple(weight_scale.shape)}")
    _check_same_device("x", x, "weight_scale", weight_scale)
    _check_bias(bias, weight.shape[0], x)
    _check_no_grad("int8_linear", x, bias)


_int8_linear_op = torch.ops.lmops.int8_linear.default
# The same dispatcher entry without the Python frame of OpOverload.__call__ (as ternary_linear does);
# torch.compile traces the public OpOverload instead.
_int8_linear_entry = _int8_linear_op._op
_compiling = torch.compiler.is_compiling


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8 linear with per-output-channel weight scales (an LLM output head at decode).

    ``y[m, n] = (sum_k x_q[m, k] weight[n, k]) * (weight_scale[n] / s[m]) + bias[n]``, where
    ``(x_q, s) = quantize_activation_absmax(x)`` (per-row absmax int8, ``s = 127 / max |x[m]|``, as
    ``ternary_linear``), the sum exact in int32, the rest in float32, the output cast to ``x``'s dtype.
    Equivalently ``y = (x_q @ weight^T) * (s_x[:, None] * s_w[None, :])`` with ``s_x = 1 / s`` and
    ``s_w = weight_scale``. Inference only (no gradient).

    Args:
        x: ``(..., K)`` float32|bfloat16|float16, ``1 <= K <= 65536``; any strides; leading dims may be
            empty.
        weight: ``(N, K)`` int8 (any int8 value; :func:`quantize_weight_int8` gives [-127, 127]).
        weight_scale: ``(N,)`` float32, ``W ~= weight * weight_scale[:, None]``.
        bias: ``(N,)`` floating, or None.
        All on one device (the native kernel serves CPU tensors; other devices run the reference).
    Returns:
        ``(..., N)`` in ``x``'s dtype. Tolerance: every backend and CPU instruction set (scalar, AVX2,
        AVX-512 VNNI) equals the plain-torch reference bit for bit, in float32, bfloat16 and float16
        (the integer sum is exact; the epilogue is the same float32 operations in the same order).
        Against ``F.linear(x, W)`` on the float weights, the error is that of the two roundings (each
        weight within ``weight_scale[n] / 2``, each activation within ``max |x[m]| / 254``): at most
        ``weight_scale[n] / 2 * sum_k |x[m, k]| + max |x[m]| / 254 * sum_k |W[n, k]|`` plus their product
        term and the output dtype's rounding. Rows of ``x`` holding NaN/Inf give NaN rows.
    """
    _check_int8_linear(x, weight, weight_scale, bias)
    if _compiling():
        return _int8_linear_op(x, weight, weight_scale, bias)
    return _int8_linear_entry(x, weight, weight_scale, bias)
