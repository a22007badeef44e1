"""In-context evaluation of built prompts (the official ``inference.py``): classification by the lowest
mean option NLL through ``llm.loglikelihood``; generation by greedy decoding scored with a metric.
A query whose LLM call still fails after the retries is skipped and counted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...common.progress import progress_bar
from .data import Example, Template
from .scoring import ClassificationScorer, GenerationScorer, score_with_retries

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Accuracy (classification) or mean metric (generation) over the scored queries; one prediction per
    query (``None`` where skipped)."""

    score: float
    predictions: list = field(default_factory=list)
    skipped: int = 0


def evaluate(
    llm,
    queries: Sequence[Example],
    prompts: Sequence[str],
    *,
    template: Template | None = None,
    metric: Callable[[str, str], float] | None = None,
    max_new_tokens: int = 100,
    chunk_size: int = 64,
    retries: int = 2,
    progress: bool = False,
) -> EvalResult:
    """Score each query given its prompt (demonstrations then the query's question, e.g. ``Prompt.text``).

    Classification queries (with options) count 1 when the option with the lowest mean NLL is gold;
    generation queries count ``metric(prediction, answer)`` (default chrF in [0, 1], a choice).
    """
    if len(prompts) != len(queries):
        raise ValueError(f"prompts: expected one per query ({len(queries)}), got {len(prompts)}")
    if not queries:
        raise ValueError("queries: expected at least one query")
    kinds = {q.is_classification for q in queries}
    if len(kinds) > 1:
        raise ValueError("queries: expected all classification or all generation examples")
    scorer = (ClassificationScorer(template) if kinds == {True}
              else GenerationScorer(metric, max_new_tokens=max_new_tokens))
    preds: list = []
    total, counted, skipped = 0.0, 0, 0
    with progress_bar(total=len(queries), desc="se2 evaluate", unit="query", disable=not progress) as bar:
        for start in range(0, len(queries), chunk_size):
            qs = list(queries[start : start + chunk_size])
            for q, result in zip(qs, score_with_retries(scorer, llm, list(prompts[start : start + chunk_size]), qs, retries)):
                if result is None:
                    preds.append(None)
                    skipped += 1
                    continue
                preds.append(result[2])
                total += result[1]
                counted += 1
            bar.update(len(qs))
    return EvalResult(total / counted if counted else float("nan"), preds, skipped)
