"""Inference-time selection: beam search over example sequences with the trained dual encoder
(``dense_retriever_beam_score.py``), and the prompt built from the chosen pool ids (``few_shot_dsr.py``).

Beam search (width w, K shots): the pool is encoded once with the context encoder. At step j every
sequence s of a query is encoded as a query (its demonstrations then the query's question, as in
training) and extended with its w best-scoring pool examples not already in s (nor the query itself),
``s' = doc ⊕ s`` (prepended), with cumulative score = the sum of the dot products along the way; the w
best sequences of the query are kept. Step 0 expands only the bare query. The official code retrieves the
top (w + j + 5) and skips the excluded ones; masking the excluded ids before the top-w is the same
whenever at most j + 5 are excluded (always so there) and never runs short otherwise. Retrieval is a
brute-force ``torch`` matmul (a choice: no FAISS index; fine up to pools of ~10^5).

Fixes over the official code: sequences are kept as pool ids (the official joins them into one string
and later splits it on "\\n", so an example containing a newline became several); the query is excluded
by pool id only when it is a pool member; a query for which no example fits the budget gets none (the
official ``[-0:]`` slice kept them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...common.progress import progress_bar
from .config import SelectConfig
from .data import SEPARATOR, Example, Pool, Template
from .retriever import query_text

__all__ = ["Beam", "Prompt", "Selection", "beam_search", "build_prompt", "build_prompts", "select", "token_counter"]


@dataclass(frozen=True)
class Beam:
    """A sequence of pool ids in prompt order (the last one chosen first, sitting next to the query)
    and its cumulative retrieval score."""

    ids: tuple[int, ...]
    score: float


def beam_search(
    encode_queries: Callable[[list[str]], Tensor],
    pool_vectors: Tensor,
    pool: Pool,
    queries: Sequence[Example],
    *,
    template: Template | None = None,
    beam_size: int = 3,
    shots: int = 3,
    exclude: Sequence[Iterable[int]] | None = None,
    progress: bool = False,
) -> list[list[Beam]]:
    """The beams of every query, best first (at most ``beam_size`` each, ``shots`` ids long unless the
    pool runs out).

    Args:
        encode_queries: texts -> ``(n, hidden)`` float tensor (e.g. ``DualEncoder.encode_queries``).
        pool_vectors: ``(len(pool), hidden)``, row r for ``pool.examples[r]``.
        exclude: per query, pool ids never to select (besides the query itself when it is a pool member).
    """
    template = template or Template()
    if pool_vectors.ndim != 2 or pool_vectors.shape[0] != len(pool):
        raise ValueError(f"pool_vectors: expected shape ({len(pool)}, hidden), got {tuple(pool_vectors.shape)}")
    for name, value in (("beam_size", beam_size), ("shots", shots)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude: expected one id collection per query ({len(queries)}), got {len(exclude)}")
    barred_rows: list[set[int]] = []
    for i, q in enumerate(queries):
        ids = set(exclude[i]) if exclude is not None else set()
        own = pool.self_id(q)
        if own is not None:
            ids.add(own)
        barred_rows.append({pool.row_of[x] for x in ids if x in pool.row_of})
    vectors = pool_vectors.float()
    beams: list[list[Beam]] = [[Beam((), 0.0)] for _ in queries]
    with progress_bar(total=shots, desc="se2 beam search", unit="shot", disable=not progress) as bar:
        for _ in range(shots):
            jobs = [(i, b) for i in range(len(queries)) for b in beams[i]]
            texts = [query_text(pool, template, b.ids, queries[i]) for i, b in jobs]
            qvec = encode_queries(texts).float() if texts else torch.zeros((0, vectors.shape[1]))
            candidates: list[dict[tuple[int, ...], Beam]] = [{} for _ in queries]
            for start in range(0, len(jobs), 256):
                scores = qvec[start : start + 256] @ vectors.T
                for row, (i, b) in enumerate(jobs[start : start + 256]):
                    s = scores[row].clone()
                    barred = barred_rows[i] | {pool.row_of[x] for x in b.ids}
                    if barred:
                        s[list(barred)] = float("-inf")
                    k = min(beam_size, len(pool) - len(barred))
                    if k <= 0:
                        continue
                    top = torch.topk(s, k)
                    for value, r in zip(top.values.tolist(), top.indices.tolist()):
                        new = Beam((pool.ids[r],) + b.ids, b.score + value)
                        candidates[i].setdefault(new.ids, new)
            for i in range(len(queries)):
                if candidates[i]:  # else the pool is exhausted: keep the shorter beams
                    beams[i] = sorted(candidates[i].values(), key=lambda x: x.score, reverse=True)[:beam_size]
            bar.update(1)
    return beams


@dataclass
class Prompt:
    """A built prompt: the pool ids kept (prompt order), the text (demonstrations, then the query's
    question, joined by " \\n "), and how many selected examples were dropped for the budget."""

    ids: list[int]
    text: str
    dropped: int = 0


def build_prompt(
    pool: Pool,
    ids: Sequence[int],
    query: Example,
    *,
    template: Template | None = None,
    max_tokens: int | None = None,
    length_fn: Callable[[str], int] = len,
    reserve: int | None = None,
) -> Prompt:
    """The prompt for ``query`` from the pool ids ``ids`` (prompt order, the nearest to the query last).

    With ``max_tokens``, the examples farthest from the query are dropped first until
    ``length_fn(prompt) + reserve <= max_tokens``; when none fits the prompt has no example (and is the
    bare question even if that alone is too long).

    Args:
        length_fn: text -> length in the budget's unit (default characters; pass a token counter, e.g.
            :func:`token_counter`, to budget tokens).
        reserve: room kept for the answer; default the longest option's answer rendering
            (classification) or the reference answer's (generation), as the official code does.
    """
    template = template or Template()
    demos = [template.demonstration(pool[i]) for i in ids]
    question = template.question(query)
    if max_tokens is None:
        return Prompt(list(ids), SEPARATOR.join(demos + [question]), 0)
    if reserve is None:
        answers = query.options if query.options is not None else [query.answer]
        reserve = max(length_fn(template.answer(a)) for a in answers)
    for m in range(len(ids), 0, -1):
        text = SEPARATOR.join(demos[len(ids) - m :] + [question])
        if length_fn(text) + reserve <= max_tokens:
            return Prompt(list(ids[len(ids) - m :]), text, len(ids) - m)
    return Prompt([], question, len(ids))


def token_counter(tokenizer) -> Callable[[str], int]:
    """``text -> number of tokens`` with a ``transformers`` tokenizer, no special tokens."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompts(
    pool: Pool,
    selections: Sequence[Sequence[int]],
    queries: Sequence[Example],
    *,
    template: Template | None = None,
    max_tokens: int | None = None,
    length_fn: Callable[[str], int] = len,
) -> list[Prompt]:
    """:func:`build_prompt` for every query."""
    if len(selections) != len(queries):
        raise ValueError(f"selections: expected one per query ({len(queries)}), got {len(selections)}")
    return [build_prompt(pool, ids, q, template=template, max_tokens=max_tokens, length_fn=length_fn)
            for ids, q in zip(selections, queries)]


@dataclass
class Selection:
    """Se2's choice for one query: the best beam's ids and score, the other beams, and the prompt."""

    query_id: int
    beam: Beam
    prompt: Prompt
    other_beams: list[Beam] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "query_id": self.query_id,
            "ids": list(self.prompt.ids),
            "beam_ids": list(self.beam.ids),
            "score": self.beam.score,
            "dropped": self.prompt.dropped,
            "prompt": self.prompt.text,
            "other_beams": [{"ids": list(b.ids), "score": b.score} for b in self.other_beams],
        }


def select(
    retriever,
    pool: Pool,
    queries: Sequence[Example],
    config: SelectConfig | None = None,
    *,
    length_fn: Callable[[str], int] = len,
    pool_vectors: Tensor | None = None,
    progress: bool = True,
) -> list[Selection]:
    """Se2 selection for every query with a trained :class:`~.retriever.DualEncoder`: encode the pool,
    beam search, and build each prompt from the best beam (the official inference uses only that one).

    Args:
        retriever: the dual encoder (its template renders the pool and the queries).
        config: beam width, shots and the prompt budget (:class:`SelectConfig`).
        length_fn: the budget's length function (see :func:`build_prompt`).
        pool_vectors: the pool's context vectors, when already computed.
    """
    config = config or SelectConfig()
    template = retriever.template
    if pool_vectors is None:
        pool_vectors = retriever.encode_contexts(pool.texts(template), batch_size=config.batch_size)
    beams = beam_search(lambda texts: retriever.encode_queries(texts, batch_size=config.batch_size), pool_vectors,
                        pool, queries, template=template, beam_size=config.beam_size, shots=config.shots,
                        progress=progress)
    out = []
    for q, bs in zip(queries, beams):
        best = bs[0]
        prompt = build_prompt(pool, best.ids, q, template=template, max_tokens=config.max_prompt_tokens,
                              length_fn=length_fn)
        out.append(Selection(q.id, best, prompt, list(bs[1:])))
    return out
