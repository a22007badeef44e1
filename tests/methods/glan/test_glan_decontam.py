"""GLAN's n-gram decontamination against user-given benchmark texts."""

import json

import pytest

from lmops.methods.glan import NgramDecontaminator, load_benchmark_texts

BENCH = ("A ball is dropped from a height of 20 meters. How long does it take to reach the ground if air "
         "resistance is ignored?")


def test_question_with_a_benchmark_ngram_is_caught_others_are_not():
    d = NgramDecontaminator([BENCH], n=13)
    leaked = ("Homework: a ball is DROPPED from a height of 20 meters; how long does it take to reach the ground? "
              "Show your work.")
    # 13 consecutive words of the benchmark, with other case and punctuation
    assert d.match(leaked) == "a ball is dropped from a height of 20 meters how long does"
    assert leaked in d
    near = "A ball is dropped from a height of 25 meters. How long does it take to reach the ground?"
    assert d.match(near) is None  # the 12-word runs around the changed number are shorter than 13
    assert d.match("Explain the assumptions behind classical models in physics.") is None


def test_short_benchmark_texts_are_matched_whole_from_min_ngram():
    d = NgramDecontaminator(["What is the capital city of the country France today", "Who wrote it"], n=13, min_ngram=8)
    assert d.match("Quiz: what is the capital city of the country france today, and why?") is not None
    assert d.match("who wrote it") is None  # 3 words: below min_ngram, ignored
    assert d.n_grams == 1


def test_argument_checks():
    with pytest.raises(ValueError, match="min_ngram"):
        NgramDecontaminator([], n=5, min_ngram=6)
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        NgramDecontaminator([3])


def test_load_benchmark_texts(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "q one", "choices": ["c1", "c2"], "id": 3}) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps([{"prompt": "p"}, "s"]))
    (tmp_path / "b.txt").write_text("line a\n\nline b\n")
    assert load_benchmark_texts([tmp_path / "b.jsonl", tmp_path / "b.json", tmp_path / "b.txt"]) == [
        "q one", "c1", "c2", "p", "s", "line a", "line b"]
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_benchmark_texts([tmp_path / "bad.jsonl"])
    with pytest.raises(FileNotFoundError):
        load_benchmark_texts([tmp_path / "missing.txt"])
