"""Shared cases of the engine tests: tiny models of every family (dense or packed), left-padded batches,
and ``model.generate`` as the reference."""

from __future__ import annotations

import torch

from lmops import bitnet
from tiny_models import random_ids, tiny_model


def family_model(arch: str, *, packed: bool = False, attention: str = "sdpa", dtype=torch.float32, seed: int = 5,
                 **overrides):
    """A tiny ``arch`` model (2 layers, hidden 64, 4/2 heads, vocab 128), optionally converted to lmops
    BitLinear and packed, in ``dtype``, with ``attention`` as its attention implementation."""
    model = tiny_model(arch, seed=seed, **overrides).to(dtype)
    if packed:
        bitnet.pack(bitnet.convert(model))
    model.config._attn_implementation = attention
    return model.eval()


def padded_batch(seed: int, batch: int = 3, width: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``: ``batch`` prompts left-padded to ``width`` (row 0 short, row 1 full, the rest
    shortened by the seed), pad id 0 in the padding."""
    ids = random_ids(batch, width, seed=seed)
    mask = torch.ones_like(ids)
    mask[0, : width // 2] = 0
    for row in range(2, batch):
        mask[row, : (seed + row) % (width - 1)] = 0
    return ids.masked_fill(mask == 0, 0), mask


def generate_with_scores(model, ids, mask, n: int, **kwargs):
    """``lmops.generate`` greedy (pad id 0) and the raw float32 logits of every step, as a list."""
    from lmops.engine import generate

    scores = []
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0,
                   on_step=lambda step, s, t: scores.append(s), **kwargs)
    return seq, scores


def reference(model, ids, mask, max_new_tokens: int, **kwargs):
    """``model.generate`` greedy (unless kwargs say otherwise), pad id 0, with per-step logits."""
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=0,
                              return_dict_in_generate=True, output_logits=True, **kwargs)


class RecordingStreamer:
    """A ``transformers``-style streamer that records every ``put`` and the ``end``."""

    def __init__(self) -> None:
        self.calls: list = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(("put", value.tolist()))

    def end(self) -> None:
        self.calls.append(("end",))
