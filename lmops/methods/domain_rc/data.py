"""ETRC's records and their JSONL files.

One data directory holds every stage's output (``lmops domain-rc qa|cluster|pack`` write there, each
the next one's input):

- ``qa.jsonl``: one :class:`DocumentQA` per document (appended as the teacher answers, so a killed
  run resumes; a later record for the same id replaces an earlier one);
- ``clusters.jsonl``: one :class:`Cluster` per line;
- ``examples.jsonl``: the formatted training texts (:class:`Example`), domain and general, mixed;
- ``packed.jsonl``: one :class:`PackedSequence` per context;
- ``*_report.json``: each stage's counts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ...common.jsonl import read_jsonl, write_jsonl

__all__ = [
    "CLUSTERS_FILE",
    "EXAMPLES_FILE",
    "PACKED_FILE",
    "QA_FILE",
    "Cluster",
    "CorpusReport",
    "Document",
    "DocumentQA",
    "Example",
    "PackedSequence",
    "QAPair",
    "read_clusters",
    "read_corpus",
    "read_general",
    "read_packed",
    "read_qa",
    "write_records",
]

QA_FILE = "qa.jsonl"
CLUSTERS_FILE = "clusters.jsonl"
EXAMPLES_FILE = "examples.jsonl"
PACKED_FILE = "packed.jsonl"


def _str(name: str, value: object, where: str = "") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}{where}")
    return value


@dataclass
class Document:
    """A corpus document: a unique ``id`` and its ``text``."""

    id: str
    text: str

    def __post_init__(self) -> None:
        _str("id", self.id)
        _str("text", self.text, f" (document {self.id})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QAPair:
    """One question and its answer, as the teacher wrote them."""

    question: str
    answer: str

    def __post_init__(self) -> None:
        _str("question", self.question)
        _str("answer", self.answer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DocumentQA:
    """A document with the QA pairs the teacher gave for it.

    Attributes:
        status: ``"ok"``, or ``"failed"`` when no answer held a parsable QA list after the retries
            (``qa`` is then empty and ``error`` says why).
        dropped_items: items of the parsed list that were not ``{"question": str, "answer": str}``.
    """

    id: str
    text: str
    qa: list[QAPair] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    dropped_items: int = 0

    def __post_init__(self) -> None:
        _str("id", self.id)
        _str("text", self.text, f" (document {self.id})")
        if self.status not in ("ok", "failed"):
            raise ValueError(f"status: expected 'ok' or 'failed', got {self.status!r} (document {self.id})")
        self.qa = [p if isinstance(p, QAPair) else QAPair(**p) for p in self.qa]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["qa"] = [p.to_dict() for p in self.qa]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DocumentQA":
        return cls(id=d["id"], text=d["text"], qa=list(d.get("qa") or []), status=d.get("status", "ok"),
                   error=d.get("error"), dropped_items=int(d.get("dropped_items", 0)))


@dataclass
class Cluster:
    """A cluster of documents (ids in the order they joined: the seed first).

    Attributes:
        length: the cluster's length as clustered (documents plus QA, in tokens).
        overlong: a single document longer than ``l_max`` on its own.
        stop: why it stopped growing: ``"similarity"``, ``"l_max"``, ``"d_max"``, ``"exhausted"`` (no
            document left) or ``"overlong"``.
    """

    id: int
    doc_ids: list[str]
    length: int
    overlong: bool = False
    stop: str = "exhausted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cluster":
        return cls(id=int(d["id"]), doc_ids=[str(i) for i in d["doc_ids"]], length=int(d["length"]),
                   overlong=bool(d.get("overlong", False)), stop=str(d.get("stop", "exhausted")))


@dataclass
class Example:
    """One training text before packing: a formatted cluster (``kind="domain"``) or a general
    instruction (``kind="general"``)."""

    id: str
    kind: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PackedSequence:
    """One context of training tokens: examples, each followed by the EOS separator, concatenated.

    ``input_ids`` has at most ``context_length`` ids; ``sources`` names the examples in it (a piece of
    a split example is ``"<id>#<k>"``)."""

    input_ids: list[int]
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PackedSequence":
        ids = d["input_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                            for i in ids):
            raise ValueError("input_ids: expected a non-empty list of token ids (ints >= 0)")
        return cls(input_ids=ids, sources=[str(s) for s in d.get("sources", [])])


@dataclass
class CorpusReport:
    """What :func:`read_corpus` skipped: ``(line, reason)`` per malformed line, duplicate id, empty text."""

    malformed: list[tuple[int, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"malformed": len(self.malformed), "duplicates": len(self.duplicates), "empty": len(self.empty)}


def read_corpus(path: str | os.PathLike) -> tuple[list[Document], CorpusReport]:
    """Documents from a JSONL file of ``{"text": str, "id": str | int}`` (``id`` optional: the line
    number then). Malformed lines, empty texts and repeated ids (the first one is kept) are skipped and
    reported. A missing file raises ``FileNotFoundError``."""
    result = read_jsonl(path, required=["text"])
    report = CorpusReport(malformed=list(result.malformed))
    docs: list[Document] = []
    seen: set[str] = set()
    for n, rec in enumerate(result.records, start=1):
        text, raw_id = rec["text"], rec.get("id", f"doc-{n}")
        if not isinstance(text, str) or isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            report.malformed.append((n, "expected text: str and id: str | int"))
            continue
        doc_id = str(raw_id)
        if doc_id in seen:
            report.duplicates.append(doc_id)
            continue
        if not text.strip():
            report.empty.append(doc_id)
            continue
        seen.add(doc_id)
        docs.append(Document(doc_id, text))
    return docs, report


def read_qa(path: str | os.PathLike) -> tuple[dict[str, DocumentQA], list[tuple[int, str]]]:
    """``qa.jsonl`` as ``{id: DocumentQA}`` (a later record for an id replaces an earlier one, so a
    retried document counts once), and the malformed lines."""
    result = read_jsonl(path, required=["id", "text"])
    out: dict[str, DocumentQA] = {}
    malformed = list(result.malformed)
    for n, rec in enumerate(result.records, start=1):
        try:
            item = DocumentQA.from_dict(rec)
        except (TypeError, ValueError, KeyError) as exc:
            malformed.append((n, f"{type(exc).__name__}: {exc}"))
            continue
        out.pop(item.id, None)  # keep insertion order of the latest record
        out[item.id] = item
    return out, malformed


def read_clusters(path: str | os.PathLike) -> list[Cluster]:
    """``clusters.jsonl`` (strict: the file is this package's own output)."""
    return [Cluster.from_dict(r) for r in read_jsonl(path, required=["id", "doc_ids", "length"], strict=True)]


def read_packed(path: str | os.PathLike) -> list[PackedSequence]:
    """``packed.jsonl`` (strict)."""
    return [PackedSequence.from_dict(r) for r in read_jsonl(path, required=["input_ids"], strict=True)]


def read_general(path: str | os.PathLike, *, template: str = "{instruction}\n\n{response}") -> tuple[list[Example], list[tuple[int, str]]]:
    """General instruction data: JSONL of ``{"instruction", "response"}`` (rendered with ``template``;
    ``"output"`` is accepted for ``"response"``, and a non-empty ``"input"`` is appended to the
    instruction) or of ``{"text"}`` (used as it is). Other lines are reported, not fatal."""
    result = read_jsonl(path)
    examples: list[Example] = []
    malformed = list(result.malformed)
    for n, rec in enumerate(result.records, start=1):
        if isinstance(rec.get("text"), str) and rec["text"].strip():
            text = rec["text"]
        else:
            instruction, response = rec.get("instruction"), rec.get("response", rec.get("output"))
            if not (isinstance(instruction, str) and isinstance(response, str) and instruction.strip()):
                malformed.append((n, "expected {'instruction': str, 'response': str} or {'text': str}"))
                continue
            extra = rec.get("input")
            if isinstance(extra, str) and extra.strip():
                instruction = f"{instruction}\n\n{extra}"
            text = template.format(instruction=instruction, response=response)
        examples.append(Example(id=f"general-{n}", kind="general", text=text))
    return examples, malformed


def write_records(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records (dataclasses of this module) atomically; returns the count."""
    return write_jsonl(Path(path), records)
