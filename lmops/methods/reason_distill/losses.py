"""The official trainer's two losses (``Raibows/Learn-to-Reason`` ``trainer.py``) and the rationale
encoder of the contrastive one.

- :func:`weighted_mle_loss`: next-token cross-entropy over prompt + rationale, prefix targets weighted
  ``prefix_weight`` (``mle_w = 0.1``), the rest 1, normalised by the number of valid targets.
- :func:`triplet_cosine_loss`: ``max(0, cos(a, n) - cos(a, p) + margin)`` averaged over the items that
  have both a positive and a negative, i.e. ``nn.TripletMarginWithDistanceLoss`` with the distance
  ``-cos`` (the official ``CosineSimilarityDistance``).
- :func:`rationale_representations`: the last-layer hidden state of each rationale's last token, the
  rationale encoded after its prompt prefix whose KV cache is computed without gradient.

Total = ``weighted_mle_loss + cl_ratio * triplet_cosine_loss`` (``merge_losses``; ``cl_ratio = 0.5``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["last_token_states", "rationale_representations", "triplet_cosine_loss", "weighted_mle_loss"]

COS_EPS = 1e-8  # the official CosineSimilarityDistance's eps


def weighted_mle_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix_lengths: torch.Tensor,
    prefix_weight: float = 0.1,
) -> torch.Tensor:
    """The official ``compute_mle_weighted_loss``.

    Args:
        logits: ``(B, L, V)``, any float dtype (the cross-entropy is taken in float32).
        input_ids: ``(B, L)`` int64, prefix + rationale (+ end of sequence), right-padded.
        attention_mask: ``(B, L)``, 1 on the ``n_i`` real tokens of row ``i`` (a prefix of the row).
        prefix_lengths: ``(B,)`` int, tokens of the prompt prefix ``P_i`` of each row.
        prefix_weight: ``mle_w``.

    Returns:
        A scalar: ``sum_i sum_{j < n_i - 1} w_ij * CE(logits[i, j], input_ids[i, j + 1]) / sum_i (n_i - 1)``
        with ``w_ij = prefix_weight`` for ``j < P_i`` and 1 otherwise. As in the official code the
        weights are indexed in the shifted (prediction) frame, so the targets weighted ``prefix_weight``
        are tokens ``1 .. P_i``: the prefix's own tokens after the first, and the rationale's first token.
        Padded positions weigh 0 but the 0.1-weighted targets count fully in the denominator.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2] or attention_mask.shape != input_ids.shape:
        raise ValueError(f"logits, input_ids, attention_mask: expected (B, L, V), (B, L), (B, L), got "
                         f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(attention_mask.shape)}")
    if prefix_lengths.shape != input_ids.shape[:1]:
        raise ValueError(f"prefix_lengths: expected shape ({input_ids.shape[0]},), got {tuple(prefix_lengths.shape)}")
    shift_logits = logits[:, :-1, :].float()
    shift_labels = input_ids[:, 1:]
    valid_length = attention_mask.sum(dim=-1) - 1  # (B,) targets per row
    positions = torch.arange(shift_labels.shape[1], device=logits.device)[None, :]
    valid = positions < valid_length[:, None].to(logits.device)
    weights = torch.where(positions < prefix_lengths[:, None].to(logits.device),
                          torch.full((), float(prefix_weight), device=logits.device),
                          torch.ones((), device=logits.device)) * valid
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                         shift_labels.reshape(-1).to(logits.device), reduction="none")
    ce = ce.view_as(weights)
    return (ce * weights).sum() / valid_length.sum().clamp(min=1).float()


def triplet_cosine_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    mask: torch.Tensor | None = None,
    margin: float = 1.0,
) -> torch.Tensor:
    """The official ``compute_contrastive_loss`` (before its ``cl_ratio`` factor).

    Args:
        anchor, positive, negative: ``(B, H)`` representations.
        mask: ``(B,)``, 1 for items with both a positive and a negative (``None``: all).
        margin: ``cl_p``.

    Returns:
        ``sum_i m_i * max(0, cos(a_i, n_i) - cos(a_i, p_i) + margin) / max(sum_i m_i, 1e-6)``, a float32
        scalar; 0 (no NaN) when no item is valid. NaNs of masked-out items are zeroed first
        (``nan_to_num``), as the official code does.
    """
    if anchor.dim() != 2 or positive.shape != anchor.shape or negative.shape != anchor.shape:
        raise ValueError(f"anchor, positive, negative: expected three (B, H) tensors of one shape, got "
                         f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}")
    if mask is None:
        mask = torch.ones(anchor.shape[0], device=anchor.device)
    if mask.shape != anchor.shape[:1]:
        raise ValueError(f"mask: expected shape ({anchor.shape[0]},), got {tuple(mask.shape)}")
    a, p, n = anchor.float(), positive.float(), negative.float()
    d_ap = -F.cosine_similarity(a, p, dim=1, eps=COS_EPS)
    d_an = -F.cosine_similarity(a, n, dim=1, eps=COS_EPS)
    per_item = torch.clamp(d_ap - d_an + margin, min=0.0)
    mask = mask.to(per_item)
    return (torch.nan_to_num(per_item) * mask).sum() / torch.clamp(mask.sum(), min=1e-6)


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``hidden[i, n_i - 1]`` for right-padded rows with ``n_i`` real tokens (the official
    ``last_valid_token``). ``hidden``: ``(B, L, H)``; ``attention_mask``: ``(B, L)``; returns ``(B, H)``."""
    last = attention_mask.sum(dim=1).long() - 1
    if (last < 0).any():
        raise ValueError("attention_mask: a row has no token")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def _cache_argument(model: Any) -> str:
    """The keyword ``model.forward`` takes a KV cache under (``cache`` in newer transformers,
    ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise RuntimeError("the model returned no KV cache for the prompt prefix (use prefix_cache=False)")


def rationale_representations(
    model: Any,
    prefixes: Sequence[Sequence[int]],
    groups: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    prefix_cache: bool = True,
) -> list[torch.Tensor]:
    """Last-layer hidden state of the last token of each rationale, read after its prompt prefix.

    Args:
        model: a ``transformers`` causal LM (decoder-only).
        prefixes: ``B`` token-id lists, the prompt prefixes (may be empty only with a leading special
            token elsewhere; at least one token is needed for the cache path).
        groups: ``G`` groups (e.g. anchors, positives, negatives) of ``B`` token-id lists each, the
            rationales (each non-empty; the official collator ends them with the end-of-sequence token).
        pad_id: the padding id.
        prefix_cache: ``True`` (official): one forward of the left-padded prefixes under ``no_grad``
            gives a KV cache, repeated ``G`` times, on which one forward of the ``G * B`` right-padded
            rationales runs with gradient. ``False``: a full forward of ``prefix + rationale`` per row with
            gradient through both. Both give the same values; only the gradient differs.

    Returns:
        ``G`` tensors ``(B, H)`` in the model's dtype.
    """
    n, g = len(prefixes), len(groups)
    if n == 0 or g == 0 or any(len(grp) != n for grp in groups):
        raise ValueError(f"groups: expected {g} groups of {n} rationales each (one per prefix)")
    if any(len(r) == 0 for grp in groups for r in grp):
        raise ValueError("groups: every rationale needs at least one token")
    device = next(model.parameters()).device
    if not prefix_cache:
        rows = [list(prefixes[i]) + list(groups[k][i]) for k in range(g) for i in range(n)]
        ids, mask = _pad_right(rows, pad_id)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                    use_cache=False)
        reps = last_token_states(out.hidden_states[-1], mask.to(device))
        return list(reps.view(g, n, -1).unbind(0))
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("prefixes: the cache path needs a non-empty prefix per row (use prefix_cache=False)")
    p_ids, p_mask = _pad_left(prefixes, pad_id)
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    cache_arg = _cache_argument(model)
    with torch.no_grad():
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True)
        cache = _returned_cache(out)
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(g)  # rows become p0 x G, p1 x G, ...
        else:  # a legacy cache: recompute it on repeated rows
            out = model(input_ids=p_ids.repeat_interleave(g, 0), attention_mask=p_mask.repeat_interleave(g, 0),
                        position_ids=p_pos.repeat_interleave(g, 0), use_cache=True)
            cache = _returned_cache(out)
    # rationale rows in the cache's order: row i * G + k is group k of item i
    rows = [groups[k][i] for i in range(n) for k in range(g)]
    c_ids, c_mask = _pad_right(rows, pad_id)
    c_ids, c_mask = c_ids.to(device), c_mask.to(device)
    full_mask = torch.cat([p_mask.repeat_interleave(g, 0), c_mask], dim=1)
    start = p_mask.sum(-1).repeat_interleave(g, 0)
    c_pos = start[:, None] + torch.arange(c_ids.shape[1], device=device)[None, :]
    out = model(input_ids=c_ids, attention_mask=full_mask, position_ids=c_pos, output_hidden_states=True,
                use_cache=True, **{cache_arg: cache})
    reps = last_token_states(out.hidden_states[-1], c_mask)
    return list(reps.view(n, g, -1).transpose(0, 1).unbind(0))

