"""``bf16_linear``: a linear with bfloat16 weights and float32 accumulation, whose native CPU kernel is a
decode GEMV at the memory's read bandwidth (built for a 16-bit LLM output head).

Why not ``F.linear``: on this project's 2-core EPYC, torch's bfloat16 ``F.linear`` at M = 1 streams a
32000 x 2048 head at 15-20 GB/s (2 threads) where the machine reads ~30 GB/s, and its float32 path reads
twice the bytes. The kernel widens each bfloat16 weight to float32 (exact) and accumulates in float32,
one weight row after another (one sequential stream per thread). Its contract is the plain-torch
reference (:mod:`lmops_kernels.reference.bf16`).
"""

from __future__ import annotations

import torch

from .checks import FLOAT_ACTIVATIONS as _FLOAT_ACTIVATIONS
from .checks import check_bias as _check_bias
from .checks import check_no_grad as _check_no_grad
from .checks import check_same_device as _check_same_device
from .checks import check_tensor as _check_tensor

__all__ = ["bf16_linear"]


def _check_bf16_linear(x, weight, bias) -> None:
    """The checks of :func:`bf16_linear`: one expression accepts every valid call (this runs once per
    decoded token); only a call it rejects walks the checks one by one to word the error."""
    try:
        k = x.shape[-1]
        device = x.device
        if (
            x.dtype in _FLOAT_ACTIVATIONS
            and k > 0
            and weight.dtype is torch.bfloat16
            and weight.dim() == 2
            and weight.shape[1] == k
            and weight.device == device
            and (
                bias is None
                or (bias.shape == (weight.shape[0],) and bias.is_floating_point() and bias.device == device)
            )
            and isinstance(x, torch.Tensor)
            and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
        ):
            return
    except (AttributeError, IndexError, TypeError):
        pass
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    k = x.shape[-1]
    _check_tensor("weight", weight)
    if weight.dtype != torch.bfloat16:
        raise TypeError(f"weight: expected bfloat16, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight: expected shape (out_features, {k}) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    _check_same_device("x", x, "weight", weight)
    _check_bias(bias, weight.shape[0], x)
    _check_no_grad("bf16_linear", x, bias, weight)


_bf16_linear_op = torch.ops.lmops.bf16_linear.default
# The same dispatcher entry without the Python frame of OpOverload.__call__ (as ternary_linear does);
# torch.compile traces the public OpOverload instead.
_bf16_linear_entry = _bf16_linear_op._op
_compiling = torch.compiler.is_compiling


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with bfloat16 weights, accumulated in float32 (an LLM output head at decode).

    ``y[m, n] = sum_k float32(x[m, k]) * float32(weight[n, k]) (+ bias[n])`` in float32, cast to ``x``'s
    dtype. Inference only (no gradient). The native CPU kernel is a GEMV: every group of 4 rows of ``x``
    streams the whole weight once, so for large M (prefill, training) ``F.linear`` is the faster call.

    Args:
        x: ``(..., K)`` float32|bfloat16|float16, ``K >= 1``; any strides; leading dims may be empty.
        weight: ``(N, K)`` bfloat16.
        bias: ``(N,)`` floating, or None.
        All on one device (the native kernel serves CPU tensors; other devices run the reference).
    Returns:
        ``(..., N)`` in ``x``'s dtype. Tolerance against the reference (a float32 matmul of the widened
        operands): the same products summed in another order, so within ``1e-5 * sum_k |x[m, k] weight[n, k]|``
        plus the float32 rounding of the result in float32 (tested on random odd shapes), and one rounding
        step of the output dtype more in bfloat16/float16.
    """
    _check_bf16_linear(x, weight, bias)
    if _compiling():
        return _bf16_linear_op(x, weight, bias)
    return _bf16_linear_entry(x, weight, bias)
