"""HD-Eval's records and their JSONL files.

An input line is ``{"sample": str, "score": float | null | NaN, "system": str (optional)}``: the text
judged, its human score (missing or NaN where there is none: skipped and counted when fitting), and
the system that produced it (for system-level correlations). A prediction line adds ``"prediction"``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ...common.jsonl import read_jsonl, write_jsonl

__all__ = ["EvalRecord", "read_records", "write_predictions"]


@dataclass
class EvalRecord:
    """One judged sample: ``sample`` text, human ``score`` (``None`` when absent) and ``system`` id."""

    sample: str
    score: float | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sample, str):
            raise TypeError(f"sample: expected a string, got {type(self.sample).__name__}")
        if self.score is not None:
            if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
                raise TypeError(f"score: expected a number, null or NaN, got {self.score!r}")
            self.score = float(self.score)
        if self.system is not None and not isinstance(self.system, str):
            self.system = str(self.system)

    @property
    def has_score(self) -> bool:
        return self.score is not None and math.isfinite(self.score)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"sample": self.sample, "score": self.score if self.has_score else None}
        if self.system is not None:
            out["system"] = self.system
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "EvalRecord":
        if not isinstance(data, dict):
            raise TypeError(f"record: expected a dict, got {type(data).__name__}")
        score = data.get("score")
        if isinstance(score, str) and score.strip().lower() == "nan":
            score = float("nan")
        return cls(data.get("sample"), score, data.get("system"))


def read_records(path: str | os.PathLike) -> tuple[list[EvalRecord], list[tuple[int, str]]]:
    """The records of a JSONL file, and ``(line number, reason)`` for every line that is not one (skipped)."""
    result = read_jsonl(path, required=["sample"])
    bad = list(result.malformed)
    skipped = {line for line, _ in bad}
    with open(path, encoding="utf-8") as f:  # the line of each well-formed object, to name a bad one
        lines = [n for n, text in enumerate(f, start=1) if text.strip() and n not in skipped]
    records = []
    for line, data in zip(lines, result.records):
        try:
            records.append(EvalRecord.from_dict(data))
        except (TypeError, ValueError) as exc:
            bad.append((line, str(exc)))
    return records, sorted(bad)


def write_predictions(path: str | os.PathLike, records: Iterable[EvalRecord], predictions: Iterable[float]) -> int:
    """Write each record with its ``"prediction"`` (``null`` where it is not finite), atomically."""
    rows = []
    for record, pred in zip(records, predictions):
        row = record.to_dict()
        row["prediction"] = float(pred) if pred is not None and math.isfinite(pred) else None
        rows.append(row)
    return write_jsonl(path, rows)
