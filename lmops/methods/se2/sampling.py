"""Building the retriever's training data: three-step sequential sampling, scored by the LLM
(``find_random_step{1,2,3}.py``, ``scorer.py``'s split, ``merge_data.py``).

- Step 1: every query gets L random pool candidates (itself excluded), each scored one-shot.
- Step k > 1: from every record of step k-1 (its train split, then its valid split) one example is drawn
  from the ranking with p(rank r) ∝ e^(-r) (``scipy.stats.expon.pdf``) and prepended to the chosen
  prefix; L fresh candidates (excluding the query and every chosen id) are scored in front of it.
- Every step shuffles its records with seed 42 and splits them 90/10; the merge keeps step 1's split
  and sends each later record to train or valid by whether its query was in step 1's train split, so no
  query is in both; both lists are then shuffled with seed 42.

Record ``i`` of a step reseeds ``random`` (and numpy for the rank draw) with ``i``, as the official code
does, so the sampling is deterministic given the inputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...common.progress import progress_bar
from .config import ScoreConfig
from .data import Candidate, Example, Pool, ScoredRecord, Template
from .scoring import (
    ClassificationScorer,
    GenerationScorer,
    Scorer,
    score_with_retries,
    scoring_prompt,
)

__all__ = [
    "ScoredData",
    "merge_steps",
    "next_step_items",
    "rank_probabilities",
    "sample_rank",
    "score_candidates",
    "score_items",
    "split_records",
    "step1_items",
]

Item = tuple[int, list[int], list[int]]  # (query id, chosen pool ids in prompt order, candidate pool ids)


def rank_probabilities(n: int) -> np.ndarray:
    """p(rank r) for r = 0..n-1: ``scipy.stats.expon.pdf(r)`` normalised, i.e. e^(-r) / Σ e^(-k);
    float64, shape ``(n,)``."""
    from scipy.stats import expon

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    p = expon.pdf(np.arange(n, dtype=np.float64))
    return p / p.sum()


def sample_rank(n: int, seed: int) -> int:
    """The rank the official sampler draws for record ``seed`` out of ``n`` ranked candidates
    (``numpy.random.seed(seed); numpy.random.choice(n, 1, replace=False, p=rank_probabilities(n))``)."""
    rng = np.random.RandomState(seed)
    return int(rng.choice(np.arange(n), size=1, replace=False, p=rank_probabilities(n))[0])


def _available(pool: Pool, query: Example, excluded: Sequence[int]) -> list[int]:
    own = pool.self_id(query)
    barred = set(excluded) | ({own} if own is not None else set())
    return [pid for pid in pool.ids if pid not in barred]


def step1_items(pool: Pool, queries: Sequence[Example], n_candidates: int) -> list[Item]:
    """Step 1: query ``i`` gets ``min(L, available)`` candidates drawn by ``random.Random(i).sample``
    from the pool without the query itself."""
    items = []
    for i, q in enumerate(queries):
        avail = _available(pool, q, ())
        items.append((q.id, [], random.Random(i).sample(avail, k=min(n_candidates, len(avail)))))
    return items


def next_step_items(
    records: Sequence[ScoredRecord], pool: Pool, queries_by_id: dict[int, Example], n_candidates: int
) -> list[Item]:
    """Step k > 1 from the records of step k-1 (train split then valid split, as the official code
    concatenates them): record ``i`` draws rank :func:`sample_rank` ``(len(ctxs), i)``, prepends that
    example to its chosen prefix, and gets fresh candidates from ``random.Random(i)`` excluding the query
    and every chosen id. Records without candidates are skipped."""
    items = []
    for i, rec in enumerate(records):
        if not rec.ctxs:
            continue
        picked = rec.ctxs[sample_rank(len(rec.ctxs), i)].id
        chosen = [picked] + list(rec.chosen)
        avail = _available(pool, queries_by_id[rec.query_id], chosen)
        if not avail:
            continue
        items.append((rec.query_id, chosen, random.Random(i).sample(avail, k=min(n_candidates, len(avail)))))
    return items


def score_items(
    llm,
    scorer: Scorer,
    pool: Pool,
    queries_by_id: dict[int, Example],
    items: Sequence[Item],
    *,
    template: Template,
    step: int,
    chunk_size: int = 64,
    retries: int = 2,
    progress: bool = True,
) -> tuple[list[ScoredRecord], int]:
    """Score every candidate of every item (``chunk_size`` candidates per LLM call) and rank each item's
    candidates by loss, ascending (a stable sort, as Python's ``sorted``). Returns the records (those
    with at least one scored candidate) and the number of candidates skipped after failed calls."""
    flat = [(k, cand) for k, (_, _, cands) in enumerate(items) for cand in cands]
    scored: list[list[Candidate]] = [[] for _ in items]
    skipped = 0
    with progress_bar(total=len(flat), desc=f"se2 score step {step}", unit="cand", disable=not progress) as bar:
        for start in range(0, len(flat), chunk_size):
            chunk = flat[start : start + chunk_size]
            queries = [queries_by_id[items[k][0]] for k, _ in chunk]
            contexts = [scoring_prompt(pool, template, cand, items[k][1], q) for (k, cand), q in zip(chunk, queries)]
            for (k, cand), result in zip(chunk, score_with_retries(scorer, llm, contexts, queries, retries)):
                if result is None:
                    skipped += 1
                else:
                    scored[k].append(Candidate(cand, float(result[0]), float(result[1]), result[2]))
            bar.update(len(chunk))
    records = [
        ScoredRecord(query_id=qid, chosen=list(chosen), ctxs=sorted(scored[k], key=lambda c: c.loss), step=step)
        for k, (qid, chosen, _) in enumerate(items)
        if scored[k]
    ]
    return records, skipped


def split_records(records: Sequence[ScoredRecord], valid_ratio: float = 0.1, seed: int = 42):
    """The scorer's split: shuffle with ``random.Random(seed)``, the first ``int(n * (1 - valid_ratio))``
    records train, the rest valid. Returns ``(train, valid)``."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_train = int(len(shuffled) * (1 - valid_ratio))
    return shuffled[:n_train], shuffled[n_train:]


def merge_steps(steps: Sequence[tuple[list[ScoredRecord], list[ScoredRecord]]], seed: int = 42):
    """``merge_data.py``: step 1's split kept; each later record goes to train when its query id is in
    step 1's train split, else to valid; then train and valid are shuffled by one ``random.Random(seed)``
    (train first). Returns ``(train, valid)``."""
    if not steps:
        return [], []
    train, valid = list(steps[0][0]), list(steps[0][1])
    train_ids = {r.query_id for r in train}
    for step_train, step_valid in steps[1:]:
        for rec in list(step_train) + list(step_valid):
            (train if rec.query_id in train_ids else valid).append(rec)
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(valid)
    return train, valid


@dataclass
class ScoredData:
    """What :func:`score_candidates` produced.

    Attributes:
        train, valid: the merged records.
        steps: each step's ``(train, valid)`` split.
        skipped: candidates skipped because the LLM failed on them after retries.
    """

    train: list[ScoredRecord]
    valid: list[ScoredRecord]
    steps: list[tuple[list[ScoredRecord], list[ScoredRecord]]] = field(default_factory=list)
    skipped: int = 0


def default_scorer(pool: Pool, template: Template, config: ScoreConfig) -> Scorer:
    """Classification when the pool's examples have options, else generation (chrF, a choice)."""
    kinds = {ex.is_classification for ex in pool.examples}
    if len(kinds) > 1:
        raise ValueError("pool: expected all classification examples (with options) or all generation ones")
    if kinds == {True}:
        return ClassificationScorer(template)
    return GenerationScorer(max_new_tokens=config.max_new_tokens)


def score_candidates(
    llm,
    pool: Pool,
    queries: Sequence[Example] | None = None,
    *,
    config: ScoreConfig | None = None,
    template: Template | None = None,
    scorer: Scorer | None = None,
    progress: bool = True,
    on_step: Callable[[int, list[ScoredRecord], list[ScoredRecord]], None] | None = None,
) -> ScoredData:
    """Run the ``config.steps`` sampling-and-scoring steps and merge them.

    Args:
        llm: an :mod:`lmops.llm` backend (``loglikelihood`` for classification, ``generate`` otherwise);
            wrap it in :class:`~lmops.llm.CachedLLM` to make a rerun resume.
        pool: where candidates come from.
        queries: the inputs to build records for (default: the pool itself, as the official code does);
            ids must be unique; a query that is a pool member never gets itself as a candidate.
        config, template: see :class:`ScoreConfig`, :class:`Template`.
        scorer: default :class:`ClassificationScorer` or :class:`GenerationScorer` by the pool's kind.
        on_step: called with ``(step, train, valid)`` after each step (to save it).
    """
    config = config or ScoreConfig()
    template = template or Template()
    if not isinstance(pool, Pool):
        raise TypeError(f"pool: expected a Pool, got {type(pool).__name__}")
    queries = list(pool.examples if queries is None else queries)
    if not queries:
        raise ValueError("queries: expected at least one query")
    queries_by_id: dict[int, Example] = {}
    for q in queries:
        if not isinstance(q, Example):
            raise TypeError(f"queries: expected Examples, got {type(q).__name__}")
        if q.id in queries_by_id:
            raise ValueError(f"queries: duplicate query id {q.id} (the train/valid merge is by query id)")
        queries_by_id[q.id] = q
    scorer = scorer or default_scorer(pool, template, config)
    if isinstance(scorer, ClassificationScorer):
        bad = [q.id for q in queries if not q.is_classification]
        if bad:
            raise ValueError(f"queries: classification scoring needs options and gold; missing for ids {bad[:5]}")

    steps: list[tuple[list[ScoredRecord], list[ScoredRecord]]] = []
    skipped = 0
    items = step1_items(pool, queries, config.n_candidates)
    for step in range(1, config.steps + 1):
        if step > 1:
            prev_train, prev_valid = steps[-1]
            items = next_step_items(prev_train + prev_valid, pool, queries_by_id, config.n_candidates)
        records, lost = score_items(llm, scorer, pool, queries_by_id, items, template=template, step=step,
                                    chunk_size=config.chunk_size, retries=config.retries, progress=progress)
        skipped += lost
        train, valid = split_records(records, config.valid_ratio, config.split_seed)
        steps.append((train, valid))
        if on_step is not None:
            on_step(step, train, valid)
    train, valid = merge_steps(steps, config.split_seed)
    return ScoredData(train=train, valid=valid, steps=steps, skipped=skipped)
