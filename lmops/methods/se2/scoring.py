"""Scoring candidate demonstrations with the frozen LLM (the official ``scorer.py``).

The scored prompt puts the candidate first: ``cand ⊕ " \\n " ⊕ e_k ⊕ … ⊕ " \\n " ⊕ e_1 ⊕ " \\n " ⊕ x``,
where ``e_1`` was chosen first (it sits next to the query) and the sequence grows leftwards.

- :class:`ClassificationScorer`: each option's mean token NLL of its answer tokens, L1-normalised over the
  options; the loss is the gold option's normalised NLL (lower is better), ``one_shot_acc`` is 1 when the
  argmin option is gold.
- :class:`GenerationScorer`: greedy generation (at most 100 new tokens, stop at "\\n"), scored with a task
  metric in [0, 1]; loss = 1 - metric and ``one_shot_acc`` = metric, as the official code does.

A failed LLM call is retried; what still fails is skipped (``None``) and counted by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from ...llm import LLMError
from .data import SEPARATOR, Example, Pool, Template

__all__ = [
    "ClassificationScorer",
    "GenerationScorer",
    "Score",
    "Scorer",
    "chrf_metric",
    "scoring_prompt",
]

Score = tuple[float, float, "int | str"]  # (loss, one_shot_acc, prediction)


def scoring_prompt(pool: Pool, template: Template, candidate: int, chosen: Sequence[int], query: Example) -> str:
    """The context a candidate is scored in: ``cand ⊕ " \\n " ⊕ chosen[0] ⊕ … ⊕ " \\n " ⊕ x``, with
    ``chosen`` in prompt order (the most recently chosen first, the first choice next to the query)."""
    parts = [template.demonstration(pool[candidate])]
    parts += [template.demonstration(pool[c]) for c in chosen]
    parts.append(template.question(query))
    return SEPARATOR.join(parts)


class Scorer(Protocol):
    """Scores contexts (each ending with its query's question) for their queries."""

    def __call__(self, llm, contexts: list[str], queries: list[Example]) -> list[Score]:
        """One ``(loss, one_shot_acc, prediction)`` per context; raises ``LLMError`` when the call fails."""
        ...


def chrf_metric(prediction: str, reference: str) -> float:
    """sacrebleu's sentence chrF, scaled to [0, 1]. A choice: the official code uses each task's metric
    (ROUGE-L for most generation tasks), which is not among this package's dependencies; pass any
    ``metric(prediction, reference) -> float in [0, 1]`` to :class:`GenerationScorer` instead."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(prediction.strip(), [reference.strip()]).score / 100.0


def option_nlls(llm, contexts: Sequence[str], queries: Sequence[Example], template: Template) -> list[list[float]]:
    """Mean token NLL (``-logprob / n_tokens``) of every option's answer rendering after each context,
    in one ``llm.loglikelihood`` call; one list of option NLLs per context."""
    ctx, cont, owner = [], [], []
    for i, (c, q) in enumerate(zip(contexts, queries)):
        if q.options is None:
            raise ValueError(f"queries[{i}]: expected a classification example (with options), got id {q.id}")
        for option in q.options:
            ctx.append(c)
            cont.append(template.answer(option))
            owner.append(i)
    out = llm.loglikelihood(ctx, cont)
    if not isinstance(out, list) or len(out) != len(ctx):
        raise LLMError(getattr(llm, "name", "llm"), f"loglikelihood returned {len(out) if isinstance(out, list) else out!r} "
                                                    f"results for {len(ctx)} requests")
    nlls: list[list[float]] = [[] for _ in contexts]
    for i, item in zip(owner, out):
        try:
            logprob, count = float(item[0]), int(item[1])
        except (TypeError, ValueError, IndexError):
            raise LLMError(getattr(llm, "name", "llm"), f"expected (logprob, n_tokens), got {item!r:.100}") from None
        if count < 1 or math.isnan(logprob) or logprob > 0:
            raise LLMError(getattr(llm, "name", "llm"), f"expected a logprob <= 0 over >= 1 token, got {item!r:.100}")
        nlls[i].append(-logprob / count)
    return nlls


class ClassificationScorer:
    """The official ``choice_losses``: option NLLs through ``llm.loglikelihood``, L1-normalised.

    Args:
        template: renders each option's continuation (``template.answer(option)``).
    """

    def __init__(self, template: Template | None = None) -> None:
        self.template = template or Template()

    def __call__(self, llm, contexts: list[str], queries: list[Example]) -> list[Score]:
        out: list[Score] = []
        for nll, q in zip(option_nlls(llm, contexts, queries, self.template), queries):
            total = sum(abs(v) for v in nll)
            normed = [v / total for v in nll] if total > 0 else [1.0 / len(nll)] * len(nll)
            pred = min(range(len(nll)), key=nll.__getitem__)  # first argmin, as torch.argmin
            out.append((normed[q.gold], 1.0 if pred == q.gold else 0.0, pred))
        return out


class GenerationScorer:
    """The official ``completion_losses``: greedy generation scored with ``metric``.

    Args:
        metric: ``(prediction, reference) -> float in [0, 1]`` (default :func:`chrf_metric`, a choice).
        max_new_tokens: generation budget (official: 100).
        stop: where the answer ends (official: the "\\n" token as EOS).
    """

    def __init__(self, metric: Callable[[str, str], float] | None = None, *, max_new_tokens: int = 100,
                 stop: str = "\n") -> None:
        if metric is not None and not callable(metric):
            raise TypeError(f"metric: expected a callable (prediction, reference) -> float, got {type(metric).__name__}")
        self.metric = metric or chrf_metric
        self.max_new_tokens = max_new_tokens
        self.stop = stop

    def __call__(self, llm, contexts: list[str], queries: list[Example]) -> list[Score]:
        answers = llm.generate(list(contexts), max_new_tokens=self.max_new_tokens, temperature=0.0, stop=self.stop)
        if not isinstance(answers, list) or len(answers) != len(contexts):
            raise LLMError(getattr(llm, "name", "llm"), "generate returned the wrong number of answers")
        out: list[Score] = []
        for samples, q in zip(answers, queries):
            if not samples or not isinstance(samples[0], str):
                raise LLMError(getattr(llm, "name", "llm"), f"expected a completion string, got {samples!r:.100}")
            value = float(self.metric(samples[0], q.answer))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"metric: expected a value in [0, 1], got {value!r}")
            out.append((1.0 - value, value, samples[0]))
        return out


def score_with_retries(
    scorer: Scorer, llm, contexts: list[str], queries: list[Example], retries: int
) -> list[Score | None]:
    """``scorer`` on one chunk, retried ``retries`` times on ``LLMError``; a chunk that still fails is
    scored item by item (with the same retries), and the items that fail alone come back ``None``."""

    def attempt(ctx: list[str], qs: list[Example]) -> list[Score] | None:
        for _ in range(retries + 1):
            try:
                return scorer(llm, ctx, qs)
            except LLMError:
                continue
        return None

    got = attempt(contexts, queries)
    if got is not None:
        return list(got)
    if len(contexts) == 1:
        return [None]
    return [(r[0] if (r := attempt([c], [q])) is not None else None) for c, q in zip(contexts, queries)]
