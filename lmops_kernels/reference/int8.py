"""Plain-torch reference for int8 weights with per-output-channel scales: the weight quantizer and the
W8A8 linear ``int8_linear``. The specification every backend is tested against; it uses the same
float32 operations, in the same order, as the native kernels, so results agree bit for bit.

Formulas:

- weight, per output row ``n``:  ``scale[n] = max(max_k |W[n, k]|, 1e-12) / 127``;
  ``q[n] = clamp(round(W[n] / scale[n]), -127, 127)`` (symmetric: -128 is never produced)
- activation, per row: :func:`~lmops_kernels.reference.ternary.quantize_activation_absmax` (8 bits),
  ``s = 127 / max(max |x|, 1e-5)``, ``x_q = clamp(round(x s), -128, 127)`` (in fact within +-127)
- linear: ``y[m, n] = float32(sum_k x_q[m, k] q[n, k]) * (scale[n] / s[m])  [+ bias[n]]``, the sum exact
  in int32, the rest float32, then cast to ``x``'s dtype

``round`` is round-half-to-even (``torch.round``). Rows of ``x`` holding NaN/Inf give NaN rows.
"""

from __future__ import annotations

import torch

from .ternary import quantize_activation_absmax

# Weight rows per float64 block of the exact product: bounds the reference's scratch memory (a 32000 x
# 2048 output head would otherwise take a 500 MiB float64 copy per call).
_ROWS_PER_BLOCK = 4096


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel absmax int8 quantization of a weight matrix.

    Args:
        w: ``(N, K)`` floating point, finite.
    Returns:
        ``q``: int8 ``(N, K)`` in [-127, 127]; ``scale``: float32 ``(N,)``, so that ``w ~= q * scale[:, None]``.
    """
    w32 = w.float()
    scale = w32.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = (w32 / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_matmul_int(x_q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact integer product ``x_q @ weight^T``: ``(M, K)`` int8 x ``(N, K)`` int8 -> ``(M, N)`` int32."""
    x64 = x_q.double()
    # float64 holds every partial sum exactly (|sum| <= 128 * 128 * K << 2^53) and uses the BLAS path
    blocks = [(x64 @ w.double().t()).to(torch.int32) for w in weight.split(_ROWS_PER_BLOCK)]
    return torch.cat(blocks, dim=1) if blocks else x_q.new_empty((x_q.shape[0], 0), dtype=torch.int32)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8 linear: ``y = (absmax_int8(x) @ weight^T) * (weight_scale / s_x) + bias``.

    Args:
        x: ``(..., K)`` float16|bfloat16|float32.
        weight: ``(N, K)`` int8; weight_scale: ``(N,)`` float32; bias: ``(N,)`` floating or None.
    Returns:
        ``(..., N)`` in ``x``'s dtype.
    """
    lead = x.shape[:-1]
    x_q, s = quantize_activation_absmax(x.reshape(-1, x.shape[-1]))
    acc = int8_matmul_int(x_q, weight)
    y = acc.float() * (weight_scale.float().reshape(1, -1) / s)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, weight.shape[0])
