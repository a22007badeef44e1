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

Ecosystem (peft, transformers, ``.to()``): ``BitLinear`` subclasses ``nn.Linear``, so peft's own
``get_peft_model(model, LoraConfig(...))`` wraps it with its ``lora.Linear`` (no registration), and
``.weight`` exists in both modes. In training mode it is the latent float ``Parameter``; in packed mode
it is a :class:`PackedTernaryWeight`: a read-only tensor of shape ``(out_features, in_features)`` that
holds no float data, only views ``weight_packed`` and ``weight_scale`` (the design of torchao's
quantized weights, which peft and ``F.linear`` recognize): ``.dtype``/``.device``/``.shape`` are
what peft reads to place its adapters, ``F.linear(x, weight, bias)`` runs the packed kernel,
``.dequantize()`` gives ``q * gamma``, other reads compute on that dequantized copy, and every write
(``weight.data += delta``, as a LoRA merge does) raises :class:`PackedWeightError`. So LoRA adapters
train over a packed model (QLoRA-style: forward and backward through the 2-bit kernel, the packed
weights never change) but cannot be merged into it. ``.to(dtype)``/``.half()``/``.bfloat16()`` cast the
bias and RMSNorm weight like ``nn.Linear``'s parameters but never ``weight_scale`` (float32) or
``weight_packed`` (uint8); they set the dtype a packed ``.weight`` reports.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map_only

import lmops_kernels as lk
from lmops_kernels import dispatch, layouts

__all__ = ["BitLinear", "PackedTernaryWeight", "PackedWeightError"]


class PackedWeightError(RuntimeError):
    """A write into the weight of a packed :class:`BitLinear` (e.g. merging a LoRA into it)."""


_READ_ONLY = (
    "{what}: the weight of a packed BitLinear is a read-only view of its 2-bit ternary weights "
    "(weight_packed, weight_scale) and cannot be written. A LoRA cannot be merged into a packed BitLinear "
    "(ternary weights cannot absorb a float delta): keep the adapter unmerged (peft: do not call merge() / "
    "merge_and_unload()), or unpack() the base layer, merge into its latent float weight, and pack() again "
    "(which re-quantizes the merged weight)."
)


class PackedTernaryWeight(torch.Tensor):
    """``BitLinear.weight`` of a packed layer: a read-only ``(out_features, in_features)`` tensor of the
    layer's float dtype that stores nothing itself; it views the layer's ``weight_packed`` (uint8, in
    ``packed_layout``) and ``weight_scale`` (float32 ``(1,)``), ``W = q * gamma``. Attributes: ``packed``,
    ``scale``, ``packed_layout`` (``layout`` is torch's own attribute, ``torch.strided``).

    As torchao's quantized weights (a tensor subclass that peft's dispatch and ``F.linear`` recognize):

    - ``shape``, ``dtype``, ``device``: those of the float weight it stands for (what peft reads to
      place and cast its adapters); ``requires_grad`` is False.
    - ``F.linear(x, w, bias)``: the packed W2A8 kernel, ``lmops_kernels.ternary_linear`` (per-token int8
      activations, differentiable in ``x``), i.e. the layer's forward without its RMSNorm.
    - :meth:`dequantize`: ``q * gamma`` as a plain tensor; every other out-of-place op (``w.float()``,
      ``w.norm()``, ``x @ w.T``, ``w.clone()``, ...) computes on that dequantized copy and returns
      plain tensors. ``detach()``/``.data`` give another view.
    - any write (``w.data += d``, ``w.copy_(..)``, ``nn.init.*_(w)``, ``w.data = t``) raises
      :class:`PackedWeightError`: a LoRA merge into a packed layer fails there, loudly.

    A new view is made on each ``layer.weight`` access, so it always reflects the layer's buffers.
    """

    packed: torch.Tensor
    scale: torch.Tensor
    packed_layout: str

    @staticmethod
    def __new__(
        cls, packed: torch.Tensor, scale: torch.Tensor, packed_layout: str, in_features: int, dtype: torch.dtype
    ):
        return torch.Tensor._make_wrapper_subclass(
            cls, (packed.shape[0], in_features), dtype=dtype, device=packed.device, requires_grad=False
        )

    def __init__(self, packed, scale, packed_layout, in_features, dtype) -> None:
        self.packed, self.scale, self.packed_layout = packed, scale, packed_layout

    def _view(self) -> "PackedTernaryWeight":
        return PackedTernaryWeight(self.packed, self.scale, self.packed_layout, self.shape[1], self.dtype)

    def __deepcopy__(self, memo) -> "PackedTernaryWeight":
        # a view over copies of the packed tensors (torch's default would clone into a plain tensor)
        packed, scale = copy.deepcopy(self.packed, memo), copy.deepcopy(self.scale, memo)
        return PackedTernaryWeight(packed, scale, self.packed_layout, self.shape[1], self.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``q * gamma``: a plain ``(out_features, in_features)`` tensor in ``dtype`` (default: this
        tensor's dtype), computed in float32."""
        out_features, in_features = self.shape
        canonical = layouts.convert(self.packed, self.packed_layout, layouts.CANONICAL)
        q = lk.unpack_ternary(canonical, out_features, in_features)
        return (q.to(torch.float32) * self.scale.to(torch.float32)).to(dtype or self.dtype)

    @property
    def data(self) -> "PackedTernaryWeight":  # type: ignore[override]
        return self._view()

    @data.setter
    def data(self, value) -> None:
        raise PackedWeightError(_READ_ONLY.format(what="weight.data = ..."))

    def __repr__(self) -> str:
        return (
            f"PackedTernaryWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
            f"layout={self.packed_layout!r}, gamma={float(self.scale.reshape(-1)[0]):.6g})"
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(w, cls) and not isinstance(x, cls) and not isinstance(b, cls):
                return lk.ternary_linear(x, w.packed, w.scale, b, layout=w.packed_layout)
        with torch._C.DisableTorchFunctionSubclass():  # no re-wrapping of results: they are plain tensors
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            return args[0]._view()
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(value, cls):
                    raise PackedWeightError(_READ_ONLY.format(what=str(func)))
        args, kwargs = tree_map_only(cls, lambda t: t.dequantize(), (args, kwargs))
        return func(*args, **kwargs)


class BitLinear(nn.Linear):
    """Ternary-weight, int8-activation linear layer (an ``nn.Linear`` subclass, so that code which
    recognizes linears, peft's ``dispatch_default`` first, handles it; see the module docstring).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        rms_norm: normalize the input with an RMSNorm (learnable weight) before quantizing it.
        eps: RMSNorm epsilon.

    Shapes: input ``(..., in_features)`` float32|bfloat16|float16 -> output ``(..., out_features)``,
    the input's dtype in packed mode and the weight's dtype in training mode (as ``nn.Linear``).

    Attributes:
        weight: training mode: the latent float ``Parameter`` ``(out_features, in_features)``; packed: a
            read-only :class:`PackedTernaryWeight` of that shape (not a parameter: the ``state_dict``
            holds ``weight_packed``, ``weight_scale`` and ``bias``).
        weight_layout: the in-memory layout of ``weight_packed`` (``"tiled"`` until packed).
    """

    # class defaults: layers unpickled from before layouts existed hold canonical weights; before the
    # packed weight had a reported dtype, it was float32
    weight_layout: str = layouts.CANONICAL
    _weight_dtype: torch.dtype = torch.float32

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
        nn.Module.__init__(self)  # not nn.Linear.__init__: the parameters are made here
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
        self._weight_dtype = self.weight.dtype
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The latent float ``Parameter`` (training mode) or a :class:`PackedTernaryWeight` (packed)."""
        w = self._parameters.get("weight")
        if w is not None:
            return w
        if self.is_packed:
            return PackedTernaryWeight(
                self.weight_packed, self.weight_scale, self.weight_layout, self.in_features, self._weight_dtype
            )
        raise AttributeError(f"'{type(self).__name__}' object has no attribute 'weight'")

    @weight.setter
    def weight(self, value) -> None:
        # reached only for a non-Parameter assigned while no weight Parameter is registered (packed mode);
        # nn.Module.__setattr__ registers Parameters itself (see register_parameter)
        raise TypeError(
            f"weight: a packed BitLinear holds no float weight to assign {type(value).__name__} to; call "
            ".unpack() first (then assign an nn.Parameter), or build a packed layer with BitLinear.from_ternary"
        )

    @weight.deleter
    def weight(self) -> None:
        raise PackedWeightError(_READ_ONLY.format(what="del weight"))

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        if name == "weight" and self.is_packed:
            raise TypeError(
                "weight: a packed BitLinear keeps its weights in weight_packed/weight_scale; call .unpack() "
                "before giving it a float weight Parameter"
            )
        super().register_parameter(name, param)

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
        if not isinstance(linear, nn.Linear) or isinstance(linear, BitLinear):
            raise TypeError(f"linear: expected an nn.Linear (not a BitLinear), got {type(linear).__name__}")
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
        dtype: torch.dtype | None = None,
    ) -> "BitLinear":
        """A packed layer from ternary weights ``q`` ``(out, in)`` and gamma (``W ~= q * gamma``).

        ``dtype``: the layer's float dtype (its bias and RMSNorm weight, and what ``.weight`` reports);
        default the bias's dtype, else float32. gamma is kept in float32 whatever ``dtype`` is."""
        out_features, in_features = q.shape
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
        with torch.device("meta"):
            layer = cls(in_features, out_features, bias=bias is not None, rms_norm=rms_norm, eps=eps)
        if dtype is None:
            dtype = bias.dtype if bias is not None else torch.float32
        elif bias is not None:
            bias = bias.to(dtype)
        if rms_norm:
            layer.rms_norm = nn.RMSNorm(in_features, eps=eps, device=q.device, dtype=dtype)
        layer._set_packed(lk.pack_ternary(q), torch.as_tensor(weight_scale, dtype=torch.float32, device=q.device), bias)
        layer._weight_dtype = dtype
        return layer

    # ------------------------------------------------------------------------------------------
    def _set_packed(self, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        """``packed``: the canonical (tiled) packing; stored in the layout preferred on its device."""
        self._weight_dtype = self._parameters["weight"].dtype
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
        # .to()/.cuda()/.cpu()/.half() and friends. Packed: gamma stays float32 and the packing uint8
        # whatever the cast (a float16/bfloat16 gamma would change every output); they only follow a
        # device move. The dtype the packed .weight reports follows the cast as a latent weight would.
        # The backend (so the preferred layout) may differ on the new device.
        if not self.is_packed:
            return super()._apply(fn, recurse)
        kept = {name: self._buffers[name] for name in ("weight_packed", "weight_scale")}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        self._weight_dtype = _dtype_after(fn, self._weight_dtype, kept["weight_scale"].device)
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


def _dtype_after(fn, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype ``fn`` (an ``nn.Module._apply`` transform) gives a float tensor of ``dtype``: probed on
    an empty tensor. A transform that changes no float dtype, or cannot run on the probe, keeps ``dtype``."""
    try:
        out = fn(torch.empty(0, dtype=dtype, device=device))
    except (RuntimeError, TypeError, NotImplementedError):  # a transform the probe cannot take: no cast seen
        return dtype
    return out.dtype if isinstance(out, torch.Tensor) and out.dtype.is_floating_point else dtype


def _preferred_layout(device: torch.device) -> str:
    """The packed layout the backend chosen now for ``ternary_linear`` on ``device`` reads best; the
    canonical one when no backend can serve it (moving a layer must not fail: its forward will say why)."""
    try:
        return dispatch.preferred_layout("ternary_linear", device.type)
    except RuntimeError:
        return layouts.CANONICAL
