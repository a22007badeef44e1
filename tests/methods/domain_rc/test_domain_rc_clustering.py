"""Algorithm 1 on planted embeddings (groups, limits, the similarity stop), against a reference
implementation of the documented rules, through every index; and the embeddings themselves."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from lmops.methods.domain_rc import (
    ClusterConfig,
    ClusterTemplate,
    DocumentQA,
    ExactIndex,
    QAPair,
    cluster_documents,
    document_lengths,
    embed_texts,
    length_based_clustering,
    mean_pool,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_groups(sizes: list[int], dim: int = 16, noise: float = 0.02, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Groups of near-identical unit vectors along orthogonal axes (cosine ~1 within, ~0 across)."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for k, size in enumerate(sizes):
        base = torch.zeros(dim)
        base[k] = 1.0
        for _ in range(size):
            rows.append(base + noise * torch.randn(dim, generator=g))
            labels.append(k)
    return torch.stack(rows), labels


def as_sets(clusters) -> set[frozenset[int]]:
    return {frozenset(int(i) for i in c.doc_ids) for c in clusters}


def test_clusters_equal_the_planted_groups():
    emb, labels = planted_groups([4, 3, 5, 1])
    clusters, report = length_based_clustering(emb, [10] * len(labels), l_max=1000, d_max=10)
    groups = {frozenset(i for i, l in enumerate(labels) if l == k) for k in set(labels)}
    assert as_sets(clusters) == groups
    assert report.clusters == 4 and report.singletons == 1 and report.documents == 13
    # each stopped at the next group's first document (similarity ~0) or when nothing was left
    assert set(report.stops) <= {"similarity", "exhausted"}
    assert all(c.length == 10 * len(c.doc_ids) for c in clusters)


@pytest.mark.parametrize("l_max, d_max, expected_sizes", [
    (30, 10, [3, 3]),        # length: 3 documents of 10 tokens fill 30 exactly (<= l_max)
    (29, 10, [2, 2, 2]),     # 3 would be 30 > 29
    (1000, 2, [2, 2, 2]),    # count
    (1000, 4, [4, 2]),
    (1000, 1, [1] * 6),
])
def test_l_max_and_d_max_split_a_group_exactly(l_max, d_max, expected_sizes):
    emb, _ = planted_groups([6])
    clusters, report = length_based_clustering(emb, [10] * 6, l_max=l_max, d_max=d_max, seed=3)
    assert sorted((len(c.doc_ids) for c in clusters), reverse=True) == expected_sizes
    assert sorted(i for c in clusters for i in map(int, c.doc_ids)) == list(range(6))  # each document once
    assert all(c.length <= l_max for c in clusters)
    reason = "l_max" if l_max < 60 else "d_max"
    assert report.stops.get(reason, 0) >= 1


def two_groups_at_cosine(cos: float, size: int = 3) -> torch.Tensor:
    """Two groups of identical-up-to-tiny-noise vectors whose directions have cosine ``cos``."""
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([cos, math.sqrt(1 - cos**2), 0.0])
    g = torch.Generator().manual_seed(1)
    rows = [v + 1e-4 * torch.randn(3, generator=g) for v in [a] * size + [b] * size]
    return torch.stack(rows)


@pytest.mark.parametrize("threshold, merged", [(0.7, False), (0.66, False), (0.64, True), (0.0, True)])
def test_similarity_threshold_stops_growth(threshold, merged):
    emb = two_groups_at_cosine(0.65)
    clusters, report = length_based_clustering(emb, [1] * 6, l_max=100, d_max=10, threshold=threshold)
    if merged:
        assert as_sets(clusters) == {frozenset(range(6))}
    else:
        assert as_sets(clusters) == {frozenset(range(3)), frozenset(range(3, 6))}
        assert report.stops.get("similarity", 0) >= 1


def test_a_document_longer_than_l_max_is_its_own_reported_cluster():
    emb, _ = planted_groups([4])
    lengths = [10, 500, 10, 10]
    clusters, report = length_based_clustering(emb, lengths, l_max=100, d_max=10)
    assert as_sets(clusters) == {frozenset({0, 2, 3}), frozenset({1})}
    over = [c for c in clusters if c.overlong]
    assert len(over) == 1 and over[0].doc_ids == ["1"] and over[0].length == 500 and over[0].stop == "overlong"
    assert report.overlong == [1]


def test_empty_input_and_bad_arguments():
    clusters, report = length_based_clustering(torch.zeros(0, 8), [], l_max=10, d_max=2)
    assert clusters == [] and report.clusters == 0
    emb, _ = planted_groups([3])
    with pytest.raises(ValueError, match="lengths"):
        length_based_clustering(emb, [1, 2], l_max=10, d_max=2)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        length_based_clustering(emb, [1, -2, 3], l_max=10, d_max=2)
    with pytest.raises(ValueError, match="l_max"):
        length_based_clustering(emb, [1, 2, 3], l_max=0, d_max=2)
    with pytest.raises(ValueError, match="anchor"):
        length_based_clustering(emb, [1, 2, 3], l_max=9, d_max=2, anchor="last")
    with pytest.raises(ValueError, match="NaN"):
        ExactIndex(torch.tensor([[float("nan"), 1.0]]))


def reference_clustering(emb: torch.Tensor, lengths, l_max, d_max, threshold, seed):
    """The documented rules written plainly: O(n^2), seed anchor."""
    emb = torch.nn.functional.normalize(emb, dim=-1)
    n = len(lengths)
    over = [i for i in range(n) if lengths[i] > l_max]
    order = [i for i in range(n) if i not in over]
    random.Random(seed).shuffle(order)
    remaining = set(order)
    out = []
    for s in order:
        if s not in remaining:
            continue
        remaining.discard(s)
        members, total = [s], lengths[s]
        while len(members) < d_max and remaining:
            j = max(remaining, key=lambda r: (float(emb[r] @ emb[s]), -r))
            if float(emb[j] @ emb[s]) < threshold or total + lengths[j] > l_max:
                break
            members.append(j)
            total += lengths[j]
            remaining.discard(j)
        out.append(members)
    return out + [[i] for i in over]


@pytest.mark.parametrize("trial", range(12))
def test_matches_the_reference_rules_on_random_inputs(trial):
    r = random.Random(trial)
    n, dim = r.randint(1, 25), r.randint(2, 6)
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(trial))
    lengths = [r.randint(1, 40) for _ in range(n)]
    l_max, d_max, threshold = r.randint(20, 120), r.randint(1, 6), r.choice([-1.0, 0.0, 0.3, 0.7])
    clusters, _ = length_based_clustering(emb, lengths, l_max=l_max, d_max=d_max, threshold=threshold, seed=trial)
    expected = reference_clustering(emb, lengths, l_max, d_max, threshold, trial)
    assert [[int(i) for i in c.doc_ids] for c in clusters] == expected


def test_chunked_fallback_warns_and_gives_the_same_clusters():
    emb = torch.randn(60, 8, generator=torch.Generator().manual_seed(5))
    lengths = [random.Random(i).randint(5, 30) for i in range(60)]
    kwargs = dict(l_max=80, d_max=5, threshold=0.2, seed=1)
    exact, report = length_based_clustering(emb, lengths, **kwargs)
    assert report.index == "exact"
    try:
        import faiss  # noqa: F401
        has_faiss = True
    except ImportError:
        has_faiss = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunked, report2 = length_based_clustering(emb, lengths, brute_force_max=7, **kwargs)
    if has_faiss:
        assert report2.index == "faiss-flat"
    else:
        assert report2.index == "exact-chunked(7)"
        assert any("faiss is not installed" in str(w.message) for w in caught)
    assert [c.doc_ids for c in chunked] == [c.doc_ids for c in exact]


def test_faiss_flat_index_matches_exact_when_installed():
    pytest.importorskip("faiss")
    from lmops.methods.domain_rc import FaissIndex

    emb = torch.nn.functional.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    lengths = [10] * 300
    kwargs = dict(l_max=60, d_max=6, threshold=0.3, seed=4)
    exact, _ = length_based_clustering(emb, lengths, **kwargs)
    via_faiss, report = length_based_clustering(emb, lengths, index=FaissIndex(emb, kind="flat"), **kwargs)
    assert report.index == "faiss-flat"
    assert [c.doc_ids for c in via_faiss] == [c.doc_ids for c in exact]
    hnsw, report = length_based_clustering(emb, lengths, index=FaissIndex(emb, kind="hnsw"), **kwargs)
    assert sorted(int(i) for c in hnsw for i in c.doc_ids) == list(range(300))  # approximate, but a partition


def test_exact_index_search_skips_removed_rows():
    emb = torch.nn.functional.normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    for chunk in (None, 3):
        index = ExactIndex(emb, chunk_size=chunk)
        q = emb[0]
        full = index.search(q, 20)
        assert [i for i, _ in full] == sorted(range(20), key=lambda i: -float(emb[i] @ q))
        index.remove([full[0][0], full[1][0]])
        assert index.n_alive == 18 and index.search(q, 3) == full[2:5]


def test_centroid_anchor_also_recovers_planted_groups():
    emb, labels = planted_groups([3, 4, 2], seed=7)
    clusters, _ = length_based_clustering(emb, [1] * 9, l_max=100, d_max=10, anchor="centroid")
    assert as_sets(clusters) == {frozenset(i for i, l in enumerate(labels) if l == k) for k in range(3)}


def test_cluster_documents_uses_ids_and_token_lengths_with_qa():
    sizes = [10, 11, 12, 40]
    docs = [DocumentQA(f"doc{i}", "x" * n, [QAPair("q" * 3, "a" * 4)] if i % 2 else []) for i, n in enumerate(sizes)]
    template = ClusterTemplate(qa_format="Q:{question} A:{answer}")
    chars = lambda texts: [len(t) for t in texts]  # noqa: E731  (a length function in characters)
    lengths = document_lengths(docs, chars, template)
    assert lengths == [10, 11 + len("Q:qqq A:aaaa"), 12, 40 + 12]
    emb, _ = planted_groups([2, 2])
    clusters, report = cluster_documents(docs, emb, chars, config=ClusterConfig(l_max=33, d_max=4), template=template)
    assert {frozenset(c.doc_ids) for c in clusters} == {frozenset({"doc0", "doc1"}), frozenset({"doc2"}),
                                                        frozenset({"doc3"})}
    assert report.overlong == ["doc3"]  # 52 tokens with its QA > 33
    assert {c.doc_ids[0]: c.length for c in clusters if len(c.doc_ids) == 1} == {"doc2": 12, "doc3": 52}


def test_mean_pool_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert torch.equal(pooled[0], hidden[0, :2].mean(0)) and torch.equal(pooled[1], torch.zeros(2))


def test_embed_texts_is_normalized_and_independent_of_batching():
    pytest.importorskip("transformers")
    from lmops.methods.domain_rc.demo import tiny_encoder

    model, tok = tiny_encoder(seed=1)
    texts = ["short", "a much longer text about insulin and glucose", "mid length text", "x"]
    together = embed_texts(texts, model, tok, batch_size=4)
    alone = torch.cat([embed_texts([t], model, tok) for t in texts])
    assert together.shape == (4, 32) and together.dtype == torch.float32
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])
    assert embed_texts([], model, tok).shape == (0, 32)
