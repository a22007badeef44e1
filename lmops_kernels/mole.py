"""The MoLE gate op ``mole_gate``: its typed public wrapper (validation at the op boundary), and its
backward as the op ``lmops::mole_gate_backward`` (the rank-space gradient of
:mod:`lmops_kernels.mole_rank`), called by the C++ autograd kernel, or by the Python autograd rule here
where the native library is missing."""

from __future__ import annotations

import torch

from . import mole_rank as _mole_rank
from .ops import has_native_autograd
from .checks import FLOAT_ACTIVATIONS as _FLOAT_ACTIVATIONS
from .checks import check_same_device as _check_same_device
from .checks import check_tensor as _check_tensor

_MOLE_NORMS = _mole_rank.NORMS


@torch.library.impl("lmops::mole_gate_backward", "CompositeImplicitAutograd")
def _mole_gate_backward_op(
    grad_y, grad_gates, gates, x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
    expert_mask, norm, eps, needs,
):
    """Gradients for ``(x, gate_weight, norm_weight, norm_bias, temperature)`` (``needs`` says which; the
    others come back empty): :func:`lmops_kernels.mole_rank.backward`."""
    grads = _mole_rank.backward(
        grad_y, grad_gates, gates, x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
        expert_mask, norm, eps, tuple(needs),
    )
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


if not has_native_autograd("mole_gate"):  # the extension is missing: the same rule, in Python

    def _setup(ctx, inputs, output):
        x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps = inputs
        ctx.save_for_backward(
            x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, output[1]
        )
        ctx.norm, ctx.eps = norm, eps

    def _backward(ctx, grad_y, grad_gates):
        x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, gates = ctx.saved_tensors
        needs = ctx.needs_input_grad
        for i, name in ((1, "lora_A"), (2, "lora_B"), (3, "scaling")):
            if needs[i]:
                raise ValueError(
                    f"mole_gate: {name} requires grad, but the LoRA experts are frozen in MoLE and mole_gate has no "
                    f"gradient for them; call {name}.requires_grad_(False) (or pass {name}.detach())"
                )
        want = [needs[0], needs[4], needs[5], needs[6], needs[7]]
        grads = torch.ops.lmops.mole_gate_backward(
            grad_y, grad_gates, gates, x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
            expert_mask, ctx.norm, ctx.eps, want,
        )
        gx, gw, gnw, gnb, gtau = (g if w else None for g, w in zip(grads, want))
        return gx, None, None, None, gw, gnw, gnb, gtau, None, None, None

    torch.library.register_autograd("lmops::mole_gate", _backward, setup_context=_setup)


def _mole_check_float(name: str, t: object, shape: tuple[int, ...] | None, device: torch.device) -> torch.Tensor:
    _check_tensor(name, t)
    if t.dtype not in _FLOAT_ACTIVATIONS:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; move them to one device")
    return t


def _check_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    """Every check of :func:`mole_gate`: shapes, dtypes and devices; frozen experts; on CPU tensors the
    values (a positive temperature, at least one kept expert) where that costs no device sync."""
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


_mole_gate_op = torch.ops.lmops.mole_gate.default


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
    gate projections) are cached per weight set by the native library (``csrc/mole_weights.cpp``; the
    algebra: :mod:`lmops_kernels.mole_rank`); in-place updates are seen through version counters, writes
    through ``.data`` are not.
    """
    _check_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps)
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    y, gates = _mole_gate_op(
        x2, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, float(eps)
    )
    if x.dim() == 2:
        return y, gates
    lead = x.shape[:-1]
    return y.reshape(*lead, lora_B.shape[1]), gates.reshape(*lead, lora_A.shape[0])
