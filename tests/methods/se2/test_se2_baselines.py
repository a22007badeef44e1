"""Se2's baselines: random selection drawn per query, BM25 retrieving the lexically closest examples."""

import pytest

from lmops.methods.se2 import Example, Pool, bm25_selection, random_selection


def _pool(n=30):
    return Pool([Example(i, f"item number {i}", options=["a", "b"], gold=0) for i in range(n)])


def test_random_baseline_differs_per_query_and_excludes_the_query():
    pool = _pool()
    same = [Example(100 + i, "one and the same question", options=["a", "b"], gold=0) for i in range(10)]
    sel = random_selection(pool, same, shots=3, seed=0)
    assert len({tuple(s) for s in sel}) >= 9  # the official reader gave every input the same examples
    assert all(len(s) == 3 and len(set(s)) == 3 and set(s) <= set(pool.ids) for s in sel)
    assert random_selection(pool, same, shots=3, seed=0) == sel  # seeded
    assert random_selection(pool, same, shots=3, seed=1) != sel
    members = random_selection(pool, pool.examples, shots=29)
    assert all(q.id not in s for q, s in zip(pool.examples, members))


def test_bm25_retrieves_the_lexically_closest_with_the_best_next_to_the_query():
    pool = Pool([
        Example(0, "the weather is cold today", options=["a", "b"], gold=0),
        Example(1, "purple elephants dance at midnight", options=["a", "b"], gold=0),
        Example(2, "purple elephants sleep", options=["a", "b"], gold=0),
        Example(3, "stock markets fell sharply", options=["a", "b"], gold=0),
        Example(4, "elephants are large", options=["a", "b"], gold=0),
        Example(5, "a quiet morning", options=["a", "b"], gold=0),
    ] + [Example(6 + i, f"filler sentence {i}", options=["a", "b"], gold=0) for i in range(6)])
    q = Example(10, "Purple elephants dance", options=["a", "b"], gold=0)
    [sel] = bm25_selection(pool, [q], shots=3)
    assert sel[-1] == 1  # shares all three words: the best match sits next to the query
    assert sel[-2] == 2  # shares two
    assert sel[0] == 4  # shares one (a word rare enough for a positive BM25 idf)
    [member] = bm25_selection(pool, [pool[1]], shots=2)
    assert 1 not in member and member[-1] == 2


def test_baselines_check_shots():
    with pytest.raises(ValueError, match="shots"):
        random_selection(_pool(), [], shots=0)
    with pytest.raises(ValueError, match="shots"):
        bm25_selection(_pool(), [], shots=-1)
