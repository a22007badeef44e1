"""The synthetic task, the vocabulary and JSONL I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.methods import trec
from lmops.methods.trec import (
    Seq2SeqExample,
    Vocab,
    encode_examples,
    invert_synthetic,
    read_examples,
    synthetic_splits,
    synthetic_task,
    transform_synthetic,
    write_examples,
)

EXAMPLES = Path(trec.__file__).parent / "examples" / "synthetic_sample.jsonl"


def test_transform_is_reverse_and_shift_and_reversible():
    assert transform_synthetic("ant bee cat", shift=1) == "dog cat bee"
    assert transform_synthetic("hare", shift=1) == "ant"  # wraps around the 32 words
    for e in synthetic_task(50, seed=3):
        assert invert_synthetic(e.target) == e.source
        assert len(e.target.split()) == len(e.source.split())
    with pytest.raises(ValueError, match="'zzz'"):
        transform_synthetic("ant zzz")


def test_synthetic_task_is_deterministic_and_matches_the_shipped_examples():
    assert synthetic_task(20, seed=1) == synthetic_task(20, seed=1)
    assert synthetic_task(20, seed=1) != synthetic_task(20, seed=2)
    shipped, bad = read_examples(EXAMPLES)
    assert not bad and shipped == synthetic_task(len(shipped), seed=0)
    lengths = {len(e.source.split()) for e in synthetic_task(300, seed=0, min_len=2, max_len=4)}
    assert lengths == {2, 3, 4}
    with pytest.raises(ValueError, match="min_len"):
        synthetic_task(5, min_len=4, max_len=2)


def test_splits_are_disjoint():
    train, test = synthetic_splits(500, 50, seed=0, min_len=2, max_len=4, words=("a", "b", "c", "d"))
    assert len(train) == 500 and len(test) == 50
    assert not {e.source for e in test} & {e.source for e in train}
    assert len({e.source for e in test}) == 50


def test_vocab_encode_decode_and_round_trip():
    v = Vocab.build([Seq2SeqExample("b a", "c")])
    assert v.itos == ["<pad>", "<unk>", "a", "b", "c"]
    assert v.encode("a zz c", 5) == [2, 1, 4, 0, 0]
    assert v.decode([2, 0, 4, 0, 0]) == "a c"  # every pad removed
    assert Vocab.from_dict(v.to_dict()).itos == v.itos
    with pytest.raises(ValueError, match="longer"):
        v.encode("a b c", 2)
    with pytest.raises(ValueError, match="words"):
        Vocab(["a b"])
    src, tgt = encode_examples([Seq2SeqExample("a b", "c")], v, 3, 2)
    assert src.tolist() == [[2, 3, 0]] and tgt.tolist() == [[4, 0]]
    with pytest.raises(ValueError, match=r"examples\[0\].target"):
        encode_examples([Seq2SeqExample("a", "a b c")], v, 3, 2)


def test_jsonl_io_skips_malformed_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    assert write_examples(path, [Seq2SeqExample("a b", "b a"), Seq2SeqExample("c", "c")]) == 2
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"source": "x"}\nnot json\n{"source": "", "target": "y"}\n{"source": 3, "target": "y"}\n')
    examples, bad = read_examples(path)
    assert examples == [Seq2SeqExample("a b", "b a"), Seq2SeqExample("c", "c")]
    assert [line for line, _ in bad] == [3, 4, 5, 6]
    with pytest.raises(TypeError, match="source"):
        Seq2SeqExample(None, "x")
