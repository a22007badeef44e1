"""UniqueQuestionSampler: each question at most once per batch, every item once per epoch, seeded."""

import random
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from lmops.methods.reason_distill import UniqueQuestionSampler


def _check_epoch(qids, batches, batch_size):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(qids)))  # every item exactly once
    for b in batches:
        assert 1 <= len(b) <= batch_size
        questions = [qids[i] for i in b]
        assert len(set(questions)) == len(questions), f"a question twice in {questions}"


def test_many_rationales_per_question():
    # q0 has 12 rationales, the others 1-3: q0 must be spread over 12 batches
    qids = ["q0"] * 12 + ["q1"] * 3 + ["q2"] * 2 + ["q3"] + ["q4"] * 3 + ["q5"] * 2
    random.Random(0).shuffle(qids)
    sampler = UniqueQuestionSampler(qids, batch_size=4, seed=7)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        _check_epoch(qids, batches, 4)
        assert len(batches) == 12 == len(sampler)  # the fewest possible: the largest question's count


@pytest.mark.parametrize("seed", range(6))
def test_random_layouts(seed):
    rng = random.Random(seed)
    n_questions = rng.randint(1, 30)
    qids = [f"q{rng.randrange(n_questions)}" for _ in range(rng.randint(1, 120))]
    batch_size = rng.randint(1, 9)
    sampler = UniqueQuestionSampler(qids, batch_size=batch_size, seed=seed)
    batches = sampler.batches(0)
    _check_epoch(qids, batches, batch_size)
    counts = Counter(qids)
    assert len(batches) == len(sampler) == max(max(counts.values()), -(-len(qids) // batch_size))


def test_seeded_and_reshuffled_per_epoch():
    qids = [f"q{i % 10}" for i in range(40)]
    a = UniqueQuestionSampler(qids, batch_size=5, seed=1)
    b = UniqueQuestionSampler(qids, batch_size=5, seed=1)
    c = UniqueQuestionSampler(qids, batch_size=5, seed=2)
    assert a.batches(0) == b.batches(0)  # a resumed run rebuilds the same batches
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != c.batches(0)
    # iterating advances the epoch, as the official sampler does
    first, second = list(a), list(a)
    assert first == b.batches(0) and second == b.batches(1)


def test_with_a_dataloader():
    qids = ["a", "a", "b", "c", "c", "c"]
    loader = DataLoader(list(range(6)), batch_sampler=UniqueQuestionSampler(qids, batch_size=2, seed=0),
                        collate_fn=list)
    batches = list(loader)
    _check_epoch(qids, batches, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        UniqueQuestionSampler(["a"], batch_size=0)
    with pytest.raises(ValueError, match="question_ids"):
        UniqueQuestionSampler([], batch_size=2)
    with pytest.raises(TypeError, match="seed"):
        UniqueQuestionSampler(["a"], batch_size=2, seed="x")
