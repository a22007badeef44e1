"""Every ``lmops::`` operator: its schema (declared here only), its fake (meta) implementation, its
autograd rule where it has one, and its typed public wrapper that validates inputs once.

The registered implementation of each op hands the call to :mod:`lmops_kernels.dispatch`, which
picks a backend (see there). Pattern after torchao's ``ops.py``: one file of schemas and wrappers,
backends elsewhere.
"""

from __future__ import annotations

import torch

from . import dispatch, layouts

_lib = torch.library.Library("lmops", "DEF")

_SCHEMAS = {
    "quantize_weight_absmean": "quantize_weight_absmean(Tensor w) -> (Tensor, Tensor)",
    "quantize_activation_absmax": "quantize_activation_absmax(Tensor x, int bits=8) -> (Tensor, Tensor)",
    "pack_ternary": "pack_ternary(Tensor q) -> Tensor",
    "unpack_ternary": "unpack_ternary(Tensor packed, int out_features, int in_features) -> Tensor",
    "to_hf_bitnet": "to_hf_bitnet(Tensor q) -> Tensor",
    "from_hf_bitnet": "from_hf_bitnet(Tensor packed, int out_features) -> Tensor",
    "ternary_matmul_int": 'ternary_matmul_int(Tensor x_q, Tensor packed, str layout="tiled") -> Tensor',
    "ternary_linear": (
        'ternary_linear(Tensor x, Tensor packed, Tensor weight_scale, Tensor? bias=None, str layout="tiled") -> Tensor'
    ),
    "mole_gate": (
        "mole_gate(Tensor x, Tensor lora_A, Tensor lora_B, Tensor scaling, Tensor gate_weight, Tensor? norm_weight, "
        "Tensor? norm_bias, Tensor temperature, Tensor? expert_mask, str norm, float eps) -> (Tensor, Tensor)"
    ),
}

_FLOAT_ACTIVATIONS = (torch.float32, torch.bfloat16, torch.float16)


def _dispatching(name: str):
    def impl(*args, **kwargs):
        return dispatch.select(name, args[0].device.type).fn(*args, **kwargs)

    impl.__name__ = f"{name}_dispatch"
    return impl


def _in_impl_layout(impl: dispatch.Implementation, packed: torch.Tensor, layout: str) -> tuple[torch.Tensor, str]:
    """``packed`` in a layout ``impl`` reads: as given when it reads ``layout``, else converted to the
    one it reads best (correct, but a copy per call: layers keep their weights in the right layout)."""
    if layout in impl.layouts:
        return packed, layout
    want = impl.layouts[0]
    return layouts.convert(packed, layout, want), want


def _ternary_matmul_int_impl(x_q, packed, layout="tiled"):
    impl = dispatch.select("ternary_matmul_int", x_q.device.type)
    packed, layout = _in_impl_layout(impl, packed, layout)
    return impl.fn(x_q, packed, layout=layout)


def _ternary_linear_impl(x, packed, weight_scale, bias=None, layout="tiled"):
    impl = dispatch.select("ternary_linear", x.device.type)
    packed, layout = _in_impl_layout(impl, packed, layout)
    return impl.fn(x, packed, weight_scale, bias, layout=layout)


_LAYOUT_IMPLS = {"ternary_matmul_int": _ternary_matmul_int_impl, "ternary_linear": _ternary_linear_impl}

for _name, _schema in _SCHEMAS.items():
    _lib.define(_schema)
    _lib.impl(_name, _LAYOUT_IMPLS.get(_name) or _dispatching(_name), "CompositeExplicitAutograd")


def _k_padded(in_features: int) -> int:
    return 4 * ((in_features + 15) // 16)


# ----------------------------------------------------------------------------------------------
# fake (meta) implementations: shapes and dtypes only, for torch.compile / torch.export
# ----------------------------------------------------------------------------------------------


@torch.library.register_fake("lmops::quantize_weight_absmean")
def _(w):
    return torch.empty_like(w, dtype=torch.int8), w.new_empty((), dtype=torch.float32)


@torch.library.register_fake("lmops::quantize_activation_absmax")
def _(x, bits=8):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.register_fake("lmops::pack_ternary")
def _(q):
    return q.new_empty((q.shape[0], _k_padded(q.shape[1])), dtype=torch.uint8)


@torch.library.register_fake("lmops::unpack_ternary")
def _(packed, out_features, in_features):
    return packed.new_empty((out_features, in_features), dtype=torch.int8)


@torch.library.register_fake("lmops::to_hf_bitnet")
def _(q):
    return q.new_empty(((q.shape[0] + 3) // 4, *q.shape[1:]), dtype=torch.uint8)


@torch.library.register_fake("lmops::from_hf_bitnet")
def _(packed, out_features):
    return packed.new_empty((out_features, *packed.shape[1:]), dtype=torch.int8)


@torch.library.register_fake("lmops::ternary_matmul_int")
def _(x_q, packed, layout="tiled"):
    return x_q.new_empty((x_q.shape[0], packed.shape[0]), dtype=torch.int32)


@torch.library.register_fake("lmops::ternary_linear")
def _(x, packed, weight_scale, bias=None, layout="tiled"):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


# ----------------------------------------------------------------------------------------------
# autograd: straight-through estimator through the activation quantizer of ternary_linear
# ----------------------------------------------------------------------------------------------


def _ternary_linear_setup(ctx, inputs, output):
    x, packed, weight_scale, bias, layout = inputs
    ctx.save_for_backward(packed, weight_scale)
    ctx.in_features = x.shape[-1]
    ctx.has_bias = bias is not None
    ctx.layout = layout


def _ternary_linear_backward(ctx, grad_y):
    packed, weight_scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        # d/dx of (Q(x) @ (q gamma)^T) with dQ/dx := identity (STE) is grad_y @ (q gamma).
        # The op itself, not the validating wrapper: under dynamic shapes the sizes are SymInts.
        # unpack_ternary reads the canonical layout only.
        tiled = layouts.convert(packed, ctx.layout, layouts.CANONICAL)
        w = torch.ops.lmops.unpack_ternary(tiled, packed.shape[0], ctx.in_features).to(grad_y.dtype)
        grad_x = (grad_y @ w) * weight_scale.to(grad_y.dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
    return grad_x, None, None, grad_bias, None


torch.library.register_autograd(
    "lmops::ternary_linear", _ternary_linear_backward, setup_context=_ternary_linear_setup
)


# ----------------------------------------------------------------------------------------------
# public wrappers: validation at the op boundary, then one call of the operator
# ----------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _check_ternary(name: str, q: torch.Tensor) -> None:
    _check_tensor(name, q)
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor with values in {{-1, 0, 1}}, got {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"{name}: expected shape (out_features, in_features), got {tuple(q.shape)}")


def _check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; move them to one device")


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
    want = (n, _k_padded(in_features))
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


def _check_layout_arg(layout: object) -> None:
    # the common case first: one string comparison per call
    if layout != "tiled" and layout not in layouts.LAYOUTS:
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
    _check_layout_arg(layout)
    _check_tensor("x_q", x_q)
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] == 0:
        raise TypeError(f"x_q: expected a 2-D int8 tensor (M, K >= 1), got {x_q.dtype} {tuple(x_q.shape)}")
    _check_packed(packed, None, x_q.shape[1])
    _check_same_device("x_q", x_q, "packed", packed)
    return torch.ops.lmops.ternary_matmul_int(x_q.contiguous(), packed.contiguous(), layout)


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
        weight_scale: one-element floating tensor, gamma (``W ~= q * gamma``).
        bias: ``(N,)`` floating, or None.
        layout: ``packed``'s byte order, a name in :data:`lmops_kernels.layouts.LAYOUTS`. Keep weights
            in ``dispatch.preferred_layout("ternary_linear", device)``: a backend that does not read
            ``layout`` gets a converted copy on every call.
    Returns:
        ``(..., N)`` in ``x``'s dtype. Rows of ``x`` holding NaN/Inf give NaN rows.
    """
    # Validation is written for speed: this runs once per layer per decoded token.
    _check_layout_arg(layout)
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_ACTIVATIONS:
        _check_tensor("x", x)
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    k = x.shape[-1] if x.dim() else 0
    if k == 0:
        raise ValueError(f"x: expected shape (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    if (
        not isinstance(packed, torch.Tensor)
        or packed.dtype != torch.uint8
        or packed.dim() != 2
        or packed.shape[1] != 4 * ((k + 15) // 16)
    ):
        _check_packed(packed, None, k)
    if packed.device != x.device:
        _check_same_device("x", x, "packed", packed)
    if not isinstance(weight_scale, torch.Tensor) or weight_scale.numel() != 1 or not weight_scale.dtype.is_floating_point:
        _check_tensor("weight_scale", weight_scale)
        raise ValueError(
            f"weight_scale: expected a one-element floating tensor, got {weight_scale.dtype} {tuple(weight_scale.shape)}"
        )
    if weight_scale.device != x.device:
        # GPU kernels read gamma on the device (no host sync, graph-capturable): no silent copies
        _check_same_device("x", x, "weight_scale", weight_scale)
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.shape != (packed.shape[0],) or not bias.dtype.is_floating_point:
            raise ValueError(
                f"bias: expected a floating tensor of shape ({packed.shape[0]},), got {bias.dtype} {tuple(bias.shape)}"
            )
        if bias.device != x.device:
            _check_same_device("x", x, "bias", bias)
    if not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    ):
        # Inference fast path: the implementation the operator would reach, minus ~30 us of
        # autograd-wrapper overhead per call, a large share of one decode step of a layer.
        impl = dispatch.select("ternary_linear", x.device.type)
        if layout not in impl.layouts:
            packed, layout = _in_impl_layout(impl, packed, layout)
        return impl.fn(x, packed, weight_scale, bias, layout=layout)
    return torch.ops.lmops.ternary_linear(x, packed, weight_scale, bias, layout)


# ----------------------------------------------------------------------------------------------
# mole_gate: MoLE gating and mixing of N LoRA experts (fake, autograd, public wrapper)
# ----------------------------------------------------------------------------------------------

from . import mole_rank as _mole_rank  # noqa: E402  (plain torch; no import cycle)

_MOLE_NORMS = _mole_rank.NORMS


@torch.library.register_fake("lmops::mole_gate")
def _(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    return x.new_empty((x.shape[0], lora_B.shape[1])), x.new_empty((x.shape[0], lora_A.shape[0]), dtype=torch.float32)


def _mole_gate_setup(ctx, inputs, output):
    x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps = inputs
    ctx.save_for_backward(
        x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, output[1]
    )
    ctx.norm = norm
    ctx.eps = eps


def _mole_gate_backward(ctx, grad_y, grad_gates):
    x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, gates = ctx.saved_tensors
    needs = ctx.needs_input_grad
    for i, name in ((1, "lora_A"), (2, "lora_B"), (3, "scaling")):
        if needs[i]:
            raise RuntimeError(
                f"mole_gate: {name} requires grad, but the LoRA experts are frozen in MoLE and mole_gate has no "
                f"gradient for them; call {name}.requires_grad_(False) (or pass {name}.detach())"
            )
    grad_x, grad_w, grad_nw, grad_nb, grad_tau = _mole_rank.backward(
        grad_y, grad_gates, gates, x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
        expert_mask, ctx.norm, ctx.eps, (needs[0], needs[4], needs[5], needs[6], needs[7]),
    )
    return grad_x, None, None, None, grad_w, grad_nw, grad_nb, grad_tau, None, None, None


torch.library.register_autograd("lmops::mole_gate", _mole_gate_backward, setup_context=_mole_gate_setup)


def _mole_check_float(name: str, t: object, shape: tuple[int, ...] | None, device: torch.device) -> torch.Tensor:
    _check_tensor(name, t)
    if t.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; move them to one device")
    return t


def _mole_validate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    dev, k = x.device, x.shape[-1]
    _mole_check_float("lora_A", lora_A, None, dev)
    if lora_A.dim() != 3 or lora_A.shape[2] != k or lora_A.shape[0] == 0 or lora_A.shape[1] == 0:
        raise ValueError(
            f"lora_A: expected shape (N, r, in_features={k}) with N, r >= 1, got {tuple(lora_A.shape)}"
        )
    n, r = lora_A.shape[0], lora_A.shape[1]
    _mole_check_float("lora_B", lora_B, None, dev)
    if lora_B.dim() != 3 or lora_B.shape[0] != n or lora_B.shape[2] != r or lora_B.shape[1] == 0:
        raise ValueError(
            f"lora_B: expected shape (N={n}, out_features, r={r}) to match lora_A {tuple(lora_A.shape)}, "
            f"got {tuple(lora_B.shape)}"
        )
    d = n * lora_B.shape[1]
    _check_tensor("scaling", scaling)
    if not scaling.dtype.is_floating_point or tuple(scaling.shape) != (n,):
        raise ValueError(f"scaling: expected a floating tensor of shape ({n},), got {scaling.dtype} {tuple(scaling.shape)}")
    if scaling.device != dev:
        _check_same_device("x", x, "scaling", scaling)
    _mole_check_float("gate_weight", gate_weight, (n, d), dev)
    if norm_weight is not None:
        _mole_check_float("norm_weight", norm_weight, (d,), dev)
    if norm_bias is not None:
        _mole_check_float("norm_bias", norm_bias, (d,), dev)
    _check_tensor("temperature", temperature)
    if not temperature.dtype.is_floating_point or temperature.dim() > 1 or temperature.numel() != 1:
        raise ValueError(
            f"temperature: expected a floating tensor of shape () or (1,), got {temperature.dtype} {tuple(temperature.shape)}"
        )
    if temperature.device != dev:
        _check_same_device("x", x, "temperature", temperature)
    if expert_mask is not None:
        _check_tensor("expert_mask", expert_mask)
        if expert_mask.dtype != torch.bool or tuple(expert_mask.shape) != (n,):
            raise ValueError(
                f"expert_mask: expected a bool tensor of shape ({n},), got {expert_mask.dtype} {tuple(expert_mask.shape)}"
            )
        if expert_mask.device != dev:
            _check_same_device("x", x, "expert_mask", expert_mask)
    if norm not in _MOLE_NORMS:
        raise ValueError(f"norm: expected one of {_MOLE_NORMS}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise ValueError(f"eps: expected a positive finite float, got {eps!r}")


def _mole_shapes_ok(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    """The checks of :func:`_mole_validate` as one expression (this runs once per layer per decoded
    token); False sends the call through ``_mole_validate`` for the error message."""
    fl = _FLOAT_ACTIVATIONS
    try:
        n, r, k = lora_A.shape
        n_b, o, r_b = lora_B.shape
        d = n * o
        dev = x.device
        return (
            x.dtype in fl
            and lora_A.dtype in fl
            and lora_B.dtype in fl
            and gate_weight.dtype in fl
            and x.shape[-1] == k
            and k > 0
            and n > 0
            and r > 0
            and o > 0
            and n_b == n
            and r_b == r
            and scaling.shape == (n,)
            and scaling.dtype.is_floating_point
            and gate_weight.shape == (n, d)
            and (norm_weight is None or (norm_weight.shape == (d,) and norm_weight.dtype in fl and norm_weight.device == dev))
            and (norm_bias is None or (norm_bias.shape == (d,) and norm_bias.dtype in fl and norm_bias.device == dev))
            and temperature.dim() <= 1
            and temperature.numel() == 1
            and temperature.dtype.is_floating_point
            and (expert_mask is None or (expert_mask.dtype == torch.bool and expert_mask.shape == (n,) and expert_mask.device == dev))
            and lora_A.device == dev
            and lora_B.device == dev
            and scaling.device == dev
            and gate_weight.device == dev
            and temperature.device == dev
            and norm in _MOLE_NORMS
            and type(eps) in (float, int)
            and 0 < eps < float("inf")
        )
    except (AttributeError, TypeError, ValueError, IndexError):
        return False


def _mole_check_grads_and_values(x, lora_A, lora_B, scaling, temperature, expert_mask) -> None:
    if torch.is_grad_enabled():
        for name, t in (("lora_A", lora_A), ("lora_B", lora_B), ("scaling", scaling)):
            if t.requires_grad:
                raise ValueError(
                    f"{name}: requires grad, but mole_gate treats the LoRA experts as frozen (MoLE trains only the "
                    f"gate) and has no gradient for them; call {name}.requires_grad_(False) or pass {name}.detach()"
                )
    # value checks, only where they cost no device synchronization
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        tau = temperature.item()
        if not tau > 0:
            raise ValueError(f"temperature: expected > 0, got {tau}")
        if expert_mask is not None and not bool(expert_mask.any()):
            raise ValueError("expert_mask: expected at least one kept expert (True), got all False")


def mole_gate(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: torch.Tensor,
    gate_weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    temperature: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    *,
    norm: str = "layernorm",
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoLE gate (Wu et al., ICLR 2024, arXiv 2404.13628, Eq. 6-13), fused: mixes ``N`` LoRA experts
    by per-token gates without forming the ``(tokens, N, O)`` expert outputs.

    Per token: ``E_i = s_i (x A_i^T) B_i^T``; ``C = [E_0 | ... | E_{N-1}]``;
    ``logits = norm(C) @ gate_weight^T``; ``gates = softmax(logits / tau)``, renormalized over the
    experts kept by ``expert_mask``; ``y = sum_i gates_i E_i``. The specification, with the three
    ``norm`` choices written out, is :func:`lmops_kernels.reference.mole.mole_gate`.

    Args:
        x: ``(..., K)`` float32|bfloat16|float16.
        lora_A: ``(N, r, K)``, the experts' A matrices stacked (an expert of smaller rank zero-padded to ``r``).
        lora_B: ``(N, O, r)``, the experts' B matrices stacked.
        scaling: ``(N,)`` floating, each expert's ``alpha / r``.
        gate_weight: ``(N, N*O)``.
        norm_weight, norm_bias: ``(N*O,)`` or None (the normalization's affine; each applied if given).
        temperature: ``()`` or ``(1,)`` floating tensor, ``tau > 0``.
        expert_mask: ``(N,)`` bool or None; kept experts are True (at least one).
        norm: ``"layernorm"`` (biased variance) | ``"rmsnorm"`` | ``"l2"`` (``C / max(||C||, eps)``), over the ``N*O`` features.
        eps: positive float.
    Returns:
        ``(y, gates)``: ``y`` ``(..., O)`` in ``x``'s dtype (the LoRA part only; add the base output),
        ``gates`` ``(..., N)`` float32. A, B, gate and norm tensors may be float32, bfloat16 or float16;
        all arithmetic is float32.

    Autograd: gradients flow to ``x``, ``gate_weight``, ``norm_weight``, ``norm_bias`` and
    ``temperature``. The experts are frozen, as in MoLE: ``lora_A``, ``lora_B`` and ``scaling`` must not
    require grad while grad is enabled (``ValueError``). The backward is the same on every backend:
    plain torch in rank space (:func:`lmops_kernels.mole_rank.backward`), recomputing ``x A^T``.

    Checks: shapes, dtypes and devices always; ``temperature > 0`` and "at least one kept expert" on
    CPU tensors only (elsewhere they would synchronize the device; a non-positive temperature or an
    all-False mask then gives wrong or non-finite outputs). Weight-only tensors derived from
    ``lora_A``, ``lora_B``, the gate and the norm (a float32 copy of ``B^T`` stacked, Gram matrices,
    gate projections) are cached per weight set (:mod:`lmops_kernels.mole_rank`); in-place updates
    are seen through version counters, writes through ``.data`` are not.
    """
    if not _mole_shapes_ok(
        x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps
    ):
        _mole_validate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps)
    _mole_check_grads_and_values(x, lora_A, lora_B, scaling, temperature, expert_mask)
    eps = float(eps)
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (x, gate_weight, norm_weight, norm_bias, temperature))
    ):
        # Inference fast path (as ternary_linear's): the implementation the operator would reach,
        # without the operator call's ~35 us (measured on 2 cores: 54 vs 19 us per call on tiny
        # shapes), a sixth of a decode step's MoLE part at N=8, r=16, 4096x4096.
        y, gates = dispatch.select("mole_gate", x.device.type).fn(
            x2, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps
        )
    else:
        y, gates = torch.ops.lmops.mole_gate(
            x2, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps
        )
    if x.dim() == 2:
        return y, gates
    lead = x.shape[:-1]
    return y.reshape(*lead, lora_B.shape[1]), gates.reshape(*lead, lora_A.shape[0])
