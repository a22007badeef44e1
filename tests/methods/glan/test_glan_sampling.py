"""GLAN's concept-combination samplers: the exact combination spaces of strategies (a) and (b), that
every combination is reachable, that draws are uniform over the space, and the mixing."""

import itertools
import math
import random
from collections import Counter

import pytest
from scipy.stats import chisquare

from lmops.methods.glan import (
    MixedSampler,
    basic_combinations,
    count_basic,
    count_harder,
    harder_combinations,
    sample_basic,
    sample_harder,
)


@pytest.mark.parametrize("m, expected", [(1, 1), (2, 3), (3, 7), (4, 15), (5, 31), (6, 62), (7, 119)])
def test_basic_space_is_sum_of_binomials(m, expected):
    combos = list(basic_combinations(m))
    assert len(combos) == len(set(combos)) == count_basic(m) == expected
    assert expected == sum(math.comb(m, i) for i in range(1, 6))
    assert all(1 <= len(c) <= 5 and list(c) == sorted(set(c)) and max(c) < m for c in combos)
    # every k-subset for k in 1..5 is there
    for k in range(1, min(m, 5) + 1):
        assert {c for c in combos if len(c) == k} == set(itertools.combinations(range(m), k))


# by hand, e.g. (2, 4): k=2: 15-1-6=8, k=3: 20-0-4=16, k=4: 15-0-1=14, k=5: 6-0-0=6
@pytest.mark.parametrize("m1, m2, expected", [(1, 1, 1), (2, 2, 9), (1, 3, 7), (3, 3, 48), (2, 4, 44)])
def test_harder_space_excludes_single_session_combinations(m1, m2, expected):
    combos = list(harder_combinations(m1, m2))
    assert len(combos) == len(set(combos)) == count_harder(m1, m2) == expected
    union = [(0, i) for i in range(m1)] + [(1, j) for j in range(m2)]
    brute = [c for k in range(2, 6) for c in itertools.combinations(union, k) if {s for s, _ in c} == {0, 1}]
    assert set(combos) == set(brute)
    assert all({s for s, _ in c} == {0, 1} and 2 <= len(c) <= 5 for c in combos)


def test_counts_follow_max_concepts():
    assert count_basic(6, max_concepts=2) == 6 + 15
    assert count_harder(3, 3, max_concepts=3) == (15 - 3 - 3) + (20 - 1 - 1)
    with pytest.raises(ValueError, match="max_concepts"):
        count_harder(2, 2, max_concepts=1)


def test_every_basic_combination_is_reachable_and_uniform():
    rng = random.Random(0)
    space = set(basic_combinations(4))
    draws = Counter(sample_basic(4, rng) for _ in range(4500))
    assert set(draws) == space  # all C(4,k) combos, k = 1..4, reached
    assert chisquare([draws[c] for c in sorted(space)]).pvalue > 1e-3


def test_every_harder_combination_is_reachable_uniform_and_spans_both_sessions():
    rng = random.Random(1)
    space = set(harder_combinations(2, 3))
    draws = Counter(sample_harder(2, 3, rng) for _ in range(6300))
    assert set(draws) == space and len(space) == 21
    assert all({s for s, _ in c} == {0, 1} for c in draws)
    assert chisquare([draws[c] for c in sorted(space)]).pvalue > 1e-3


def test_uniform_size_draws_the_number_of_concepts_uniformly():
    rng = random.Random(2)
    sizes = Counter(len(sample_basic(6, rng, uniform_size=True)) for _ in range(5000))
    assert set(sizes) == {1, 2, 3, 4, 5}
    assert chisquare([sizes[k] for k in range(1, 6)]).pvalue > 1e-3
    # uniform over combinations instead: sizes follow C(6, k)
    sizes = Counter(len(sample_basic(6, rng)) for _ in range(5000))
    assert sizes[3] > 2.5 * sizes[1]


def test_sampling_rejects_sessions_without_concepts():
    with pytest.raises(ValueError, match="at least one key concept"):
        sample_basic(0, random.Random(0))
    with pytest.raises(ValueError, match="each session"):
        sample_harder(3, 0, random.Random(0))


def test_mixed_sampler_strategies():
    counts = [3, 0, 4, 2, 5]
    rng = random.Random(3)
    sampler = MixedSampler(harder_fraction=0.3)
    got = [sampler.sample(counts, rng) for _ in range(3000)]
    harder = [s for s in got if s.strategy == "harder"]
    basic = [s for s in got if s.strategy == "basic"]
    assert abs(len(harder) / len(got) - 0.3) < 0.04
    for s in harder:
        assert len(s.sessions) == 2 and s.sessions[0] < s.sessions[1] and 1 not in s.sessions
        assert {si for si, _ in s.concepts} == set(s.sessions)  # always spans both sessions
        assert 2 <= len(s.concepts) <= 5 and all(c < counts[si] for si, c in s.concepts)
    for s in basic:
        assert len(s.sessions) == 1 and s.sessions[0] != 1
        assert {si for si, _ in s.concepts} == set(s.sessions) and 1 <= len(s.concepts) <= 5
    assert {s.sessions for s in harder} == {p for p in itertools.combinations([0, 2, 3, 4], 2)}
    # one usable session: strategy (a) only; all harder when the fraction is 1
    assert {MixedSampler(1.0).sample([0, 3], rng).strategy for _ in range(50)} == {"basic"}
    assert {MixedSampler(1.0).sample([2, 3], rng).strategy for _ in range(50)} == {"harder"}
    assert {MixedSampler(0.0).sample([2, 3], rng).strategy for _ in range(50)} == {"basic"}
    with pytest.raises(ValueError, match="no session"):
        sampler.sample([0, 0], rng)
