"""The baselines Se2 is compared with, each returning pool ids in prompt order (the best match last, next
to the query, as the official inference orders retrieved examples).

- :func:`random_selection`: ``shots`` pool examples drawn per query. A fix: the official reader reseeds
  before every input, so every input got the same examples.
- :func:`bm25_selection`: the ``shots`` pool examples whose question is lexically closest to the query's
  (``rank_bm25.BM25Okapi`` over whitespace tokens, as the official ``retrieve_bm25.py``; lowercasing is
  a choice).

Both leave out the query itself when it is a pool member.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from .data import Example, Pool

__all__ = ["bm25_selection", "random_selection", "whitespace_tokens"]


def _check_shots(shots: int) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots: expected a positive int, got {shots!r}")


def random_selection(pool: Pool, queries: Sequence[Example], *, shots: int = 3, seed: int = 0) -> list[list[int]]:
    """Per query ``i``, ``shots`` distinct pool ids from ``random.Random(seed * 1000003 + i)``."""
    _check_shots(shots)
    out = []
    for i, q in enumerate(queries):
        own = pool.self_id(q)
        avail = [pid for pid in pool.ids if pid != own]
        out.append(random.Random(seed * 1000003 + i).sample(avail, k=min(shots, len(avail))))
    return out


def whitespace_tokens(text: str) -> list[str]:
    """The BM25 tokens of a text: lowercased, split on whitespace."""
    return text.lower().split()


def bm25_selection(
    pool: Pool,
    queries: Sequence[Example],
    *,
    shots: int = 3,
    tokenize: Callable[[str], list[str]] = whitespace_tokens,
) -> list[list[int]]:
    """Per query, the ``shots`` pool examples with the highest BM25 score of their question against the
    query's question (ties broken by pool order), the best one last."""
    from rank_bm25 import BM25Okapi

    _check_shots(shots)
    corpus = [tokenize(ex.question) or [""] for ex in pool.examples]  # BM25Okapi needs no empty document
    bm25 = BM25Okapi(corpus)
    out = []
    for q in queries:
        scores = np.asarray(bm25.get_scores(tokenize(q.question)), dtype=np.float64)
        own = pool.self_id(q)
        if own is not None:
            scores[pool.row_of[own]] = -np.inf
        order = np.argsort(-scores, kind="stable")
        rows = [int(r) for r in order if np.isfinite(scores[r])][:shots]
        out.append([pool.ids[r] for r in reversed(rows)])
    return out
