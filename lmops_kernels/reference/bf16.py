"""Plain-torch reference of ``bf16_linear``: the specification the native kernel is tested against."""

from __future__ import annotations

import torch

__all__ = ["bf16_linear"]


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = (float32(x) @ float32(weight)^T + float32(bias))`` cast to ``x``'s dtype.

    Args:
        x: ``(..., K)`` float16|bfloat16|float32; weight: ``(N, K)`` bfloat16; bias: ``(N,)`` floating or None.
    Returns:
        ``(..., N)`` in ``x``'s dtype.
    """
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
