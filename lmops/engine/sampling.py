"""Token choice: greedy, or sampling with temperature, top-k and top-p.

The warpers compute what ``transformers``' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper`` compute (same order: temperature, then top-k, then top-p; same tie rules: top-k
keeps every token scoring at least the k-th score, top-p keeps the smallest set of most likely
tokens whose mass reaches ``top_p`` and always the most likely one), applied to float32 logits, then
softmax and one ``torch.multinomial`` draw per row from ``generator`` (torch's global generator when
None, as ``model.generate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Sampler"]


@dataclass(frozen=True)
class Sampler:
    """How to pick the next token from ``(B, vocab)`` float32 logits.

    Attributes:
        do_sample: False: argmax (the first index among ties, as ``torch.argmax``); True: sample.
        temperature: > 0; logits are divided by it (sampling only; 1.0 leaves them).
        top_k: keep the ``top_k`` highest logits (and ties with the k-th); None or 0: no top-k.
            (``model.generate`` applies its default ``top_k=50`` unless told otherwise; here None means none.)
        top_p: in (0, 1]; nucleus filtering; None or 1.0: none.
        generator: a ``torch.Generator`` on the logits' device for reproducible draws, or None.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"do_sample: expected a bool, got {self.do_sample!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature: expected a finite number > 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"top_k: expected None or an int >= 0, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {p!r}")
        g = self.generator
        if g is not None and not isinstance(g, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(g).__name__}")

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """The filtered logits sampling draws from: ``(B, vocab)`` float32, removed tokens at ``-inf``."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            k = min(self.top_k, scores.shape[-1])
            threshold = torch.topk(scores, k)[0][..., -1, None]
            scores = scores.masked_fill(scores < threshold, -float("inf"))
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits, sorted_indices = torch.sort(scores, descending=False)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - self.top_p)
            remove[..., -1:] = False  # keep at least the most likely token
            remove = remove.scatter(1, sorted_indices, remove)
            scores = scores.masked_fill(remove, -float("inf"))
        return scores

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores``: ``(B, vocab)`` float32 raw logits -> ``(B,)`` int64 token ids."""
        if not self.do_sample:
            return torch.argmax(scores, dim=-1)
        probs = torch.softmax(self.warp(scores), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)
