"""Decontamination: drop generated pairs that contain text of the benchmarks the model will be tested on.

The paper removes the pairs containing questions or prompts of the evaluated benchmarks' test (and
training) splits, without saying how it matched. Here the match is a word n-gram overlap, as in GPT-3's
contamination study: texts are lower-cased, split into ``\\w+`` words, and a question that shares one
``n``-word sequence with any benchmark text is removed (``n = 13`` by default, GPT-3's: a choice). A
benchmark text shorter than ``n`` words is matched whole when it has at least ``min_ngram`` words.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = ["NgramDecontaminator", "load_benchmark_texts", "words"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """``text`` normalized (NFKC, case-folded) and split into ``\\w+`` words."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def load_benchmark_texts(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Benchmark texts from files: ``.jsonl`` (every string value of every record, nested ones included:
    questions, prompts, choices), ``.json`` (every string value), anything else (one text per non-empty
    line). A missing file raises ``FileNotFoundError``; a bad JSON line a ``ValueError`` naming it."""
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        with open(path, encoding="utf-8") as f:
            if suffix == ".jsonl":
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            texts.extend(_strings(json.loads(line)))
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            elif suffix == ".json":
                try:
                    texts.extend(_strings(json.load(f)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: not JSON ({exc})") from None
            else:
                texts.extend(line.strip() for line in f if line.strip())
    return texts


class NgramDecontaminator:
    """Finds benchmark n-grams in generated text.

    Args:
        texts: the benchmark texts (questions, prompts).
        n: the n-gram length in words.
        min_ngram: shorter benchmark texts are matched whole from this many words up (<= ``n``).
    Attributes:
        n_grams: how many distinct n-grams (and short whole texts) are indexed.
    """

    def __init__(self, texts: Iterable[str], *, n: int = 13, min_ngram: int = 8) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        if isinstance(min_ngram, bool) or not isinstance(min_ngram, int) or not 1 <= min_ngram <= n:
            raise ValueError(f"min_ngram: expected an int in [1, n={n}], got {min_ngram!r}")
        self.n = n
        self.min_ngram = min_ngram
        self._grams: dict[int, set[str]] = {}  # length -> joined word sequences
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
            w = words(text)
            if len(w) >= n:
                self._grams.setdefault(n, set()).update(" ".join(w[j : j + n]) for j in range(len(w) - n + 1))
            elif len(w) >= min_ngram:
                self._grams.setdefault(len(w), set()).add(" ".join(w))

    @property
    def n_grams(self) -> int:
        return sum(len(s) for s in self._grams.values())

    def match(self, text: str) -> str | None:
        """The first benchmark n-gram (space-joined words) found in ``text``, or None."""
        w = words(text)
        for length, grams in self._grams.items():
            for j in range(len(w) - length + 1):
                gram = " ".join(w[j : j + length])
                if gram in grams:
                    return gram
        return None

    def __contains__(self, text: str) -> bool:
        return self.match(text) is not None
