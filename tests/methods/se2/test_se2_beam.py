"""Se2 beam search and prompt building: no repeated example, cumulative scores, prepending, pool ids
carried to the prompt (an example with a newline stays one example), trimming from the far end, and the
no-fit case."""

import itertools

import pytest
import torch

from lmops.methods.se2 import (
    Beam,
    Example,
    Pool,
    SelectConfig,
    Template,
    beam_search,
    build_prompt,
    query_text,
    select,
)

T = Template()


def _pool(n=8):
    return Pool([Example(i, f"ex{i}", options=["a", "b"], gold=0) for i in range(n)])


class ConstantQuery:
    """Every query text gets the same vector; records the texts."""

    def __init__(self, dim):
        self.vec = torch.zeros(dim)
        self.vec[0] = 1.0
        self.texts = []

    def __call__(self, texts):
        self.texts.extend(texts)
        return self.vec.expand(len(texts), -1).clone()


def test_no_repeats_cumulative_scores_and_prepend_order():
    pool = _pool(6)
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    vecs = torch.zeros(6, 3)
    vecs[:, 0] = scores
    enc = ConstantQuery(3)
    q = Example(99, "the query", options=["a", "b"], gold=0)
    [beams] = beam_search(enc, vecs, pool, [q], template=T, beam_size=3, shots=3)
    assert len(beams) == 3
    best = beams[0]
    assert best.ids == (2, 1, 0)  # the first pick (id 0) is last: next to the query
    assert best.score == pytest.approx(12.0)
    for b in beams:
        assert len(b.ids) == 3 and len(set(b.ids)) == 3  # no repeated example
        assert b.score == pytest.approx(sum(scores[i].item() for i in b.ids))  # cumulative
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    # at step 1 the best beam (0,) was encoded as its demonstration then the query, as in training
    assert query_text(pool, T, (0,), q) == "ex0 a \n the query" and "ex0 a \n the query" in enc.texts


def test_scores_accumulate_with_step_dependent_query_vectors():
    g = torch.Generator().manual_seed(0)
    pool = _pool(7)
    vecs = torch.randn(7, 4, generator=g)
    step_vecs = torch.randn(4, 4, generator=g)

    def enc(texts):  # the query vector depends on how many examples precede the question
        return torch.stack([step_vecs[t.count(" \n ")] for t in texts])

    q = Example(50, "q", options=["a", "b"], gold=0)
    [beams] = beam_search(enc, vecs, pool, [q], beam_size=3, shots=3)

    def seq_score(ids):  # ids in prompt order: the last one was picked at step 0
        return sum(float(vecs[i] @ step_vecs[j]) for j, i in enumerate(reversed(ids)))

    for b in beams:
        assert b.score == pytest.approx(seq_score(b.ids), rel=1e-5)
        assert len(set(b.ids)) == 3
    # width 3 finds a sequence at least as good as greedy (width 1)
    [greedy] = beam_search(enc, vecs, pool, [q], beam_size=1, shots=3)
    assert beams[0].score >= greedy[0].score - 1e-6
    best = max(seq_score(p) for p in itertools.permutations(range(7), 3))
    assert beams[0].score <= best + 1e-5


def test_query_in_the_pool_is_never_selected_but_an_id_collision_is_not_excluded():
    pool = _pool(5)
    vecs = torch.zeros(5, 2)
    vecs[:, 0] = torch.tensor([9.0, 1.0, 2.0, 3.0, 4.0])
    enc = ConstantQuery(2)
    member = pool[0]
    stranger = Example(0, "another question with id 0", options=["a", "b"], gold=0)
    b_member, b_stranger = beam_search(enc, vecs, pool, [member, stranger], beam_size=2, shots=2)
    assert all(0 not in b.ids for b in b_member)
    assert b_stranger[0].ids[-1] == 0
    [b_ex] = beam_search(enc, vecs, pool, [stranger], beam_size=2, shots=2, exclude=[{0, 4}])
    assert all(not {0, 4} & set(b.ids) for b in b_ex)


def test_pool_smaller_than_shots_gives_shorter_beams():
    pool = _pool(2)
    [beams] = beam_search(ConstantQuery(2), torch.ones(2, 2), pool, [Example(9, "q", options=["a", "b"], gold=0)],
                          beam_size=3, shots=3)
    assert all(len(b.ids) == 2 for b in beams)


class FakeRetriever:
    template = T

    def __init__(self, vecs):
        self.vecs = vecs

    def encode_contexts(self, texts, batch_size=64):
        return self.vecs

    def encode_queries(self, texts, batch_size=64):
        return torch.ones(len(texts), self.vecs.shape[1])


def test_pool_ids_carry_through_to_the_prompt_even_with_newlines():
    pool = Pool([Example(0, "line one\nline two\nline three", options=["a", "b"], gold=0),
                 Example(1, "plain", options=["a", "b"], gold=1),
                 Example(2, "also\nsplit", options=["a", "b"], gold=0),
                 Example(3, "low", options=["a", "b"], gold=0)])
    vecs = torch.tensor([[3.0], [2.0], [1.0], [0.0]])
    q = Example(10, "the query", options=["a", "b"], gold=0)
    [sel] = select(FakeRetriever(vecs), pool, [q], SelectConfig(), progress=False)
    assert sel.beam.ids == (2, 1, 0) and sel.prompt.ids == [2, 1, 0]
    assert sel.prompt.text == "also\nsplit a \n plain b \n line one\nline two\nline three a \n the query"
    # the official reader would split this text on "\n" into 5 pieces; the ids keep 3 examples
    assert len(sel.prompt.text.split("\n")) - 1 != len(sel.prompt.ids)
    d = sel.to_dict()
    assert d["ids"] == [2, 1, 0] and d["query_id"] == 10 and len(d["other_beams"]) == 2


def test_trimming_drops_the_farthest_examples_first():
    pool = _pool(4)
    q = Example(9, "query", options=["yes", "no"], gold=0)
    ids = [3, 1, 2]  # prompt order: 2 is next to the query
    full = build_prompt(pool, ids, q)
    assert full.text == "ex3 a \n ex1 a \n ex2 a \n query" and full.dropped == 0
    reserve = len(" yes")  # the longest option's rendering
    fits_two = len("ex1 a \n ex2 a \n query") + reserve
    two = build_prompt(pool, ids, q, max_tokens=fits_two)
    assert two.ids == [1, 2] and two.text == "ex1 a \n ex2 a \n query" and two.dropped == 1
    one = build_prompt(pool, ids, q, max_tokens=fits_two - 1)
    assert one.ids == [2] and one.dropped == 2
    all_fit = build_prompt(pool, ids, q, max_tokens=len(full.text) + reserve)
    assert all_fit.ids == ids


def test_no_example_fits_means_no_example():
    pool = _pool(4)
    q = Example(9, "a rather long query text", options=["yes", "no"], gold=0)
    p = build_prompt(pool, [0, 1, 2], q, max_tokens=len(q.question) + 5)
    assert p.ids == [] and p.text == q.question and p.dropped == 3
    tiny = build_prompt(pool, [0, 1, 2], q, max_tokens=1)  # even the bare query is too long: still no example
    assert tiny.ids == [] and tiny.text == q.question


def test_trimming_counts_with_a_length_function():
    pool = _pool(3)
    q = Example(9, "query", options=["x", "y"], gold=0)
    words = lambda s: len(s.split())
    # "ex1 a \n ex2 a \n query" = 5 words (+1 reserved for " x"): budget 6 keeps both, 5 keeps one, 3 none
    assert build_prompt(pool, [1, 2], q, max_tokens=6, length_fn=words).ids == [1, 2]
    assert build_prompt(pool, [1, 2], q, max_tokens=5, length_fn=words).ids == [2]
    assert build_prompt(pool, [1, 2], q, max_tokens=3, length_fn=words).ids == []


def test_beam_search_checks_its_arguments():
    pool = _pool(3)
    with pytest.raises(ValueError, match="pool_vectors"):
        beam_search(ConstantQuery(2), torch.zeros(2, 2), pool, [])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(ConstantQuery(2), torch.zeros(3, 2), pool, [], beam_size=0)
    assert Beam((1, 2), 0.5).ids == (1, 2)
