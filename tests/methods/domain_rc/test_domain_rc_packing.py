"""Knapsack packing (optimal against brute force, every item once), example packing with EOS and
over-long examples, cluster formatting and mixing with general instructions by tokens."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import pytest

from lmops.methods.domain_rc import (
    Cluster,
    ClusterTemplate,
    DocumentQA,
    Example,
    QAPair,
    format_cluster,
    format_clusters,
    knapsack_fill,
    mix_general,
    pack_examples,
    pack_lengths,
    read_general,
)


def brute_best(lengths: list[int], items: list[int], capacity: int) -> int:
    best = 0
    for k in range(len(items) + 1):
        for subset in itertools.combinations(items, k):
            total = sum(lengths[i] for i in subset)
            if best < total <= capacity:
                best = total
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_fill_is_optimal(seed):
    r = random.Random(seed)
    capacity = r.randint(1, 40)
    lengths = [r.randint(0, 45) for _ in range(r.randint(0, 11))]
    chosen = knapsack_fill(lengths, capacity)
    assert chosen == sorted(set(chosen)) and all(0 < lengths[i] <= capacity for i in chosen)
    assert sum(lengths[i] for i in chosen) == brute_best(lengths, list(range(len(lengths))), capacity)


@pytest.mark.parametrize("seed", range(25))
def test_each_bin_is_the_best_fill_of_what_is_left(seed):
    r = random.Random(100 + seed)
    capacity = r.randint(5, 30)
    # few distinct lengths, repeated: exercises the grouped (bounded) knapsack
    palette = [r.randint(1, capacity) for _ in range(r.randint(1, 4))]
    lengths = [r.choice(palette) for _ in range(r.randint(1, 10))]
    bins = pack_lengths(lengths, capacity)
    left = list(range(len(lengths)))
    for b in bins:
        assert set(b) <= set(left) and b
        assert sum(lengths[i] for i in b) == brute_best(lengths, left, capacity)
        left = [i for i in left if i not in b]
    assert left == []


def test_pack_lengths_on_many_items_is_fast_and_complete():
    r = random.Random(0)
    lengths = [r.randint(20, 900) for _ in range(3000)]
    start = time.perf_counter()
    bins = pack_lengths(lengths, 2048)
    elapsed = time.perf_counter() - start
    assert sorted(i for b in bins for i in b) == list(range(3000))
    fills = [sum(lengths[i] for i in b) for b in bins]
    assert all(f <= 2048 for f in fills)
    assert sum(f == 2048 for f in fills) >= 0.9 * len(bins)  # many small items: almost every bin exact
    assert elapsed < 10, elapsed


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        pack_lengths([1], 0)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        pack_lengths([1, 11], 10)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        knapsack_fill([-1], 10)
    assert pack_lengths([], 10) == []


def test_pack_examples_separates_with_eos_and_handles_overlong():
    eos = 2
    examples = [[10] * 5, [11] * 3, [12] * 20, [], [13] * 8]
    packed, report = pack_examples(examples, 10, eos_id=eos, ids=["a", "b", "c", "d", "e"], overlong="split")
    # a: 6 tokens with EOS, b: 4, c: 21 -> pieces of 10, 10, 1, e: 9
    assert report.examples == 5 and report.overlong == 1 and report.pieces == 3 and report.dropped_tokens == 0
    assert all(len(p.input_ids) <= 10 for p in packed)
    assert sorted(s for p in packed for s in p.sources) == ["a", "b", "c#0", "c#1", "c#2", "e"]
    assert report.tokens == 6 + 4 + 21 + 9 == sum(len(p.input_ids) for p in packed)
    ab = next(p for p in packed if "a" in p.sources)
    assert ab.sources == ["a", "b"] and ab.input_ids == [10] * 5 + [eos] + [11] * 3 + [eos]
    pieces = {s: p.input_ids for p in packed for s in p.sources if s.startswith("c")}
    assert pieces["c#0"] == [12] * 10  # split pieces: the EOS stays at the very end of the example
    joined = [t for p in sorted(packed, key=lambda p: p.sources) for t in p.input_ids]
    assert joined.count(eos) == 4

    truncated, report = pack_examples(examples, 10, eos_id=eos, overlong="truncate")
    assert report.overlong == 1 and report.dropped_tokens == 11 and report.tokens == 6 + 4 + 10 + 9
    dropped, report = pack_examples(examples, 10, eos_id=eos, overlong="drop")
    assert report.dropped_tokens == 21 and report.tokens == 6 + 4 + 9 and len(dropped) == 2
    with pytest.raises(ValueError, match="overlong"):
        pack_examples(examples, 10, eos_id=eos, overlong="wrap")
    assert pack_examples([], 10, eos_id=eos)[0] == []


def docs_with_qa() -> dict[str, DocumentQA]:
    return {
        "x": DocumentQA("x", "Doc X {braces}.", [QAPair(f"qx{i}?", f"ax{i}") for i in range(3)]),
        "y": DocumentQA("y", "Doc Y.", [QAPair(f"qy{i}?", f"ay{i}") for i in range(3)]),
        "z": DocumentQA("z", "Doc Z.", [], status="failed", error="no JSON"),
    }


def test_cluster_text_is_documents_then_all_qa_shuffled():
    docs = docs_with_qa()
    cluster = Cluster(0, ["y", "x", "z"], 0)
    text = format_cluster(cluster, docs, random.Random(0))
    head, tail = text.split("\n\nQuestion: ", 1)
    assert head == "Doc Y.\n\nDoc X {braces}.\n\nDoc Z."
    blocks = ("Question: " + tail).split("\n\n")
    expected = {f"Question: q{d}{i}?\nAnswer: a{d}{i}" for d in "xy" for i in range(3)}
    assert set(blocks) == expected and len(blocks) == 6
    orders = {tuple(format_cluster(cluster, docs, random.Random(s)).split("\n\n")[3:]) for s in range(8)}
    assert len(orders) > 1  # shuffled across documents, seeded
    assert format_cluster(cluster, docs, random.Random(3)) == format_cluster(cluster, docs, random.Random(3))
    custom = ClusterTemplate(document_separator=" | ", section_separator=" || ", qa_format="{question}={answer}",
                             qa_separator=";")
    assert format_cluster(Cluster(1, ["x"], 0), {"x": DocumentQA("x", "D", [QAPair("q", "a")])}, random.Random(0),
                          custom) == "D || q=a"
    with pytest.raises(ValueError, match="not in the QA data"):
        format_cluster(Cluster(2, ["missing"], 0), docs, random.Random(0))
    with pytest.raises(ValueError, match="qa_format"):
        ClusterTemplate(qa_format="{question} only")
    examples = format_clusters([cluster, Cluster(5, ["z"], 0)], docs)
    assert [e.id for e in examples] == ["cluster-0", "cluster-5"] and examples[1].text == "Doc Z."


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_mixing_reaches_the_ratio_by_tokens():
    domain = [Example(f"d{i}", "domain", "w " * 50) for i in range(4)]  # 200 tokens
    general = [Example(f"g{i}", "general", "v " * (5 + i)) for i in range(30)]
    mixed, report = mix_general(domain, general, words, ratio=1.0, seed=1)
    assert report.domain_tokens == 200 and 200 <= report.general_tokens < 200 + 35
    assert sum(words([e.text for e in mixed if e.kind == "general"])) == report.general_tokens
    assert len({e.id for e in mixed}) == len(mixed) and sum(e.kind == "domain" for e in mixed) == 4
    assert [e.kind for e in mixed] != ["domain"] * 4 + ["general"] * report.general_examples  # shuffled
    half, report = mix_general(domain, general, words, ratio=0.5, seed=1)
    assert 100 <= report.general_tokens < 135
    none, report = mix_general(domain, general, words, ratio=0.0)
    assert report.general_examples == 0 and len(none) == 4
    # not enough general data: all of it once, and the ratio reached is reported
    few, report = mix_general(domain, general[:3], words, ratio=1.0)
    assert report.general_examples == 3 and report.general_tokens == 18 and report.achieved_ratio == 18 / 200
    assert not report.repeated
    rep, report = mix_general(domain, general[:3], words, ratio=1.0, allow_repeat=True)
    assert report.general_tokens >= 200 and report.repeated and len({e.id for e in rep}) == len(rep)
    with pytest.raises(ValueError, match="ratio"):
        mix_general(domain, general, words, ratio=-1)
    empty, report = mix_general([], general, words, ratio=1.0)
    assert empty == [] and report.general_tokens == 0


def test_read_general_accepts_two_shapes_and_reports_the_rest(tmp_path: Path):
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join([
        json.dumps({"instruction": "Say hi.", "response": "Hi."}),
        json.dumps({"instruction": "Add.", "input": "1 + 2", "output": "3"}),
        json.dumps({"text": "Plain text."}),
        json.dumps({"instruction": "No response"}),
        "{broken",
    ]) + "\n")
    examples, malformed = read_general(path)
    assert [e.text for e in examples] == ["Say hi.\n\nHi.", "Add.\n\n1 + 2\n\n3", "Plain text."]
    assert all(e.kind == "general" for e in examples) and len(malformed) == 2
