"""Se2 sequential sampling: p(rank) ∝ e^(-r), the official per-record reseeding, exclusions, the per-step
90/10 split and the merge by query id."""

import random

import numpy as np
import pytest
from scipy import stats

from lmops.methods.se2 import (
    Candidate,
    Example,
    Pool,
    ScoredRecord,
    merge_steps,
    next_step_items,
    rank_probabilities,
    sample_rank,
    split_records,
    step1_items,
)


def test_rank_probabilities_are_normalised_exponential():
    p = rank_probabilities(6)
    expected = np.exp(-np.arange(6.0)) / np.exp(-np.arange(6.0)).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert p[0] / p[1] == pytest.approx(np.e)
    with pytest.raises(ValueError, match="n"):
        rank_probabilities(0)


def test_sample_rank_is_the_official_seeded_numpy_draw():
    n = 10
    p = rank_probabilities(n)
    for seed in (0, 1, 7, 123):
        np.random.seed(seed)  # what find_random_step2.py does for record `seed`
        official = int(np.random.choice(list(range(n)), size=1, replace=False, p=p)[0])
        assert sample_rank(n, seed) == official


def test_sampled_ranks_follow_exp_minus_r_chi_square():
    n, draws = 8, 6000
    counts = np.bincount([sample_rank(n, seed) for seed in range(draws)], minlength=n)
    expected = rank_probabilities(n) * draws
    # ranks >= 4 have expected counts < 5 each: merge the tail into one bin
    obs = np.append(counts[:4], counts[4:].sum())
    exp = np.append(expected[:4], expected[4:].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # and it is not uniform: rank 0 takes about 63%
    assert 0.60 < counts[0] / draws < 0.67


def _pool(n):
    return Pool([Example(i, f"q{i}", options=["a", "b"], gold=0) for i in range(n)])


def test_step1_excludes_the_query_and_reseeds_per_record():
    pool = _pool(30)
    items = step1_items(pool, pool.examples, 10)
    for i, (qid, chosen, cands) in enumerate(items):
        assert qid == i and chosen == [] and len(cands) == 10 and qid not in cands and len(set(cands)) == 10
        random.seed(i)  # the official find_random_step1.py
        assert cands == random.sample([idx for idx in range(30) if idx != i], k=10)
    # a separate query whose id collides with a pool id but is another example does not bar that pool id
    other = Example(5, "not the pool's q5", options=["a", "b"], gold=0)
    [(_, _, cands)] = step1_items(pool, [other], 29)
    assert 5 in cands


def _records(pool, n_ctx=6):
    return [ScoredRecord(q.id, [], [Candidate((q.id + k + 1) % len(pool), 0.1 * k, 1.0) for k in range(n_ctx)])
            for q in pool.examples]


def test_next_step_prepends_a_ranked_pick_and_excludes_query_and_chosen():
    pool = _pool(20)
    prev = _records(pool)
    for r in prev:
        r.chosen = [(r.query_id + 10) % 20]  # a step-2 record with one chosen example
    items = next_step_items(prev, pool, {q.id: q for q in pool.examples}, 8)
    assert len(items) == len(prev)
    for i, ((qid, chosen, cands), rec) in enumerate(zip(items, prev)):
        rank = sample_rank(len(rec.ctxs), i)
        assert chosen == [rec.ctxs[rank].id] + rec.chosen  # prepended: the new pick is farthest from x
        assert qid not in cands and not set(chosen) & set(cands) and len(cands) == 8
        avail = [p for p in pool.ids if p != qid and p not in chosen]
        assert cands == random.Random(i).sample(avail, k=8)


def test_split_is_seeded_90_10():
    pool = _pool(50)
    recs = _records(pool)
    train, valid = split_records(recs)
    assert len(train) == 45 and len(valid) == 5
    shuffled = list(recs)
    random.Random(42).shuffle(shuffled)
    assert train == shuffled[:45] and valid == shuffled[45:]


def test_merge_sends_later_steps_by_step1_query_membership():
    pool = _pool(40)
    s1 = split_records(_records(pool))
    s2_recs = [ScoredRecord(r.query_id, [1], r.ctxs, step=2) for r in _records(pool)]
    s3_recs = [ScoredRecord(r.query_id, [2, 1], r.ctxs, step=3) for r in _records(pool)]
    train, valid = merge_steps([s1, split_records(s2_recs), split_records(s3_recs)])
    train_q = {r.query_id for r in s1[0]}
    assert len(train) + len(valid) == 3 * 40
    assert {r.query_id for r in train} == train_q
    assert not {r.query_id for r in train} & {r.query_id for r in valid}  # no query in both
    assert sorted(r.step for r in train).count(3) == len(train_q)
