"""Records of tailored reasoning distillation and their JSONL files.

A run directory holds, per round ``r``, ``round_{r}/exam.jsonl`` (:class:`ExamRecord`, one per training
question), ``round_{r}/teacher.jsonl`` (:class:`TeacherRecord`, one per question asked),
``round_{r}/train.jsonl`` (:class:`TrainItem`, one per teacher rationale trained on) and
``round_{r}/checkpoint/`` (the student after the round). Questions are addressed by ``id`` everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar

from ...common.jsonl import read_jsonl, write_jsonl

__all__ = [
    "ExamRecord",
    "Question",
    "TeacherRecord",
    "TrainItem",
    "read_questions",
    "read_records",
    "write_questions",
]

R = TypeVar("R")


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict of {cls.__name__} fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        missing = [f.name for f in fields(cls)  # type: ignore[arg-type]
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"data: missing {cls.__name__} field(s) {missing}")
        return cls(**{k: v for k, v in data.items() if k in known})


def _str(name: str, value: object, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"{name}: expected a {'' if empty else 'non-empty '}string, got {value!r}")


def _str_list(name: str, value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{name}: expected a list of strings, got {value!r}")


@dataclass
class Question:
    """One task question with its gold answer.

    Attributes:
        id: unique within the data set.
        question: the question text.
        answer: the gold final answer (compared with the extracted prediction by the task).
    """

    id: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            self.id = str(self.id)
        _str("id", self.id)
        _str("question", self.question)
        if isinstance(self.answer, (int, float)) and not isinstance(self.answer, bool):
            self.answer = str(self.answer)
        _str("answer", self.answer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Question:
        return cls(id=data["id"], question=data["question"], answer=data["answer"])


@dataclass
class ExamRecord(_Record):
    """The student's exam answers for one question.

    Attributes:
        round: the round whose exam this is (the student of round ``round - 1`` sat it).
        qid: the question's id.
        question, answer: the question and its gold answer (for reading the file).
        samples: the ``k`` sampled rationales (completions of the few-shot prompt, cut at the stop string).
        predictions: the answer extracted from each sample (``None``: nothing extractable, counted wrong).
        correct: per sample, whether the prediction matches the gold answer.
    """

    round: int
    qid: str
    question: str
    answer: str
    samples: list[str]
    predictions: list[str | None]
    correct: list[bool]

    def __post_init__(self) -> None:
        _str_list("samples", self.samples)
        if len(self.predictions) != len(self.samples) or len(self.correct) != len(self.samples):
            raise ValueError(f"predictions, correct: expected {len(self.samples)} entries each (one per sample) "
                             f"for question {self.qid!r}")

    @property
    def wrong_rationales(self) -> list[str]:
        """The distinct wrong samples (stripped, non-empty), in order: the contrastive negatives."""
        seen: dict[str, None] = {}
        for text, ok in zip(self.samples, self.correct):
            text = text.strip()
            if not ok and text:
                seen.setdefault(text, None)
        return list(seen)

    @property
    def n_correct(self) -> int:
        return sum(bool(c) for c in self.correct)


@dataclass
class TeacherRecord(_Record):
    """What the teacher gave for one question.

    Attributes:
        round: the round.
        qid: the question's id.
        kind: ``"rationale"`` (round 1: the whole training set) or ``"correction"`` (rounds >= 2: a
            customised correction of the student's mistake).
        rationales: the teacher's rationales whose answer matched the gold answer (distinct, cleaned).
        rejected: ``{"text", "prediction"}`` of parsable rationales with a wrong answer (filtered out).
        malformed: answers of the first request without a parsable final answer (a question all of
            whose answers were malformed is retried through ``lmops.llm.ask``).
        failed: no answer parsed after the retries (the question is skipped this round).
        error: the last parse or backend error when ``failed``.
        student_rationale: for a correction, the wrong student rationale shown to the teacher.
    """

    round: int
    qid: str
    kind: str
    rationales: list[str]
    rejected: list[dict] = field(default_factory=list)
    malformed: int = 0
    failed: bool = False
    error: str | None = None
    student_rationale: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rationale", "correction"):
            raise ValueError(f"kind: expected 'rationale' or 'correction', got {self.kind!r}")
        _str_list("rationales", self.rationales)


@dataclass
class TrainItem(_Record):
    """One training example: a teacher rationale for a question, with its contrastive pools.

    Attributes:
        qid: the question's id (the batch sampler puts each at most once per batch).
        prefix: the student's prompt (few-shot demonstrations + question), weighted ``prefix_weight``.
        completion: the target after the prefix (teacher rationale + final answer line), weight 1.
        positives: other teacher completions for the same question (anchor != positive is enforced
            when drawing).
        negatives: wrong student rationales for the question from this round's exam.
        round: the round whose teacher data this item comes from.
    """

    qid: str
    prefix: str
    completion: str
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    round: int = 1

    def __post_init__(self) -> None:
        _str("qid", self.qid)
        _str("prefix", self.prefix, empty=True)
        _str("completion", self.completion)
        _str_list("positives", self.positives)
        _str_list("negatives", self.negatives)


def read_questions(path: str | os.PathLike) -> tuple[list[Question], list[tuple[int, str]]]:
    """Questions from a JSONL file of ``{"question", "answer"}`` objects (``"id"`` optional: the line
    number otherwise). Returns ``(questions, malformed)``: lines that are not JSON objects, lack a key,
    hold a bad value or repeat an id are reported as ``(line number, reason)`` and skipped. A missing file
    raises ``FileNotFoundError``."""
    out: list[Question] = []
    bad: list[tuple[int, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((number, f"not JSON ({exc.msg})"))
                continue
            if not isinstance(record, dict) or "question" not in record or "answer" not in record:
                bad.append((number, "expected a JSON object with 'question' and 'answer'"))
                continue
            try:
                q = Question(id=record.get("id", str(number)), question=record["question"], answer=record["answer"])
            except (ValueError, TypeError) as exc:
                bad.append((number, str(exc)))
                continue
            if q.id in seen:
                bad.append((number, f"id {q.id!r} repeated"))
                continue
            seen.add(q.id)
            out.append(q)
    return out, bad


def write_questions(path: str | os.PathLike, questions: Iterable[Question]) -> int:
    """Write questions as JSONL (atomically); returns the count."""
    return write_jsonl(path, (q.to_dict() for q in questions))


def read_records(path: str | os.PathLike, cls: type[R]) -> list[R]:
    """All records of ``cls`` (:class:`ExamRecord`, :class:`TeacherRecord`, :class:`TrainItem`) in a JSONL
    file this package wrote; a line that does not hold one raises ``ValueError`` naming file and line."""
    result = read_jsonl(path, strict=True)
    out = []
    for number, record in enumerate(result.records, start=1):
        try:
            out.append(cls.from_dict(record))  # type: ignore[attr-defined]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: record {number}: {exc}") from None
    return out
