"""TREC's data: source/target pairs, a word-level vocabulary, the shipped synthetic task, JSONL I/O and the
tensors the model trains on.

A JSONL line is ``{"source": str, "target": str}``. Text is split on whitespace into words; the model is
not a transformers model, so a small :class:`Vocab` (``<pad>`` id 0, ``<unk>`` id 1, then the words) is all
the tokenizer it needs.

The synthetic task (:func:`synthetic_task`): the source is a random sequence of words from a small
vocabulary; the target is the source *reversed*, each word replaced by the word ``shift`` places later in
that vocabulary (a Caesar cipher on words). It is reversible (shift back, reverse again), so the right
answer of every example is known, and it needs both content (the cipher) and order (the reversal), i.e.
the model must use the source through cross-attention and positions.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ...common.jsonl import read_jsonl, write_jsonl

__all__ = [
    "PAD",
    "UNK",
    "SYNTHETIC_WORDS",
    "Seq2SeqExample",
    "Vocab",
    "encode_examples",
    "invert_synthetic",
    "read_examples",
    "synthetic_splits",
    "synthetic_task",
    "transform_synthetic",
    "write_examples",
]

PAD, UNK = "<pad>", "<unk>"

#: The synthetic task's words (short, distinct, and whole tokens for sacrebleu's 13a tokenizer).
SYNTHETIC_WORDS = (
    "ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen",
    "ibis", "jay", "kiwi", "lynx", "mole", "newt", "owl", "pig",
    "quail", "rat", "seal", "toad", "urchin", "vole", "wasp", "yak",
    "zebra", "bison", "crow", "dove", "elk", "frog", "goat", "hare",
)


@dataclass
class Seq2SeqExample:
    """One pair: ``source`` and ``target`` text (words separated by whitespace)."""

    source: str
    target: str

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
        if not self.source.split():
            raise ValueError("source: expected at least one word, got an empty string")

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target}

    @classmethod
    def from_dict(cls, data: dict) -> "Seq2SeqExample":
        if not isinstance(data, dict):
            raise TypeError(f"record: expected a dict with 'source' and 'target', got {type(data).__name__}")
        return cls(data.get("source"), data.get("target"))  # type: ignore[arg-type]


def read_examples(path: str | os.PathLike) -> tuple[list[Seq2SeqExample], list[tuple[int, str]]]:
    """The examples of a JSONL file, and ``(line number, reason)`` for each line that is not one (skipped)."""
    result = read_jsonl(path, required=["source", "target"])
    bad = list(result.malformed)
    skipped = {line for line, _ in bad}
    with open(path, encoding="utf-8") as f:
        lines = [n for n, text in enumerate(f, start=1) if text.strip() and n not in skipped]
    examples = []
    for line, data in zip(lines, result.records):
        try:
            examples.append(Seq2SeqExample.from_dict(data))
        except (TypeError, ValueError) as exc:
            bad.append((line, str(exc)))
    return examples, sorted(bad)


def write_examples(path: str | os.PathLike, examples: Iterable[Seq2SeqExample]) -> int:
    """Write the examples as JSONL, atomically; returns how many."""
    return write_jsonl(path, [e.to_dict() for e in examples])


# --------------------------------------------------------------------------------------------------
class Vocab:
    """A word-level vocabulary: ``<pad>`` (id 0), ``<unk>`` (id 1), then the words in the given order."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = [PAD, UNK]
        for w in words:
            if not isinstance(w, str) or not w or w.split() != [w]:
                raise ValueError(f"words: expected non-empty strings without whitespace, got {w!r}")
            if w not in self.itos:
                self.itos.append(w)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad_id = 0
    unk_id = 1

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, examples: Iterable[Seq2SeqExample]) -> "Vocab":
        """Every word of the sources and targets, sorted (so the same data gives the same ids)."""
        words: set[str] = set()
        for e in examples:
            words.update(e.source.split())
            words.update(e.target.split())
        return cls(sorted(words))

    def encode(self, text: str, length: int, *, argument: str = "text") -> list[int]:
        """The ids of ``text``'s words padded with ``<pad>`` to ``length``; ValueError when longer."""
        ids = [self.stoi.get(w, self.unk_id) for w in text.split()]
        if len(ids) > length:
            raise ValueError(f"{argument}: {len(ids)} words is longer than the model's {length}: {text[:60]!r}")
        return ids + [self.pad_id] * (length - len(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` with every ``<pad>`` removed (DiffuSeq's decoding of a padded target)."""
        return " ".join(self.itos[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict:
        return {"words": self.itos[2:]}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocab":
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise TypeError(f"vocab: expected {{'words': [...]}}, got {type(data).__name__}")
        return cls(data["words"])


def encode_examples(
    examples: Sequence[Seq2SeqExample], vocab: Vocab, max_source_len: int, target_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(source ids (N, max_source_len), target ids (N, target_len))``, int64, padded with ``<pad>``.

    Raises ValueError naming the example when a source or target is longer than the model takes.
    """
    if not examples:
        raise ValueError("examples: expected at least one example")
    src = [vocab.encode(e.source, max_source_len, argument=f"examples[{i}].source") for i, e in enumerate(examples)]
    tgt = [vocab.encode(e.target, target_len, argument=f"examples[{i}].target") for i, e in enumerate(examples)]
    return torch.tensor(src, dtype=torch.long), torch.tensor(tgt, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
def transform_synthetic(source: str, shift: int = 3, words: Sequence[str] = SYNTHETIC_WORDS) -> str:
    """The synthetic task's target: ``source`` reversed, each word moved ``shift`` places on in ``words``."""
    index = {w: i for i, w in enumerate(words)}
    try:
        return " ".join(words[(index[w] + shift) % len(words)] for w in reversed(source.split()))
    except KeyError as exc:
        raise ValueError(f"source: {exc.args[0]!r} is not a word of the synthetic vocabulary") from None


def invert_synthetic(target: str, shift: int = 3, words: Sequence[str] = SYNTHETIC_WORDS) -> str:
    """The inverse of :func:`transform_synthetic`: recovers the source from a target."""
    return transform_synthetic(target, -shift, words)


def synthetic_task(
    n: int, *, seed: int = 0, min_len: int = 3, max_len: int = 8, shift: int = 3,
    words: Sequence[str] = SYNTHETIC_WORDS,
) -> list[Seq2SeqExample]:
    """``n`` examples of the reverse-and-shift task, drawn from ``random.Random(seed)`` (the same ``seed``
    gives the same examples on every platform)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got {min_len!r}, {max_len!r}")
    if len(set(words)) != len(words) or len(words) < 2:
        raise ValueError("words: expected at least two distinct words")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        source = " ".join(rng.choice(words) for _ in range(rng.randint(min_len, max_len)))
        out.append(Seq2SeqExample(source, transform_synthetic(source, shift, words)))
    return out


def synthetic_splits(
    n_train: int = 4000, n_test: int = 200, *, seed: int = 0, **task: object
) -> tuple[list[Seq2SeqExample], list[Seq2SeqExample]]:
    """A train set and a test set of the synthetic task; test sources are distinct and none is in the train set."""
    train = synthetic_task(n_train, seed=seed, **task)  # type: ignore[arg-type]
    seen = {e.source for e in train}
    test: list[Seq2SeqExample] = []
    draw = 0
    while len(test) < n_test:
        draw += 1
        if draw > 1000:
            raise ValueError("n_test: could not draw enough test sources unseen in training; lower n_train")
        for e in synthetic_task(n_test, seed=seed + 1_000_003 * draw, **task):  # type: ignore[arg-type]
            if len(test) < n_test and e.source not in seen:  # unseen in training, and no repeats
                seen.add(e.source)
                test.append(e)
    return train, test
