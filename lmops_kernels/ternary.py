"""The BitNet b1.58 ternary ops: typed public wrappers that validate their inputs once and call the
operator (one path per call), and the plain-torch backward of ``ternary_linear``.

Each wrapper's docstring is the op's contract; the plain-torch reference
(:mod:`lmops_kernels.reference`) is its specification.
"""

from __future__ import annotations

import torch

from . import layouts
from .ops import has_native_autograd
from .reference.packing import packed_cols

from .checks import FLOAT_ACTIVATIONS as _FLOAT_ACTIVATIONS
from .checks import check_same_device as _check_same_device
from .checks import check_tensor as _check_tensor


def _check_ternary(name: str, q: torch.Tensor) -> None:
    _check_tensor(name, q)
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor with values in {{-1, 0, 1}}, got {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"{name}: expected shape (out_features, in_features), got {tuple(q.shape)}")


def quantize_weight_absmean(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58 absmean ternary weight quantization (per tensor).

    Args:
        w: any shape, floating point.
    Returns:
        ``(q, scale)``: ``q`` int8 of ``w``'s shape in {-1, 0, 1}; ``scale`` float32 scalar tensor
        gamma = max(mean |w|, 1e-5), ``q = clamp(round(w / gamma), -1, 1)``.
    """
    _check_tensor("w", w)
    if not w.dtype.is_floating_point:
        raise TypeError(f"w: expected a floating-point tensor, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError("w: expected a non-empty tensor")
    return torch.ops.lmops.quantize_weight_absmean(w.detach())


def quantize_activation_absmax(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last dim) absmax quantization, as transformers' ``ActQuant``.

    Args:
        x: ``(..., K)`` float16|bfloat16|float32, ``K >= 1``.
        bits: 2..8.
    Returns:
        ``(q, scale)``: ``q`` int8 ``(..., K)`` = clamp(round(x * scale), -2^(bits-1), 2^(bits-1)-1);
        ``scale`` float32 ``(..., 1)`` = (2^(bits-1)-1) / max(max |x|, 1e-5). Rows holding NaN/Inf
        get ``scale = NaN`` and ``q = 0``.
    """
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., K) with K >= 1, got {tuple(x.shape)}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: expected an int in 2..8, got {bits!r}")
    return torch.ops.lmops.quantize_activation_absmax(x.detach(), bits)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack a ternary ``(N, K)`` matrix into the lmops tiled 2-bit layout.

    Any ``N, K >= 1``. Returns ``uint8 (N, 4 * ceil(K / 16))``; the byte order is documented in
    :mod:`lmops_kernels.reference.packing`. Exact inverse: :func:`unpack_ternary`.
    """
    _check_ternary("q", q)
    if q.numel() == 0:
        raise ValueError(f"q: expected a non-empty matrix, got shape {tuple(q.shape)}")
    return torch.ops.lmops.pack_ternary(q.detach())


def _check_packed(packed: torch.Tensor, out_features: int | None, in_features: int) -> None:
    _check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected uint8 (from pack_ternary), got {packed.dtype}")
    n = packed.shape[0] if out_features is None else out_features
    want = (n, packed_cols(in_features))
    if tuple(packed.shape) != want:
        raise ValueError(
            f"packed: expected shape {want} for out_features={n}, in_features={in_features}, "
            f"got {tuple(packed.shape)}"
        )


def unpack_ternary(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: ``uint8 (N, 4 * ceil(K / 16))`` -> int8 ``(N, K)``."""
    for name, v in (("out_features", out_features), ("in_features", in_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    _check_packed(packed, out_features, in_features)
    return torch.ops.lmops.unpack_ternary(packed, out_features, in_features)


def to_hf_bitnet(q: torch.Tensor) -> torch.Tensor:
    """Ternary ``(N, K)`` -> transformers' BitNet packing, ``uint8 (ceil(N / 4), K)``, code ``q + 1``,
    bit pair ``i`` of row ``r`` holding row ``i * ceil(N / 4) + r``."""
    _check_ternary("q", q)
    return torch.ops.lmops.to_hf_bitnet(q.detach())


def from_hf_bitnet(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """transformers' BitNet packing ``uint8 (ceil(N / 4), K)`` -> ternary int8 ``(N, K)``."""
    _check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected uint8, got {packed.dtype}")
    if not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features: expected a positive int, got {out_features!r}")
    if packed.dim() != 2 or packed.shape[0] != (out_features + 3) // 4:
        raise ValueError(
            f"packed: expected shape ({(out_features + 3) // 4}, in_features) for out_features={out_features}, "
            f"got {tuple(packed.shape)}"
        )
    return torch.ops.lmops.from_hf_bitnet(packed, out_features)


def _check_layout(layout: object) -> None:
    if layout != "tiled" and layout not in layouts.LAYOUTS:  # the common case: one comparison
        raise ValueError(f"layout: expected one of {layouts.LAYOUTS}, got {layout!r}")


def ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor, *, layout: str = "tiled") -> torch.Tensor:
    """Exact integer product of int8 activations and packed ternary weights.

    Args:
        x_q: ``(M, K)`` int8.
        packed: ``(N, 4 * ceil(K / 16))`` uint8 from :func:`pack_ternary`, in layout ``layout``.
        layout: ``packed``'s byte order, a name in :data:`lmops_kernels.layouts.LAYOUTS`; a backend
            that does not read it gets a converted copy (see :func:`lmops_kernels.layouts.convert`).
    Returns:
        ``(M, N)`` int32, bit-identical on every backend and layout.
    """
    _check_layout(layout)
    _check_tensor("x_q", x_q)
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] == 0:
        raise TypeError(f"x_q: expected a 2-D int8 tensor (M, K >= 1), got {x_q.dtype} {tuple(x_q.shape)}")
    _check_packed(packed, None, x_q.shape[1])
    _check_same_device("x_q", x_q, "packed", packed)
    return torch.ops.lmops.ternary_matmul_int.default(x_q.contiguous(), packed.contiguous(), layout)


def _check_ternary_linear(x, packed, weight_scale, bias, layout) -> None:
    """The checks of :func:`ternary_linear`. Written for speed, as this runs once per layer per decoded
    token: one expression accepts every valid call; only a call it rejects walks the checks one by one
    to word the error."""
    try:
        k = x.shape[-1]
        device = x.device
        if (
            (layout == "tiled" or layout in layouts.LAYOUTS)
            and x.dtype in _FLOAT_ACTIVATIONS
            and k > 0
            and packed.dtype is torch.uint8
            and packed.dim() == 2
            and packed.shape[1] == 4 * ((k + 15) // 16)  # packed_cols(k), inlined
            and packed.device == device
            and weight_scale.numel() == 1
            and weight_scale.is_floating_point()
            and weight_scale.device == device
            and (
                bias is None
                or (bias.shape == (packed.shape[0],) and bias.is_floating_point() and bias.device == device)
            )
            and isinstance(x, torch.Tensor)
            and isinstance(packed, torch.Tensor)
            and isinstance(weight_scale, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))
        ):
            return
    except (AttributeError, IndexError, TypeError):
        pass
    if layout != "tiled" and layout not in layouts.LAYOUTS:
        raise ValueError(f"layout: expected one of {layouts.LAYOUTS}, got {layout!r}")
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    k = x.shape[-1] if x.dim() else 0
    if k == 0:
        raise ValueError(f"x: expected shape (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    _check_packed(packed, None, k)
    _check_same_device("x", x, "packed", packed)
    _check_tensor("weight_scale", weight_scale)
    if weight_scale.numel() != 1 or not weight_scale.is_floating_point():
        raise ValueError(
            f"weight_scale: expected a one-element floating tensor, got {weight_scale.dtype} {tuple(weight_scale.shape)}"
        )
    # GPU kernels read gamma on the device (no host sync, graph-capturable): no silent copies
    _check_same_device("x", x, "weight_scale", weight_scale)
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.shape != (packed.shape[0],) or not bias.is_floating_point():
            raise ValueError(
                f"bias: expected a floating tensor of shape ({packed.shape[0]},), got {bias.dtype} {tuple(bias.shape)}"
            )
        _check_same_device("x", x, "bias", bias)


_ternary_linear_op = torch.ops.lmops.ternary_linear.default
# The same dispatcher entry without the Python frame of OpOverload.__call__ (~0.5 us of a ~3 us call);
# torch.compile traces the public OpOverload instead.
_ternary_linear_entry = _ternary_linear_op._op
_compiling = torch.compiler.is_compiling


def ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    layout: str = "tiled",
) -> torch.Tensor:
    """BitNet b1.58 W2A8 linear: per-token int8 absmax activations times packed ternary weights.

    ``y = (Q(x) @ q^T) * (gamma / s_x) + bias`` with the product accumulated exactly in int32 and the
    rescale in float32. Differentiable in ``x`` (straight-through through ``Q``) and ``bias``.

    Args:
        x: ``(..., K)`` float32|bfloat16|float16; any strides; leading dims may be empty.
        packed: ``(N, 4 * ceil(K / 16))`` uint8 from :func:`pack_ternary`, in layout ``layout``. The
            weight layout stores ``K`` rounded up to 16, so callers that know ``in_features`` check it
            (``BitLinear`` does).
        weight_scale: one-element floating tensor, gamma (``W ~= q * gamma``), on ``x``'s device.
        bias: ``(N,)`` floating, or None.
        layout: ``packed``'s byte order, a name in :data:`lmops_kernels.layouts.LAYOUTS`. Keep weights
            in ``dispatch.preferred_layout("ternary_linear", device)``: a backend that does not read
            ``layout`` gets a converted copy on every call.
    Returns:
        ``(..., N)`` in ``x``'s dtype. Rows of ``x`` holding NaN/Inf give NaN rows. Every backend
        matches the reference: bit for bit in float32; within one rounding step of the output dtype
        (relative to each row's largest output) in bfloat16/float16.
    """
    _check_ternary_linear(x, packed, weight_scale, bias, layout)
    if _compiling():
        return _ternary_linear_op(x, packed, weight_scale, bias, layout)
    return _ternary_linear_entry(x, packed, weight_scale, bias, layout)


_ternary_linear_multi_op = torch.ops.lmops.ternary_linear_multi.default
_ternary_linear_multi_entry = _ternary_linear_multi_op._op


def ternary_linear_multi(
    x: torch.Tensor,
    packed: list[torch.Tensor] | tuple[torch.Tensor, ...],
    weight_scale: list[torch.Tensor] | tuple[torch.Tensor, ...],
    bias: list[torch.Tensor | None] | tuple[torch.Tensor | None, ...] | None = None,
    *,
    layout: str = "tiled",
) -> list[torch.Tensor]:
    """:func:`ternary_linear` of one ``x`` against several weight matrices (a layer's q/k/v, or its
    gate/up), with ``x`` quantized once and, on CPU, one parallel region over all the matrices' weight
    bytes. Inference only (no gradient).

    Args:
        x: ``(..., K)`` float32|bfloat16|float16.
        packed, weight_scale: sequences of equal, non-zero length; each pair as in :func:`ternary_linear`
            (``packed[i]`` ``(N_i, 4 * ceil(K / 16))`` uint8 in layout ``layout``, ``weight_scale[i]``
            one-element floating).
        bias: None, or a sequence of the same length of ``(N_i,)`` floating tensors or None.
        layout: every ``packed[i]``'s byte order.
    Returns:
        A list of ``(..., N_i)`` tensors in ``x``'s dtype, each equal bit for bit to
        ``ternary_linear(x, packed[i], weight_scale[i], bias[i], layout=layout)`` on the same backend.
    """
    if not isinstance(packed, (list, tuple)) or not isinstance(weight_scale, (list, tuple)):
        raise TypeError(f"packed, weight_scale: expected lists of tensors, got {type(packed).__name__} and "
                        f"{type(weight_scale).__name__}")
    if bias is not None and not isinstance(bias, (list, tuple)):
        raise TypeError(f"bias: expected None or a list of tensors/None, got {type(bias).__name__}")
    n = len(packed)
    if n == 0 or len(weight_scale) != n or (bias is not None and len(bias) != n):
        raise ValueError(f"packed, weight_scale, bias: expected equal, non-zero lengths, got {n}, {len(weight_scale)}"
                         + ("" if bias is None else f", {len(bias)}"))
    biases = list(bias) if bias is not None else [None] * n
    for p, s, b in zip(packed, weight_scale, biases):
        _check_ternary_linear(x, p, s, b, layout)
    if torch.is_grad_enabled() and (x.requires_grad or any(b is not None and b.requires_grad for b in biases)):
        raise RuntimeError("ternary_linear_multi is inference-only (no gradient): call it under torch.no_grad(), "
                           "or call ternary_linear per matrix")
    if _compiling():
        return _ternary_linear_multi_op(x, list(packed), list(weight_scale), biases, layout)
    return _ternary_linear_multi_entry(x, list(packed), list(weight_scale), biases, layout)


# ----------------------------------------------------------------------------------------------
# backward: straight-through estimator through the activation quantizer
# ----------------------------------------------------------------------------------------------


@torch.library.impl("lmops::ternary_linear_backward", "CompositeImplicitAutograd")
def _ternary_linear_backward_op(grad_y, packed, weight_scale, in_features, layout):
    """``grad_x = grad_y @ (q gamma)``: d/dx of ``Q(x) @ (q gamma)^T`` with ``dQ/dx := identity``. The
    operator itself, not the validating wrapper, unpacks: under dynamic shapes the sizes are SymInts."""
    tiled = torch.ops.lmops.convert_layout(packed, layout, layouts.CANONICAL) if layout != layouts.CANONICAL else packed
    w = torch.ops.lmops.unpack_ternary(tiled, packed.shape[0], in_features).to(grad_y.dtype)
    return (grad_y @ w) * weight_scale.to(grad_y.dtype)


if not has_native_autograd("ternary_linear"):  # the extension is missing: the same rule, in Python

    def _setup(ctx, inputs, output):
        x, packed, weight_scale, bias, layout = inputs
        ctx.save_for_backward(packed, weight_scale)
        ctx.in_features = x.shape[-1]
        ctx.layout = layout

    def _backward(ctx, grad_y):
        packed, weight_scale = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.lmops.ternary_linear_backward(grad_y, packed, weight_scale, ctx.in_features, ctx.layout)
        if ctx.needs_input_grad[3]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, None, None, grad_bias, None

    torch.library.register_autograd("lmops::ternary_linear", _backward, setup_context=_setup)
