"""``BitLinear``: a drop-in ``nn.Linear`` for BitNet b1.58 (ternary weights, int8 activations).

Two modes:

- **training** (after construction or :meth:`BitLinear.from_linear`): float latent weights; each forward
  uses absmean-ternary weights and per-token absmax int8 activations through a straight-through
  estimator (``v + (Q(v) - v).detach()``), so gradients reach the latent weights unchanged. Numerically
  the same as transformers' ``AutoBitLinear`` in online mode (BitNet b1.58, arXiv 2402.17764).
- **packed** (after :meth:`BitLinear.pack`): only ``weight_packed`` (2 bits per weight), ``weight_scale``
  (gamma) and the bias stay; forward is one ``lmops_kernels.ternary_linear`` call (native W2A8 kernel
  on CPU), differentiable in its input (STE), so adapters can train on top.

Packed weight layout: in memory, ``weight_packed`` is kept in the layout the backend chosen for its
device reads best (``weight_layout``, see :mod:`lmops_kernels.layouts`): chosen at :meth:`pack`,
again after ``.to()``/``.cuda()``/``.cpu()``, or on demand with :meth:`BitLinear.relayout` (after
changing ``LMOPS_BACKEND``). The ``state_dict`` always holds the canonical ``"tiled"`` layout, so a
checkpoint saved with one backend loads with any other.

``rms_norm=True`` puts an RMSNorm on the input before quantization, as in the BitNet training FAQ and
transformers' ``use_rms_norm`` (its weight is ``rms_norm.weight``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import lmops_kernels as lk
from lmops_kernels import dispatch, layouts

__all__ = ["BitLinear"]


class BitLinear(nn.Module):
    """Ternary-weight, int8-activation linear layer.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        rms_norm: normalize the input with an RMSNorm (learnable weight) before quantizing it.
        eps: RMSNorm epsilon.

    Shapes: input ``(..., in_features)`` float32|bfloat16|float16 -> output ``(..., out_features)``,
    the input's dtype in packed mode and the weight's dtype in training mode (as ``nn.Linear``).

    Attributes:
        weight_layout: the in-memory layout of ``weight_packed`` (``"tiled"`` until packed).
    """

    # class default: layers unpickled from before layouts existed hold canonical weights
    weight_layout: str = layouts.CANONICAL

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        rms_norm: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.rms_norm = nn.RMSNorm(in_features, eps=eps, **factory) if rms_norm else None
        self.weight_layout = layouts.CANONICAL
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Linear``."""
        if self.is_packed:
            raise RuntimeError("reset_parameters: the layer is packed; there are no latent weights to reset")
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def is_packed(self) -> bool:
        """True once :meth:`pack` has replaced the latent weights with the 2-bit packing."""
        return "weight_packed" in self._buffers

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, rms_norm: bool = False, eps: float = 1e-6) -> "BitLinear":
        """A training-mode ``BitLinear`` holding a copy of ``linear``'s weight and bias (same device and dtype)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            rms_norm=rms_norm,
            eps=eps,
            device=w.device if w.device.type != "meta" else None,
            dtype=w.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(w)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.weight.requires_grad_(w.requires_grad)
        return layer

    @classmethod
    def from_ternary(
        cls,
        q: torch.Tensor,
        weight_scale: torch.Tensor | float,
        bias: torch.Tensor | None = None,
        *,
        rms_norm: bool = False,
        eps: float = 1e-6,
    ) -> "BitLinear":
        """A packed layer from ternary weights ``q`` ``(out, in)`` and gamma (``W ~= q * gamma``)."""
        out_features, in_features = q.shape
        with torch.device("meta"):
            layer = cls(in_features, out_features, bias=bias is not None, rms_norm=rms_norm, eps=eps)
        dtype = bias.dtype if bias is not None else torch.float32
        if rms_norm:
            layer.rms_norm = nn.RMSNorm(in_features, eps=eps, device=q.device, dtype=dtype)
        layer._set_packed(lk.pack_ternary(q), torch.as_tensor(weight_scale, dtype=torch.float32, device=q.device), bias)
        return layer

    # ------------------------------------------------------------------------------------------
    def _set_packed(self, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        """``packed``: the canonical (tiled) packing; stored in the layout preferred on its device."""
        del self.weight
        layout = _preferred_layout(packed.device)
        self.register_buffer("weight_packed", layouts.convert(packed, layouts.CANONICAL, layout))
        self.weight_layout = layout
        self.register_buffer("weight_scale", scale.reshape(1).to(torch.float32))
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @torch.no_grad()
    def pack(self) -> "BitLinear":
        """Switch to inference: quantize the latent weights (absmean), keep only the 2-bit packing,
        gamma and the bias. Idempotent. Returns ``self``."""
        if self.is_packed:
            return self
        q, gamma = lk.quantize_weight_absmean(self.weight)
        bias = self.bias
        self.bias = None
        self._set_packed(lk.pack_ternary(q), gamma, bias)
        return self

    @torch.no_grad()
    def unpack(self, dtype: torch.dtype = torch.float32) -> "BitLinear":
        """Back to training mode with latent weights ``q * gamma / mean|q|``: the pre-packing latent
        weights are not recoverable, but these quantize back to exactly the packed ``(q, gamma)``, so the
        training-mode forward equals the packed one and ``pack()`` is its exact inverse. Returns ``self``."""
        if not self.is_packed:
            return self
        q = lk.unpack_ternary(self.weight_packed_as(), self.out_features, self.in_features)
        # Latent weights q * gamma / mean|q| re-quantize (absmean) to exactly (q, gamma); plain q * gamma
        # would shrink gamma by the fraction of non-zero weights on the next pack().
        nonzero = q.ne(0).float().mean().clamp(min=1e-12)
        w = (q.float() * (self.weight_scale.float() / nonzero)).to(dtype)
        del self._buffers["weight_packed"]
        del self._buffers["weight_scale"]
        self.weight_layout = layouts.CANONICAL
        self.weight = nn.Parameter(w)
        if self.bias is not None:
            self.bias.requires_grad_(True)
        return self

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, gamma)``: the int8 ternary weights ``(out, in)`` and their float32 scale, in either mode."""
        if self.is_packed:
            q = lk.unpack_ternary(self.weight_packed_as(), self.out_features, self.in_features)
            return q, self.weight_scale.reshape(())
        return lk.quantize_weight_absmean(self.weight)

    def weight_packed_as(self, layout: str = layouts.CANONICAL) -> torch.Tensor:
        """The packed weights ``uint8 (out_features, 4 * ceil(in_features / 16))`` in ``layout``:
        ``weight_packed`` itself when that is its layout, else a converted copy. Packed layers only."""
        layouts.check_layout(layout)
        if not self.is_packed:
            raise RuntimeError("weight_packed_as: the layer is in training mode; call .pack() first")
        return layouts.convert(self.weight_packed, self.weight_layout, layout)

    @torch.no_grad()
    def relayout(self, layout: str | None = None) -> "BitLinear":
        """Store ``weight_packed`` in ``layout`` (default: the one the backend chosen now for its device
        reads best, e.g. after changing ``LMOPS_BACKEND``). A no-op on training-mode layers and when the
        layout is already right. Returns ``self``."""
        if layout is not None:
            layouts.check_layout(layout)
        if not self.is_packed:
            return self
        want = _preferred_layout(self.weight_packed.device) if layout is None else layout
        if want != self.weight_layout:
            self._buffers["weight_packed"] = layouts.convert(self.weight_packed, self.weight_layout, want)
            self.weight_layout = want
        return self

    def _apply(self, fn, recurse: bool = True):
        # .to()/.cuda()/.cpu() and friends: the backend (so the preferred layout) may differ on the new device
        super()._apply(fn, recurse)
        if self.is_packed:
            self.relayout()
        return self

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected last dimension in_features={self.in_features}, got shape {tuple(x.shape)}"
            )
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        if self.is_packed:
            return lk.ternary_linear(x, self.weight_packed, self.weight_scale, self.bias, layout=self.weight_layout)
        w = self.weight
        q, gamma = lk.quantize_weight_absmean(w)
        w_q = w + (q.to(w.dtype) * gamma.to(w.dtype) - w).detach()
        x_int, s = lk.quantize_activation_absmax(x)
        x_q = x + ((x_int.float() / s).to(x.dtype) - x).detach()
        return F.linear(x_q.to(w.dtype), w_q, self.bias)

    # ------------------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight_packed"
        if self.weight_layout != layouts.CANONICAL and key in destination:
            # checkpoints are backend-neutral: always the canonical layout
            destination[key] = layouts.convert(destination[key], self.weight_layout, layouts.CANONICAL)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        has_packed = prefix + "weight_packed" in state_dict
        has_latent = prefix + "weight" in state_dict
        if self.is_packed and has_latent and not has_packed:
            error_msgs.append(
                f"{prefix or 'BitLinear '}: the state_dict holds latent float weights ('{prefix}weight') but this "
                "layer is packed; load it into an unpacked BitLinear, then call .pack()"
            )
            return
        if not self.is_packed and has_packed and not has_latent:
            error_msgs.append(
                f"{prefix or 'BitLinear '}: the state_dict holds a packed BitLinear ('{prefix}weight_packed') but "
                "this layer is in training mode; call .pack() on it first (or use lmops.bitnet.from_pretrained)"
            )
            return
        if has_packed and self.is_packed:
            want = tuple(self.weight_packed.shape)
            got = tuple(state_dict[prefix + "weight_packed"].shape)
            if got != want:
                error_msgs.append(
                    f"{prefix}weight_packed: expected shape {want} for in_features={self.in_features}, "
                    f"out_features={self.out_features}, got {got}"
                )
                return
            if self.weight_layout != layouts.CANONICAL:
                incoming = state_dict[prefix + "weight_packed"]
                if incoming.dtype != torch.uint8:
                    error_msgs.append(f"{prefix}weight_packed: expected uint8, got {incoming.dtype}")
                    return
                # the state_dict holds the canonical layout; this layer keeps another one in memory.
                # Swap the entry for the load and put it back: the caller's dict is not changed.
                state_dict[prefix + "weight_packed"] = layouts.convert(incoming, layouts.CANONICAL, self.weight_layout)
                try:
                    super()._load_from_state_dict(
                        state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
                    )
                finally:
                    state_dict[prefix + "weight_packed"] = incoming
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"packed={self.is_packed}"
            + (f", weight_layout={self.weight_layout!r}" if self.is_packed else "")
            + f", rms_norm={self.rms_norm is not None}"
        )


def _preferred_layout(device: torch.device) -> str:
    """The packed layout the backend chosen now for ``ternary_linear`` on ``device`` reads best; the
    canonical one when no backend can serve it (moving a layer must not fail: its forward will say why)."""
    try:
        return dispatch.preferred_layout("ternary_linear", device.type)
    except RuntimeError:
        return layouts.CANONICAL
