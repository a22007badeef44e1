"""Plain-torch reference for BitNet b1.58 quantization and the W2A8 ternary linear.

This module is the specification every backend is tested against. It favours readability; the
only care taken is to use the same float32 operations, in the same order, as the native kernels,
so that results agree bit for bit in float32 (the integer accumulation is exact everywhere).

Formulas (BitNet b1.58, arXiv 2402.17764; numbers as in transformers' ``WeightQuant``/``ActQuant``):

- weight, per tensor:  gamma = max(mean |W|, 1e-5);  q = clamp(round(W / gamma), -1, 1)
- activation, per row: s = (2^(b-1) - 1) / max(max |x|, 1e-5);  x_q = clamp(round(x s), -2^(b-1), 2^(b-1) - 1)
- linear:              y = (x_q @ q^T) * (gamma / s)  [+ bias], accumulated in int32, rescaled in float32

``round`` is round-half-to-even (``torch.round``). All scale arithmetic is float32 whatever the
input dtype (transformers' ``ActQuant`` does the same; its older packed ``BitLinear`` computes in the
model dtype, which can differ by one int8 step on bf16 inputs).

Non-finite activations: a row holding NaN or +-Inf gets ``scale = NaN`` and ``x_q = 0``, so its
output row of :func:`ternary_linear` is all NaN. Other rows are unaffected.
"""

from __future__ import annotations

import torch

from .packing import unpack_ternary


def quantize_weight_absmean(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a weight tensor.

    Args:
        w: any shape, floating point.
    Returns:
        ``q``: int8 of ``w``'s shape, values in {-1, 0, 1};
        ``scale``: float32 scalar tensor gamma = max(mean |w|, 1e-5), so that ``w ~= q * scale``.
    """
    w32 = w.float()
    gamma = w32.abs().mean().clamp(min=1e-5)
    q = (w32 / gamma).round().clamp(-1, 1).to(torch.int8)
    return q, gamma.reshape(())


def quantize_activation_absmax(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) absmax quantization to signed ``bits``-bit integers stored in int8.

    Args:
        x: ``(..., K)`` float16|bfloat16|float32.
        bits: 2..8.
    Returns:
        ``q``: int8 ``(..., K)``; ``scale``: float32 ``(..., 1)`` with ``x ~= q / scale``.
    """
    qp = 2 ** (bits - 1) - 1
    qn = -(2 ** (bits - 1))
    x32 = x.float()
    absmax = x32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    # reciprocal-then-multiply is how torch evaluates transformers' ``127 / absmax``: same bits as ActQuant
    scale = absmax.reciprocal() * qp
    finite = torch.isfinite(x32).all(dim=-1, keepdim=True)
    q = (x32 * scale).round().clamp(qn, qp)
    q = torch.where(finite, q, torch.zeros_like(q)).to(torch.int8)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return q, scale


def ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Exact integer product ``x_q @ q^T``.

    Args:
        x_q: ``(M, K)`` int8.
        packed: ``(N, 4 * ceil(K / 16))`` uint8, the lmops tiled packing of ``q`` ``(N, K)``.
    Returns:
        ``(M, N)`` int32.
    """
    q = unpack_ternary(packed, packed.shape[0], x_q.shape[-1])
    # float64 holds every partial sum exactly (|sum| <= 128 K << 2^53), and uses the fast BLAS path.
    return (x_q.double() @ q.double().t()).to(torch.int32)


def ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W2A8 linear: ``y = (absmax_int8(x) @ q^T) * (gamma / s_x) + bias``.

    Args:
        x: ``(..., K)`` float16|bfloat16|float32.
        packed: ``(N, 4 * ceil(K / 16))`` uint8, the lmops tiled packing of ``q`` ``(N, K)``.
        weight_scale: float32 scalar, gamma (so that ``W ~= q * gamma``).
        bias: ``(N,)`` or None.
    Returns:
        ``(..., N)`` in ``x``'s dtype.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    x_q, s = quantize_activation_absmax(x2)
    acc = ternary_matmul_int(x_q, packed)
    r = weight_scale.float().reshape(1, 1) / s
    y = acc.float() * r
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, packed.shape[0])
