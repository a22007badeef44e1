"""Masks and attention over the static KV cache, mirroring ``transformers`` 5.x call for call.

Greedy tokens are to be identical to ``model.generate``, so what decides numerics follows
``transformers`` (``masking_utils.sdpa_mask``/``eager_mask``, ``integrations/sdpa_attention.py`` and
each family's ``eager_attention_forward``) rather than a cleverer choice:

- **masks** are boolean ``(B, 1, q, kv)`` (True = attend) over *cache slots*: ``slot_kv <= slot_q``,
  the row's 2-D padding mask, and ``slot_kv > slot_q - window`` under a sliding window. For SDPA no
  mask is passed when none is needed (no padding and no active window), so SDPA runs with
  ``is_causal=True`` at prefill and unmasked at decode, as ``transformers`` does; eager attention
  always gets an additive float mask (0 or the dtype's minimum).
- **GQA** as ``sdpa_attention_forward`` on CPU/CUDA: ``enable_gqa=True`` when there is no mask and
  ``head_dim <= 256``; else for a single query token the query is regrouped to
  ``(B, kv_heads, n_rep, D)`` (``pack_gqa``); else keys and values are repeated (``repeat_kv``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__all__ = ["causal_mask", "eager_attention", "repeat_kv", "sdpa_attention"]

_is_compiling = torch.compiler.is_compiling


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, kv_heads, L, D) -> (B, kv_heads * n_rep, L, D)``, as ``transformers``' ``repeat_kv``."""
    if n_rep == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


def causal_mask(
    padding: torch.Tensor | None,
    q_start: int,
    q_len: int,
    kv_len: int,
    window: int | None,
    *,
    always: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean ``(B or 1, 1, q_len, kv_len)`` mask over cache slots (True = attend), or None when SDPA
    needs none (as ``_ignore_causal_mask_sdpa``: no padding, and no window or ``kv_len < window``).

    Args:
        padding: ``(B, >= kv_len)`` bool, True for real tokens (the 2-D attention mask), or None.
        q_start: the cache slot of the first query; queries are slots ``q_start .. q_start + q_len - 1``.
        window: sliding window (a key is seen when ``q - window < kv <= q``), or None.
        always: build the mask even when SDPA needs none (eager attention always takes one).
    """
    if window is not None and kv_len < window:
        window = None  # every key lies inside the window
    if padding is None and window is None and not always:
        return None
    device = padding.device if padding is not None else device
    q = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    kv = torch.arange(kv_len, device=device)[None, :]
    allowed = kv <= q
    if window is not None:
        allowed = allowed & (kv > q - window)
    allowed = allowed[None, None]
    if padding is not None:
        allowed = allowed & padding[:, None, None, :kv_len]
    return allowed


def sdpa_gqa_without_mask(head_dim: int) -> bool:
    """Whether SDPA gets ``enable_gqa=True`` when no mask is passed (``use_gqa_in_sdpa``: CPU/CUDA
    need no mask and ``head_dim <= 256``; ``TRANSFORMERS_SDPA_FORCE_GQA=1`` forces it). Read once per
    engine, not per call."""
    return os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") == "1" or head_dim <= 256


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    n_rep: int,
    scaling: float,
    gqa_without_mask: bool,
) -> torch.Tensor:
    """``transformers``' SDPA attention on one layer.

    Args:
        q: ``(B, heads, T, D)``; k, v: ``(B, kv_heads, L, D)`` (views of the cache are fine).
        mask: boolean ``(B, 1, T, L)`` or None (then causal when ``T > 1``).
    Returns:
        ``(B, T, heads * D)`` contiguous.
    """
    b, _, t, d = q.shape
    enable_gqa = False
    if n_rep > 1:
        if mask is None and gqa_without_mask:
            enable_gqa = True
        elif t == 1 and not _is_compiling():
            q = q.reshape(b, q.shape[1] // n_rep, n_rep, d)
        else:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=0.0, scale=scaling, is_causal=t > 1 and mask is None, enable_gqa=enable_gqa
    )
    out = out.reshape(out.shape[0], -1, t, v.shape[-1]).transpose(1, 2).contiguous()
    return out.reshape(b, t, -1)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, n_rep: int, scaling: float
) -> torch.Tensor:
    """``transformers``' ``eager_attention_forward``: ``mask`` is additive float ``(B, 1, T, L)``.
    Returns ``(B, T, heads * D)`` contiguous."""
    b, _, t, _ = q.shape
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    weights = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is not None:
        weights = weights + mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out.reshape(b, t, -1)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> the additive float mask of ``eager_mask`` (0 where True, ``finfo(dtype).min``
    elsewhere)."""
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)
