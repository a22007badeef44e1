"""The output head in int8 (:class:`Int8Linear`) or through lmops's bf16 GEMV (:class:`Bf16Head`), and
the functions that put one in a model's place.

The bf16 output head of a 32000-token, 2048-wide model reads 125 MiB per decoded token, more than all
of a BitNet model's ternary projections together; int8 weights with per-output-channel scales halve
that. The default everywhere stays the model's own head (as bitnet.cpp keeps a 16-bit head, so decode
figures compare fairly); an int8 head is asked for in one of two ways:

- ``lmops.generate(model, ids, ..., head_dtype="int8")``: the engine calls an int8 copy of the head
  (quantized once, kept with the engine, redone when the head's weights change); the model is unchanged.
- ``lmops.generate(model, ids, ..., head_dtype="bf16")``: still a 16-bit head (the comparison with
  bitnet.cpp's f16 head stays fair), computed by :func:`lmops_kernels.bf16.bf16_linear` (float32
  accumulation) instead of torch's ``F.linear``, which streams a bf16 head at about two thirds of the
  memory bandwidth on the project's CPUs. A bf16 model's own weight is used as is; a float32 head gets a
  bf16 copy (half the bytes).
- ``quantize_head(model)``: swaps ``model.lm_head`` for an :class:`Int8Linear` in place, so that every
  path (``model(...)``, ``model.generate``, ``lmops.generate``, a loss evaluation) uses it;
  ``restore_head(model)`` puts the original back.

Numerics: :func:`lmops_kernels.int8.int8_linear` (W8A8: per-token absmax int8 activations, as every
BitNet projection already uses, int32 accumulation, float32 rescale), weights from
:func:`lmops_kernels.int8.quantize_weight_int8`. Its effect on the demo model's loss is in
``benches/RESULTS.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmops_kernels.bf16 import bf16_linear
from lmops_kernels.int8 import int8_linear, quantize_weight_int8

__all__ = ["HEAD_DTYPES", "Bf16Head", "Int8Linear", "head_for", "quantize_head", "restore_head"]

#: the values ``head_dtype`` takes: None (the model's own head), "bf16" or "int8"
HEAD_DTYPES = (None, "bf16", "int8")


class Bf16Head(nn.Module):
    """An ``nn.Linear``'s forward through :func:`~lmops_kernels.bf16.bf16_linear` (inference only).

    ``weight``: ``(out_features, in_features)`` bfloat16, the linear's own weight tensor when it is
    bfloat16 already (no copy), else a bfloat16 copy; ``bias``: the linear's bias or None. Forward:
    ``x (..., in_features)`` float32|bfloat16|float16 -> ``(..., out_features)`` in ``x``'s dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        self.weight = weight if weight.dtype == torch.bfloat16 else weight.to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bf16_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bf16 GEMV"


class Int8Linear(nn.Module):
    """``nn.Linear``'s forward with int8 weights and per-output-channel float32 scales (inference only).

    Buffers: ``weight_int8`` ``(out_features, in_features)`` int8 in [-127, 127]; ``weight_scale``
    ``(out_features,)`` float32 (``W ~= weight_int8 * weight_scale[:, None]``); ``bias``
    ``(out_features,)`` float32 or None. Forward: ``x (..., in_features)`` float32|bfloat16|float16 ->
    ``(..., out_features)`` in ``x``'s dtype, one :func:`~lmops_kernels.int8.int8_linear` call.
    ``.to(dtype)`` leaves the scales and bias in float32 (they are part of the format).

    ``base_layer``: the ``nn.Linear`` it was made from, kept when asked (:meth:`from_linear`), so that
    :func:`restore_head` gives back the very same module; None otherwise.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: torch.device | str | None = None, orig_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.orig_dtype = orig_dtype
        self.base_layer: nn.Linear | None = None
        self.register_buffer("weight_int8", torch.zeros((out_features, in_features), dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, keep_original: bool = False) -> "Int8Linear":
        """Quantize ``linear`` (per-output-channel absmax int8); ``keep_original``: hold it as
        ``base_layer`` (no copy: for a head tied to the embeddings it costs nothing)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        if weight.dim() != 2 or not weight.dtype.is_floating_point or weight.is_meta:
            raise TypeError(f"linear: expected a floating-point weight with data, got {weight.dtype} on {weight.device}")
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, device=weight.device,
                  orig_dtype=weight.dtype)
        q, scale = quantize_weight_int8(weight)
        out.weight_int8.copy_(q)
        out.weight_scale.copy_(scale)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().float())
        if keep_original:
            out.base_layer = linear
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight_int8, self.weight_scale, self.bias)

    @torch.no_grad()
    def dequantize(self) -> nn.Linear:
        """A new ``nn.Linear`` holding ``weight_int8 * weight_scale`` (and the bias) in the original dtype."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight_int8.device, dtype=self.orig_dtype)
        linear.weight.copy_(self.weight_int8.float() * self.weight_scale[:, None])
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def _apply(self, fn, recurse: bool = True):
        # .to(dtype)/.half() would cast the float32 scales and bias: keep them float32, only move them
        kept = {name: getattr(self, name) for name in ("weight_scale", "bias") if getattr(self, name) is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            now = getattr(self, name)
            if now.dtype != torch.float32:
                setattr(self, name, before.to(now.device))
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 per-channel (W8A8), from {self.orig_dtype}"
                + (", base_layer kept" if self.base_layer is not None else ""))


def _head(model: nn.Module) -> nn.Module:
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"model: expected a causal LM with an lm_head module, got {type(model).__name__}")
    return head


def _check_head_dtype(head_dtype: Any) -> None:
    if head_dtype not in HEAD_DTYPES:
        raise ValueError(f"head_dtype: expected None (the model's own head), 'bf16' or 'int8', got {head_dtype!r}")


def quantize_head(model: nn.Module, head_dtype: str = "int8", *, keep_original: bool = True) -> Int8Linear:
    """Swap ``model.lm_head`` (an ``nn.Linear``) for an :class:`Int8Linear` of it, in place; return it.

    Every forward of the model then uses the int8 head. ``keep_original``: the new module holds the
    original head (``base_layer``), so :func:`restore_head` gives it back exactly; False drops it (its
    memory is freed unless the embeddings share it) and :func:`restore_head` dequantizes. Calling it on
    a model whose head is already an :class:`Int8Linear` returns that head.
    """
    if head_dtype != "int8":
        raise ValueError(f"head_dtype: expected 'int8', got {head_dtype!r}")
    head = _head(model)
    if isinstance(head, Int8Linear):
        return head
    if not isinstance(head, nn.Linear):
        raise TypeError(f"model.lm_head: expected an nn.Linear to quantize, got {type(head).__name__}")
    new = Int8Linear.from_linear(head, keep_original=keep_original)
    model.lm_head = new
    return new


def restore_head(model: nn.Module) -> nn.Module:
    """Inverse of :func:`quantize_head`: put the original head back (or, when it was not kept, an
    ``nn.Linear`` of the dequantized weights) and return it. ``ValueError`` when the head is not an
    :class:`Int8Linear`."""
    head = _head(model)
    if not isinstance(head, Int8Linear):
        raise ValueError(f"model.lm_head: expected an Int8Linear (from quantize_head), got {type(head).__name__}")
    original = head.base_layer if head.base_layer is not None else head.dequantize()
    model.lm_head = original
    return original


def head_for(lm_head: nn.Module, head_dtype: str | None, cache: dict) -> nn.Module:
    """The module the engine calls as the output head: ``lm_head`` itself (``head_dtype=None``, or an
    ``"int8"`` request for a head that is an :class:`Int8Linear` already), or a :class:`Bf16Head` /
    int8 copy of it kept in ``cache`` and made again when ``lm_head``'s weight or bias changed (another
    tensor, or an in-place write)."""
    _check_head_dtype(head_dtype)
    if head_dtype is None or isinstance(lm_head, Int8Linear):
        return lm_head
    if not isinstance(lm_head, nn.Linear):
        raise TypeError(f"head_dtype={head_dtype!r}: the model's lm_head must be an nn.Linear, "
                        f"got {type(lm_head).__name__}")
    key = tuple((id(t), t._version, t.data_ptr()) for t in (lm_head.weight, lm_head.bias) if t is not None)
    hit = cache.get(head_dtype)
    if hit is None or hit[0] != key:
        made = Bf16Head(lm_head) if head_dtype == "bf16" else Int8Linear.from_linear(lm_head)
        hit = cache[head_dtype] = (key, made)
    return hit[1]
