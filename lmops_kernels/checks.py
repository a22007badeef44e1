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
