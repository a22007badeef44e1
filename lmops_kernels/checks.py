"""Argument checks shared by the public op wrappers: each raises ``TypeError``/``ValueError`` naming the
argument, the value seen and what was expected."""

from __future__ import annotations

import torch

FLOAT_ACTIVATIONS = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; move them to one device")


def check_bias(bias: torch.Tensor | None, n: int, x: torch.Tensor) -> None:
    """``bias``: None or a floating ``(n,)`` tensor on ``x``'s device."""
    if bias is None:
        return
    check_tensor("bias", bias)
    if bias.shape != (n,) or not bias.is_floating_point():
        raise ValueError(f"bias: expected a floating tensor of shape ({n},), got {bias.dtype} {tuple(bias.shape)}")
    check_same_device("x", x, "bias", bias)


def check_no_grad(op: str, *tensors: torch.Tensor | None) -> None:
    """An inference-only op refuses inputs that would need a gradient (while grad mode is on)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is inference-only (no gradient): call it under torch.no_grad()")
