"""Se2's records: task examples, the prompt pool, the demonstration template, scored records; JSONL I/O.

An :class:`Example` is one task instance. Classification examples carry ``options`` and the ``gold``
option index (their ``answer`` is ``options[gold]``); generation examples carry only the reference
``answer``. The :class:`Pool` holds the examples demonstrations are drawn from, addressed by ``id``
everywhere: selections are lists of pool ids, never text to be split again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...common.jsonl import read_jsonl, write_jsonl

__all__ = [
    "SEPARATOR",
    "Candidate",
    "Example",
    "Pool",
    "ScoredRecord",
    "Template",
    "read_examples",
    "read_records",
    "write_examples",
    "write_records",
]

SEPARATOR = " \n "  # between demonstrations and before the query, as the official code joins them


@dataclass
class Example:
    """One task instance.

    Attributes:
        id: unique within its file; pool ids are what selections refer to.
        question: the input text.
        answer: the reference answer (classification: the gold option's text, filled in when empty).
        options: classification: the answer options; ``None`` for generation.
        gold: classification: the index of the right option in ``options``.
    """

    id: int
    question: str
    answer: str = ""
    options: list[str] | None = None
    gold: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise TypeError(f"id: expected an int, got {self.id!r}")
        if not isinstance(self.question, str):
            raise TypeError(f"question: expected a str, got {type(self.question).__name__} (example {self.id})")
        if self.options is not None:
            if (not isinstance(self.options, (list, tuple)) or len(self.options) < 2
                    or not all(isinstance(o, str) and o for o in self.options)):
                raise ValueError(f"options: expected a list of >= 2 non-empty strings, got {self.options!r} "
                                 f"(example {self.id})")
            self.options = list(self.options)
            if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < len(self.options):
                raise ValueError(f"gold: expected an option index in [0, {len(self.options)}), got {self.gold!r} "
                                 f"(example {self.id})")
            if not self.answer:
                self.answer = self.options[self.gold]
            elif self.answer != self.options[self.gold]:
                raise ValueError(f"answer: expected the gold option {self.options[self.gold]!r} (or nothing), got "
                                 f"{self.answer!r} (example {self.id})")
        elif self.gold is not None:
            raise ValueError(f"gold: given without options (example {self.id})")
        if not isinstance(self.answer, str):
            raise TypeError(f"answer: expected a str, got {type(self.answer).__name__} (example {self.id})")

    @property
    def is_classification(self) -> bool:
        return self.options is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.options is None:
            d.pop("options")
            d.pop("gold")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict, got {type(data).__name__}")
        return cls(id=data.get("id"), question=data.get("question"), answer=data.get("answer") or "",
                   options=data.get("options"), gold=data.get("gold"))


@dataclass
class Template:
    """How an example is rendered: the query part and the answer part; a demonstration is their
    concatenation. The scored/inference context ends with :meth:`question` of the query and each
    option's :meth:`answer` is the continuation whose likelihood is measured.

    A choice: the official code draws one FLAN template per example (seeded by its id); this package
    uses one template for all, ``"{question}"`` + ``" {answer}"`` by default. Subclass (overriding
    :meth:`question` / :meth:`answer`) or pass other format strings for another rendering.
    """

    question_format: str = "{question}"
    answer_format: str = " {answer}"

    def __post_init__(self) -> None:
        for name in ("question_format", "answer_format"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
        if "{question}" not in self.question_format:
            raise ValueError(f"question_format: expected a format string with {{question}}, got {self.question_format!r}")
        if "{answer}" not in self.answer_format:
            raise ValueError(f"answer_format: expected a format string with {{answer}}, got {self.answer_format!r}")

    def question(self, example: Example) -> str:
        return self.question_format.format(question=example.question)

    def answer(self, text: str) -> str:
        return self.answer_format.format(answer=text)

    def demonstration(self, example: Example) -> str:
        return self.question(example) + self.answer(example.answer)

    def to_dict(self) -> dict[str, str]:
        return {"question_format": self.question_format, "answer_format": self.answer_format}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        return cls(**{k: data[k] for k in ("question_format", "answer_format") if k in data})


class Pool:
    """The examples demonstrations come from, by id (ids must be unique).

    Args:
        examples: the pool; all classification or all generation.
    """

    def __init__(self, examples: Iterable[Example]) -> None:
        self.examples: list[Example] = list(examples)
        if not self.examples:
            raise ValueError("examples: expected a non-empty pool")
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, Example):
                raise TypeError(f"examples[{i}]: expected an Example, got {type(ex).__name__}")
        self.by_id: dict[int, Example] = {}
        self.row_of: dict[int, int] = {}
        for row, ex in enumerate(self.examples):
            if ex.id in self.by_id:
                raise ValueError(f"examples: duplicate pool id {ex.id}")
            self.by_id[ex.id] = ex
            self.row_of[ex.id] = row
        self.ids: list[int] = [ex.id for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, pool_id: int) -> Example:
        try:
            return self.by_id[pool_id]
        except KeyError:
            raise KeyError(f"pool id {pool_id} is not in the pool") from None

    def __contains__(self, pool_id: object) -> bool:
        return pool_id in self.by_id

    def self_id(self, query: Example) -> int | None:
        """The pool id of ``query`` itself when the query is a pool member (same id and same question),
        else ``None``. A choice: matching the question too keeps a separate query set whose ids happen
        to collide with pool ids from losing unrelated pool examples (the official beam search bars the
        query's index in the evaluation split as though it were a pool id)."""
        ex = self.by_id.get(query.id)
        return query.id if ex is not None and ex.question == query.question else None

    def texts(self, template: Template) -> list[str]:
        """Every pool example's demonstration, in pool row order."""
        return [template.demonstration(ex) for ex in self.examples]


@dataclass
class Candidate:
    """One scored candidate: its pool id, the loss (lower is better), ``one_shot_acc`` (classification:
    1 when the argmin option is gold, else 0; generation: the metric) and the prediction."""

    id: int
    loss: float
    one_shot_acc: float
    pred: int | str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(id=int(data["id"]), loss=float(data["loss"]), one_shot_acc=float(data["one_shot_acc"]),
                   pred=data.get("pred"))


@dataclass
class ScoredRecord:
    """A query with a chosen prefix and its candidates ranked by loss, ascending.

    Attributes:
        query_id: the query's id (in the query set).
        chosen: pool ids already chosen, in prompt order (the most recent first, farthest from the query).
        ctxs: the ranked candidates.
        step: the sampling step (1-based) that produced it.
    """

    query_id: int
    chosen: list[int]
    ctxs: list[Candidate] = field(default_factory=list)
    step: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "chosen": list(self.chosen), "step": self.step,
                "ctxs": [c.to_dict() for c in self.ctxs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoredRecord:
        return cls(query_id=int(data["query_id"]), chosen=[int(i) for i in data.get("chosen", [])],
                   ctxs=[Candidate.from_dict(c) for c in data.get("ctxs", [])], step=int(data.get("step", 1)))


def _read(path: str | os.PathLike, required: Sequence[str], build) -> list:
    result = read_jsonl(path, required=required)
    if result.malformed:
        line, reason = result.malformed[0]
        raise ValueError(f"{path}:{line}: {reason} ({len(result.malformed)} malformed line(s))")
    out = []
    for i, rec in enumerate(result.records):
        try:
            out.append(build(rec))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: record {i + 1}: {exc}") from None
    return out


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Examples from JSONL: ``{"id", "question", "answer"}`` plus ``"options"`` and ``"gold"`` for
    classification. A malformed line raises ``ValueError`` naming the file and line."""
    return _read(path, ("id", "question"), Example.from_dict)


def write_examples(path: str | os.PathLike, examples: Iterable[Example]) -> int:
    return write_jsonl(Path(path), examples)


def read_records(path: str | os.PathLike) -> list[ScoredRecord]:
    return _read(path, ("query_id", "ctxs"), ScoredRecord.from_dict)


def write_records(path: str | os.PathLike, records: Iterable[ScoredRecord]) -> int:
    return write_jsonl(Path(path), records)
