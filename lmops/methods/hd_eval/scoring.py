"""Per-criterion LLM scores: one score per (sample, criterion), probability-weighted when the backend
gives log-probabilities, parsed from a greedy answer otherwise.

- With ``loglikelihood``: the prompt is scored with each score token (``" 1"`` .. ``" 5"``) as the
  continuation, the log-probabilities are softmaxed over the scale and the expected score is returned
  (G-Eval's probability weighting; HD-Eval's own use of it is unconfirmed, so this is a choice). Only
  the relative probabilities of the score tokens matter, so mass on other tokens drops out.
- Without (the backend raises ``NotImplementedError``), or for a request whose log-probabilities came
  back unusable: :func:`lmops.llm.ask` with greedy generation and :func:`parse_score`; an answer that
  does not parse is retried, then the score is missing (``NaN``), never an error.

All (sample, criterion) requests go in one batched pass, ``chunk_size`` prompts per backend call, so a
:class:`~lmops.llm.CachedLLM` answers a rerun at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...common.progress import progress_bar
from ...llm import LLMError, ask

__all__ = ["CriterionScorer", "ScoreResult", "expected_score", "parse_score", "score_prompt"]

CRITERION_MARK = "Evaluation criterion: "
SAMPLE_MARK = "Sample:\n"


def score_prompt(task: str, criterion: str, description: str, sample: str, low: int = 1, high: int = 5) -> str:
    """The scoring prompt for one sample on one criterion (``criterion`` as displayed, e.g.
    ``"coherence > logic"``); it ends with ``"Score from {low} to {high}:"`` so the next token is the score."""
    about = "" if description.strip() == criterion.split(" > ")[-1].strip() else f"{description}\n"
    return (
        f"{task}\n\n{CRITERION_MARK}{criterion}\n{about}\n{SAMPLE_MARK}{sample}\n\n"
        f"Judge the sample on this criterion only ({low} = worst, {high} = best).\n"
        f"Score from {low} to {high}:"
    )


_SCORE_AFTER_WORD = re.compile(r"score\s*(?:is|of|=|:)?\s*[*\"']*\s*(-?\d+(?:\.\d+)?)", re.I)
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w])")


def parse_score(text: str, low: int = 1, high: int = 5) -> float:
    """The score in a free-text answer: a number right after the word "score" if there is one in range,
    else the first number in ``[low, high]``. Raises ``ValueError`` when there is none."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    for pattern in (_SCORE_AFTER_WORD, _NUMBER):
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if low <= value <= high:
                return value
    raise ValueError(f"no score in [{low}, {high}] in the answer: {text[:80]!r}")


def expected_score(logprobs: Sequence[float], scores: Sequence[float]) -> float:
    """The expected score under the softmax of ``logprobs`` over ``scores`` (renormalized over the
    score tokens only). Raises ``ValueError`` when no log-probability is finite."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.shape != (len(scores),) or not np.isfinite(lp).any():
        raise ValueError(f"logprobs: expected {len(scores)} values with at least one finite, got {list(lp)}")
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    p = np.exp(lp - lp.max())
    return float(p @ np.asarray(scores, dtype=np.float64) / p.sum())


@dataclass
class ScoreResult:
    """Scores of ``n_samples`` samples on ``n_criteria`` criteria.

    Attributes:
        values: float64 ``(n_samples, n_criteria)``; ``NaN`` where the score is missing.
        by_logprob: requests answered by probability weighting.
        by_parsing: requests answered by a parsed generation.
        failures: ``(sample index, criterion index, reason)`` for every missing score.
    """

    values: np.ndarray
    by_logprob: int = 0
    by_parsing: int = 0
    failures: list[tuple[int, int, str]] = field(default_factory=list)

    def missing_per_criterion(self) -> list[int]:
        return [int(k) for k in np.isnan(self.values).sum(axis=0)]


class CriterionScorer:
    """Scores samples on criteria with ``llm`` (see the module docstring).

    Args:
        llm: an :class:`~lmops.llm.LLM`.
        task: the evaluation task, first line of every prompt.
        low, high: the integer score scale.
        use_logprobs: try ``loglikelihood`` first (switched off for good after a ``NotImplementedError``).
        chunk_size: prompts per backend call.
        retries: extra attempts for an unparsable generated answer.
        progress: show a progress bar.
    """

    def __init__(self, llm, task: str, *, low: int = 1, high: int = 5, use_logprobs: bool = True,
                 chunk_size: int = 64, retries: int = 2, progress: bool = True) -> None:
        for method in ("generate", "loglikelihood"):
            if not callable(getattr(llm, method, None)):
                raise TypeError(f"llm: expected an lmops.llm backend with {method}(), got {type(llm).__name__}")
        if not high > low:
            raise ValueError(f"high: expected > low ({low}), got {high}")
        self.llm, self.task, self.low, self.high = llm, task, int(low), int(high)
        self.scores = list(range(self.low, self.high + 1))
        self.continuations = [f" {s}" for s in self.scores]
        self.use_logprobs = use_logprobs
        self.chunk_size, self.retries, self.progress = chunk_size, retries, progress

    def prompt(self, criterion: str, description: str, sample: str) -> str:
        return score_prompt(self.task, criterion, description, sample, self.low, self.high)

    def score(self, samples: Sequence[str], criteria: Sequence[tuple[str, str]]) -> ScoreResult:
        """Score every sample on every ``(criterion display name, description)``."""
        if not all(isinstance(s, str) for s in samples):
            raise TypeError("samples: expected a list of strings")
        cells = [(i, j) for j in range(len(criteria)) for i in range(len(samples))]
        prompts = [self.prompt(criteria[j][0], criteria[j][1], samples[i]) for i, j in cells]
        result = ScoreResult(np.full((len(samples), len(criteria)), np.nan))
        if not cells:
            return result
        bar = progress_bar(len(cells), desc="hd-eval scoring", unit="prompt", disable=not self.progress)
        try:
            todo = self._by_logprob(prompts, cells, result, bar) if self.use_logprobs else list(range(len(cells)))
            self._by_parsing(prompts, cells, todo, result, bar)
        finally:
            bar.close()
        return result

    def _by_logprob(self, prompts: list[str], cells: list[tuple[int, int]], result: ScoreResult, bar) -> list[int]:
        """Fill what log-probabilities can; returns the request indices left for parsing."""
        k = len(self.continuations)
        left: list[int] = []
        for start in range(0, len(prompts), self.chunk_size):
            idx = list(range(start, min(start + self.chunk_size, len(prompts))))
            if not self.use_logprobs:
                left.extend(idx)
                continue
            contexts = [prompts[r] for r in idx for _ in range(k)]
            try:
                got = self.llm.loglikelihood(contexts, self.continuations * len(idx))
            except NotImplementedError:
                self.use_logprobs = False  # the backend has none: generate from now on
                left.extend(idx)
                continue
            except LLMError:
                left.extend(idx)
                continue
            for n, r in enumerate(idx):
                try:
                    value = expected_score([lp for lp, _ in got[n * k : (n + 1) * k]], self.scores)
                except (ValueError, TypeError, IndexError):
                    left.append(r)
                    continue
                i, j = cells[r]
                result.values[i, j] = value
                result.by_logprob += 1
                bar.update(1)
        return left

    def _by_parsing(self, prompts: list[str], cells: list[tuple[int, int]], todo: list[int],
                    result: ScoreResult, bar) -> None:
        def parse(text: str) -> float:
            return parse_score(text, self.low, self.high)

        for start in range(0, len(todo), self.chunk_size):
            idx = todo[start : start + self.chunk_size]
            answer = ask(self.llm, [prompts[r] for r in idx], parse, retries=self.retries, max_new_tokens=16)
            for r, value in zip(idx, answer.values):
                i, j = cells[r]
                if value is not None and math.isfinite(value):
                    result.values[i, j] = value
                    result.by_parsing += 1
            for pos, reason in answer.failures:
                i, j = cells[idx[pos]]
                result.failures.append((i, j, reason))
            bar.update(len(idx))
