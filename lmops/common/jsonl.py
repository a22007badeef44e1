"""JSONL files for the method packages: read with malformed lines reported, write atomically, and append
record by record so that a killed run resumes with no duplicate and no lost record.

The appender follows distilabel's habit (every record written once, a rerun skips what exists): each
record is one line written with a single ``write`` and flushed to disk before :meth:`JsonlAppender.append`
returns, and opening a file whose last line was cut by a kill drops that partial line first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .files import atomic_write

__all__ = ["JsonlAppender", "JsonlReadResult", "read_jsonl", "write_jsonl"]


@dataclass
class JsonlReadResult:
    """What :func:`read_jsonl` found: the records (dicts), and ``(line number, reason)`` per bad line."""

    records: list[dict] = field(default_factory=list)
    malformed: list[tuple[int, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def read_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), strict: bool = False) -> JsonlReadResult:
    """Read one JSON object per line; blank lines are ignored.

    A line that is not a JSON object, or lacks a key of ``required``, is reported in
    ``result.malformed`` and skipped (or raises ``ValueError`` naming the file and line with
    ``strict=True``). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    need = list(required)
    result = JsonlReadResult()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            reason = None
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                value, reason = None, f"not JSON ({exc.msg})"
            if reason is None and not isinstance(value, dict):
                reason = f"expected a JSON object, got {type(value).__name__}"
            if reason is None:
                missing = [k for k in need if k not in value]
                if missing:
                    reason = f"missing key(s) {missing}"
            if reason is None:
                result.records.append(value)
                continue
            if strict:
                raise ValueError(f"{path}:{number}: {reason}")
            result.malformed.append((number, reason))
    return result


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write ``records`` (dicts, or dataclasses with ``to_dict``) one per line, atomically; returns the
    count. The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(_line(record))
                count += 1

    atomic_write(path, write)
    return count


def _line(record: Any) -> str:
    if hasattr(record, "to_dict"):
        record = record.to_dict()
    if not isinstance(record, dict):
        raise TypeError(f"record: expected a dict or an object with to_dict(), got {type(record).__name__}")
    text = json.dumps(record, ensure_ascii=False)
    return text + "\n"


class JsonlAppender:
    """Append records to a JSONL file that survives a kill at any instant.

    On opening, a trailing partial line (a kill mid-write) is cut off, so every line in the file is a
    whole record. :meth:`append` writes one line with one ``write`` call, then flushes and (with
    ``fsync=True``) syncs it, so a record is either all there or not there. Use as a context manager.

    Args:
        path: the file (created with its folder if missing).
        fsync: sync to disk after every record (default); ``False`` only flushes to the OS, which
            survives a killed process but not a power loss.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._f = open(self.path, "a+b")
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        f = self._f
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # walk back to the last newline; everything after it is a cut-off record
        pos, block = size, 4096
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)

    def append(self, record: Any) -> None:
        """Write one record (a dict, or an object with ``to_dict``)."""
        self._f.write(_line(record).encode("utf-8"))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
