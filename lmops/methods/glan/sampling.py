"""GLAN's two ways of choosing what a homework question is about (paper section 2.4).

- **(a) basic**: one class session and ``k`` of its ``m`` key concepts, ``1 <= k <= 5``: the space has
  ``sum_{k=1..5} C(m, k)`` combinations (:func:`count_basic`, :func:`basic_combinations`).
- **(b) harder**: two class sessions and ``k`` concepts drawn from both, ``2 <= k <= 5``, excluding the
  combinations that come from one session only: ``sum_{k=2..5} C(m1+m2, k) - C(m1, k) - C(m2, k)``
  (:func:`count_harder`, :func:`harder_combinations`).

:class:`MixedSampler` mixes the two with a probability of (b) (the paper gives no ratio: a choice) and
draws uniformly over the combination space (or, with ``concept_sampling="size"``, the number of concepts
first: a choice too). Any object with ``sample(sessions, rng) -> QuestionSample`` can replace it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MixedSampler",
    "QuestionSample",
    "QuestionSampler",
    "basic_combinations",
    "count_basic",
    "count_harder",
    "harder_combinations",
    "sample_basic",
    "sample_harder",
]

BASIC, HARDER = "basic", "harder"


@dataclass(frozen=True)
class QuestionSample:
    """What one question is about.

    Attributes:
        strategy: ``"basic"`` (a) or ``"harder"`` (b).
        sessions: indices into the syllabus's sessions, ascending (1 or 2 of them).
        concepts: ``(session index, concept index)`` pairs, sorted.
    """

    strategy: str
    sessions: tuple[int, ...]
    concepts: tuple[tuple[int, int], ...]


def _check_m(name: str, m: object) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {m!r}")
    return m


def _check_range(lo: int, hi: int) -> None:
    if isinstance(hi, bool) or not isinstance(hi, int) or hi < lo:
        raise ValueError(f"max_concepts: expected an int >= {lo}, got {hi!r}")


def count_basic(m: int, max_concepts: int = 5) -> int:
    """``sum_{k=1..max_concepts} C(m, k)``: strategy (a)'s combinations for a session of ``m`` concepts."""
    _check_m("m", m)
    _check_range(1, max_concepts)
    return sum(math.comb(m, k) for k in range(1, max_concepts + 1))


def count_harder(m1: int, m2: int, max_concepts: int = 5, min_concepts: int = 2) -> int:
    """Strategy (b)'s combinations for two sessions of ``m1`` and ``m2`` concepts:
    ``sum_{k=min..max} C(m1+m2, k) - C(m1, k) - C(m2, k)`` (each must touch both sessions)."""
    _check_m("m1", m1)
    _check_m("m2", m2)
    _check_range(min_concepts, max_concepts)
    return sum(math.comb(m1 + m2, k) - math.comb(m1, k) - math.comb(m2, k)
               for k in range(min_concepts, max_concepts + 1))


def basic_combinations(m: int, max_concepts: int = 5) -> Iterator[tuple[int, ...]]:
    """Every strategy-(a) concept combination of one session (concept indices, ascending)."""
    _check_m("m", m)
    _check_range(1, max_concepts)
    for k in range(1, min(m, max_concepts) + 1):
        yield from itertools.combinations(range(m), k)


def harder_combinations(m1: int, m2: int, max_concepts: int = 5, min_concepts: int = 2
                        ) -> Iterator[tuple[tuple[int, int], ...]]:
    """Every strategy-(b) combination: ``((session 0|1, concept index), ...)`` with both sessions present."""
    _check_m("m1", m1)
    _check_m("m2", m2)
    _check_range(min_concepts, max_concepts)
    union = [(0, i) for i in range(m1)] + [(1, j) for j in range(m2)]
    for k in range(min_concepts, min(len(union), max_concepts) + 1):
        for combo in itertools.combinations(union, k):
            if combo[0][0] != combo[-1][0]:  # sorted: first and last differ <=> both sessions present
                yield combo


def _weighted_k(rng: random.Random, weights: list[tuple[int, int]], uniform_size: bool) -> int:
    ks = [k for k, w in weights if w > 0]
    if uniform_size:
        return rng.choice(ks)
    return rng.choices([k for k, _ in weights], weights=[w for _, w in weights])[0]


def sample_basic(m: int, rng: random.Random, *, max_concepts: int = 5, uniform_size: bool = False
                 ) -> tuple[int, ...]:
    """One strategy-(a) combination of a session with ``m >= 1`` concepts: uniform over all
    :func:`basic_combinations` (or, with ``uniform_size``, the size uniform in ``1..min(m, max)`` first)."""
    if _check_m("m", m) < 1:
        raise ValueError("m: a session needs at least one key concept")
    weights = [(k, math.comb(m, k)) for k in range(1, max_concepts + 1)]
    k = _weighted_k(rng, weights, uniform_size)
    return tuple(sorted(rng.sample(range(m), k)))


def sample_harder(m1: int, m2: int, rng: random.Random, *, max_concepts: int = 5, uniform_size: bool = False
                  ) -> tuple[tuple[int, int], ...]:
    """One strategy-(b) combination of two sessions (``m1, m2 >= 1``): uniform over all
    :func:`harder_combinations` (or, with ``uniform_size``, the size uniform in ``2..min(m1+m2, max)``
    first, then uniform among the combinations of that size)."""
    if _check_m("m1", m1) < 1 or _check_m("m2", m2) < 1:
        raise ValueError("m1, m2: each session needs at least one key concept")
    _check_range(2, max_concepts)
    weights = [(k, math.comb(m1 + m2, k) - math.comb(m1, k) - math.comb(m2, k)) for k in range(2, max_concepts + 1)]
    k = _weighted_k(rng, weights, uniform_size)
    # j concepts from the first session and k - j from the second, 1 <= j <= k - 1, weighted by how many
    # combinations each split has: exactly uniform over the valid k-subsets
    splits = [(j, math.comb(m1, j) * math.comb(m2, k - j)) for j in range(1, k)]
    j = rng.choices([j for j, _ in splits], weights=[w for _, w in splits])[0]
    first = [(0, i) for i in sorted(rng.sample(range(m1), j))]
    return tuple(first + [(1, i) for i in sorted(rng.sample(range(m2), k - j))])


class QuestionSampler(Protocol):
    """Chooses the sessions and concepts of one question from a syllabus's per-session concept counts."""

    def sample(self, concept_counts: Sequence[int], rng: random.Random) -> QuestionSample: ...


@dataclass(frozen=True)
class MixedSampler:
    """Strategy (b) with probability ``harder_fraction`` (when the syllabus has two sessions with
    concepts), else (a). Sessions are uniform among those with at least one concept; (b)'s two sessions
    are any two distinct ones (the paper does not say they must be adjacent: a choice)."""

    harder_fraction: float = 0.5
    max_concepts: int = 5
    uniform_size: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.harder_fraction <= 1:
            raise ValueError(f"harder_fraction: expected a number in [0, 1], got {self.harder_fraction!r}")
        _check_range(2 if self.harder_fraction > 0 else 1, self.max_concepts)

    def sample(self, concept_counts: Sequence[int], rng: random.Random) -> QuestionSample:
        usable = [i for i, m in enumerate(concept_counts) if m > 0]
        if not usable:
            raise ValueError("concept_counts: no session has a key concept")
        if len(usable) >= 2 and rng.random() < self.harder_fraction:
            a, b = sorted(rng.sample(usable, 2))
            combo = sample_harder(concept_counts[a], concept_counts[b], rng, max_concepts=self.max_concepts,
                                  uniform_size=self.uniform_size)
            pick = (a, b)
            return QuestionSample(HARDER, pick, tuple((pick[s], c) for s, c in combo))
        s = rng.choice(usable)
        combo = sample_basic(concept_counts[s], rng, max_concepts=self.max_concepts, uniform_size=self.uniform_size)
        return QuestionSample(BASIC, (s,), tuple((s, c) for c in combo))
