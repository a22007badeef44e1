"""GLAN's records (dataclasses with ``to_dict``/``from_dict``), their deterministic ids, and the files of a
run directory.

A run directory holds one JSONL file per stage, each appended one whole line per finished unit (so a
kill loses at most the unit in flight, and a rerun skips every unit already on disk):

- ``subjects.jsonl``: one :class:`DisciplineSubjects` per discipline;
- ``syllabi.jsonl``: one :class:`Syllabus` per subject;
- ``pairs.jsonl``: one :class:`InstructionRecord` per question-answer pair generated;
- ``instructions.jsonl``: the output, rewritten atomically at the end of each run from ``pairs.jsonl``
  (the disciplines of the current taxonomy, less the decontaminated pairs, in taxonomy order);
- ``decontaminated.jsonl``: the pairs removed, each with the benchmark n-gram it matched;
- ``summary.json``; ``llm_cache.sqlite`` (the CLI's :class:`~lmops.llm.CachedLLM`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DECONTAMINATED",
    "INSTRUCTIONS",
    "PAIRS",
    "SUBJECTS",
    "SUMMARY",
    "SYLLABI",
    "DisciplineSubjects",
    "InstructionRecord",
    "Session",
    "Subject",
    "Syllabus",
    "record_id",
    "subject_id",
]

SUBJECTS = "subjects.jsonl"
SYLLABI = "syllabi.jsonl"
PAIRS = "pairs.jsonl"
INSTRUCTIONS = "instructions.jsonl"
DECONTAMINATED = "decontaminated.jsonl"
SUMMARY = "summary.json"


def _hash(*parts: object) -> str:
    blob = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def subject_id(discipline: str, query_index: int, item_index: int) -> str:
    """The id of the ``item_index``-th subject of the ``query_index``-th subject query of ``discipline``."""
    return _hash("subject", discipline, query_index, item_index)


def record_id(subject: str, sample_index: int) -> str:
    """The id of the ``sample_index``-th question sampled from the syllabus of subject id ``subject``."""
    return _hash("instruction", subject, sample_index)


def _fields(cls: type, d: dict, required: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{cls.__name__}.from_dict: missing key(s) {missing}")
    known = set(cls.__dataclass_fields__)
    return {k: v for k, v in d.items() if k in known}


@dataclass
class Subject:
    """One subject of a discipline, as the conversion turn gave it."""

    id: str
    discipline: str
    name: str
    level: str
    subtopics: list[str]
    query_index: int
    item_index: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Subject:
        return cls(**_fields(cls, d, ("id", "discipline", "name", "level", "subtopics", "query_index", "item_index")))


@dataclass
class DisciplineSubjects:
    """A line of ``subjects.jsonl``: every subject of one discipline, and how many of its conversion
    answers were malformed (after retries) or its subject items invalid."""

    discipline: str
    path: list[str]
    subjects: list[Subject]
    n_queries: int
    n_malformed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["subjects"] = [s.to_dict() for s in self.subjects]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DisciplineSubjects:
        kw = _fields(cls, d, ("discipline", "path", "subjects", "n_queries"))
        kw["subjects"] = [Subject.from_dict(s) for s in kw["subjects"]]
        return cls(**kw)


@dataclass
class Session:
    """A class session of a syllabus."""

    title: str
    description: str
    concepts: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Session:
        return cls(**_fields(cls, d, ("title", "description", "concepts")))


@dataclass
class Syllabus:
    """A line of ``syllabi.jsonl``: a subject's syllabus text and the sessions extracted from it."""

    subject_id: str
    discipline: str
    subject: str
    level: str
    text: str
    sessions: list[Session]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sessions"] = [s.to_dict() for s in self.sessions]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Syllabus:
        kw = _fields(cls, d, ("subject_id", "discipline", "subject", "level", "text", "sessions"))
        kw["sessions"] = [Session.from_dict(s) for s in kw["sessions"]]
        return cls(**kw)


@dataclass
class InstructionRecord:
    """One instruction-response pair (a line of ``pairs.jsonl`` and ``instructions.jsonl``).

    ``sessions`` are the titles of the sampled sessions and ``concepts`` the sampled key concepts;
    ``provenance`` holds the taxonomy path, the models, the prompt hashes, the seed, the subject id, the
    sample index and the session indices.
    """

    id: str
    discipline: str
    subject: str
    level: str
    sessions: list[str]
    concepts: list[str]
    strategy: str
    question: str
    answer: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InstructionRecord:
        return cls(**_fields(cls, d, ("id", "discipline", "subject", "level", "sessions", "concepts", "strategy",
                                      "question", "answer")))
