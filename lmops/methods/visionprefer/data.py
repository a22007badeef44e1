"""VisionPrefer's records, their JSONL files, and preference pairs.

A line of a dataset file is one prompt with its images (the schema a secondary source gives for the
released data; the field names are a choice)::

    {"prompt_id": "p0", "prompt": "a red circle",
     "images": [{"image_id": "p0-0", "path": "images/p0-0.png", "generator": "sd15",
                 "scores": {"prompt_following": 4, "aesthetic": 3, ...},
                 "rationales": {"prompt_following": "The circle is red ...", ...}}, ...]}

``scores``/``rationales`` may be absent (not yet annotated) or partial (an aspect whose annotation
failed, absent or ``null``). Relative image paths are relative to the JSONL file's folder. A line that is not such a
record is reported with its line number and reason and skipped, never kept.

Pairs (:func:`make_pairs`): every pair of images of a prompt, the better one ``chosen``; pairs with
equal scores (ties) are dropped, as the paper drops ties (4.3M raw comparisons -> 1.2M preferences).
Per aspect, or aggregated: the weighted mean of the aspect scores (equal weights by default, a
choice: the paper's aggregation is unconfirmed).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...common.jsonl import read_jsonl, write_jsonl
from .config import ASPECTS, check_weights, default_weights

__all__ = [
    "AGGREGATE",
    "ImageEntry",
    "PairStats",
    "PreferencePair",
    "PromptRecord",
    "aggregate_score",
    "make_pairs",
    "read_pairs",
    "read_records",
    "write_pairs",
    "write_records",
]

AGGREGATE = "aggregate"


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _nonempty(name: str, value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


@dataclass
class ImageEntry:
    """One generated image of a prompt: its id, file path, the generator that made it, and its per-aspect
    ``scores`` (numbers) and ``rationales`` (text) where annotated."""

    image_id: str
    path: str
    generator: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_id = _nonempty("image_id", self.image_id)
        self.path = _nonempty("path", os.fspath(self.path) if isinstance(self.path, os.PathLike) else self.path)
        if not isinstance(self.generator, str):
            raise ValueError(f"generator: expected a string, got {self.generator!r}")
        for name, mapping in (("scores", self.scores), ("rationales", self.rationales)):
            if not isinstance(mapping, dict):
                raise ValueError(f"{name}: expected an object aspect -> value, got {type(mapping).__name__}")
            for aspect in mapping:
                if aspect not in ASPECTS:
                    raise ValueError(f"{name}: unknown aspect {aspect!r}; expected one of {ASPECTS}")
        self.scores = {a: _finite(f"scores[{a!r}]", v) for a, v in self.scores.items()}
        for a, v in self.rationales.items():
            if not isinstance(v, str):
                raise ValueError(f"rationales[{a!r}]: expected a string, got {type(v).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_id": self.image_id, "path": self.path, "generator": self.generator}
        if self.scores:
            out["scores"] = dict(self.scores)
        if self.rationales:
            out["rationales"] = dict(self.rationales)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageEntry":
        if not isinstance(data, Mapping):
            raise ValueError(f"image: expected an object, got {type(data).__name__}")
        if "image_id" not in data or "path" not in data:
            raise ValueError(f"image: expected keys 'image_id' and 'path', got {sorted(data)}")
        scores, rationales = data.get("scores") or {}, data.get("rationales") or {}
        if not isinstance(scores, Mapping) or not isinstance(rationales, Mapping):
            raise ValueError("scores, rationales: expected objects aspect -> value")
        # a null score is an aspect not annotated (a failed annotation), as if absent
        return cls(
            data["image_id"],
            data["path"],
            data.get("generator", "") or "",
            {a: v for a, v in scores.items() if v is not None},
            {a: v for a, v in rationales.items() if v is not None},
        )


@dataclass
class PromptRecord:
    """A prompt and its images (at least one; image ids distinct)."""

    prompt_id: str
    prompt: str
    images: list[ImageEntry]

    def __post_init__(self) -> None:
        self.prompt_id = _nonempty("prompt_id", self.prompt_id)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt: expected a non-empty string, got {self.prompt!r}")
        if not isinstance(self.images, list) or not self.images:
            raise ValueError("images: expected a non-empty list of images")
        self.images = [im if isinstance(im, ImageEntry) else ImageEntry.from_dict(im) for im in self.images]
        seen = set()
        for im in self.images:
            if im.image_id in seen:
                raise ValueError(f"images: image_id {im.image_id!r} appears twice")
            seen.add(im.image_id)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "images": [im.to_dict() for im in self.images]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptRecord":
        if not isinstance(data, Mapping):
            raise ValueError(f"record: expected an object, got {type(data).__name__}")
        images = data.get("images")
        if not isinstance(images, list):
            raise ValueError(f"images: expected a list, got {type(images).__name__}")
        return cls(data.get("prompt_id"), data.get("prompt"), [ImageEntry.from_dict(im) for im in images])


def _resolve(path: str, root: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p))


def read_records(path: str | os.PathLike, *, resolve: bool = True) -> tuple[list[PromptRecord], list[tuple[int, str]]]:
    """The prompt records of a JSONL file and ``(line number, reason)`` for each malformed line (skipped).

    With ``resolve`` relative image paths become paths under the file's folder. A repeated
    ``prompt_id`` is malformed (the first one is kept). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    result = read_jsonl(path, required=["prompt_id", "prompt", "images"])
    bad = list(result.malformed)
    skipped = {line for line, _ in bad}
    with open(path, encoding="utf-8") as f:  # the line number of each parsed object, to name a bad one
        lines = [n for n, text in enumerate(f, start=1) if text.strip() and n not in skipped]
    records: list[PromptRecord] = []
    seen: set[str] = set()
    for line, data in zip(lines, result.records):
        try:
            record = PromptRecord.from_dict(data)
        except (TypeError, ValueError) as exc:
            bad.append((line, str(exc)))
            continue
        if record.prompt_id in seen:
            bad.append((line, f"prompt_id {record.prompt_id!r} repeats an earlier line"))
            continue
        seen.add(record.prompt_id)
        if resolve:
            for im in record.images:
                im.path = _resolve(im.path, path.parent)
        records.append(record)
    return records, sorted(bad)


def write_records(path: str | os.PathLike, records: Iterable[PromptRecord], *, relative: bool = True) -> int:
    """Write records atomically; returns the count. With ``relative``, image paths under the file's
    folder are written relative to it (so the folder can move)."""
    path = Path(path)
    root = path.parent.expanduser().absolute()
    rows = []
    for record in records:
        row = record.to_dict()
        if relative:
            for im in row["images"]:
                p = Path(im["path"]).expanduser().absolute()
                if p.is_relative_to(root):
                    im["path"] = str(p.relative_to(root))
        rows.append(row)
    return write_jsonl(path, rows)


# -- pairs ------------------------------------------------------------------------------------------
def aggregate_score(scores: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float | None:
    """The weighted mean of ``scores`` over the aspects with a positive weight (equal weights by
    default); ``None`` when one of those aspects has no score."""
    w = default_weights() if weights is None else check_weights("weights", dict(weights))
    used = {a: v for a, v in w.items() if v > 0}
    if any(a not in scores for a in used):
        return None
    return sum(scores[a] * v for a, v in used.items()) / sum(used.values())


@dataclass
class PreferencePair:
    """One preference: ``chosen`` scored higher than ``rejected`` on ``aspect`` (or ``"aggregate"``) by
    ``margin`` (> 0)."""

    prompt_id: str
    prompt: str
    chosen: ImageEntry
    rejected: ImageEntry
    aspect: str
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "aspect": self.aspect,
            "margin": self.margin,
            "chosen": self.chosen.to_dict(),
            "rejected": self.rejected.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreferencePair":
        margin = _finite("margin", data.get("margin"))
        if margin <= 0:
            raise ValueError(f"margin: expected > 0, got {margin}")
        aspect = data.get("aspect")
        if aspect != AGGREGATE and aspect not in ASPECTS:
            raise ValueError(f"aspect: expected {AGGREGATE!r} or one of {ASPECTS}, got {aspect!r}")
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: expected a non-empty string, got {prompt!r}")
        return cls(
            _nonempty("prompt_id", data.get("prompt_id")),
            prompt,
            ImageEntry.from_dict(data.get("chosen")),
            ImageEntry.from_dict(data.get("rejected")),
            aspect,
            margin,
        )


@dataclass
class PairStats:
    """What :func:`make_pairs` did: pairs kept, ties dropped, images left out for a missing score."""

    pairs: int = 0
    ties: int = 0
    unscored_images: int = 0
    prompts: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "pairs": self.pairs,
            "ties": self.ties,
            "unscored_images": self.unscored_images,
            "prompts": self.prompts,
        }


def make_pairs(
    records: Iterable[PromptRecord],
    aspect: str = AGGREGATE,
    *,
    weights: Mapping[str, float] | None = None,
    tie_margin: float = 0.0,
) -> tuple[list[PreferencePair], PairStats]:
    """Every pair of images per prompt, the higher-scored one ``chosen``; a pair whose scores differ by
    ``tie_margin`` or less is a tie and dropped.

    Args:
        records: annotated prompt records.
        aspect: one of :data:`~lmops.methods.visionprefer.ASPECTS`, or ``"aggregate"`` (the weighted
            mean of the aspect scores, :func:`aggregate_score`).
        weights: aspect -> weight for ``"aggregate"`` (default: equal, a choice).
        tie_margin: the largest score difference still counted as a tie (>= 0).
    Images without the score needed are left out (counted in ``stats.unscored_images``).
    """
    if aspect != AGGREGATE and aspect not in ASPECTS:
        raise ValueError(f"aspect: expected {AGGREGATE!r} or one of {ASPECTS}, got {aspect!r}")
    if weights is not None:
        weights = check_weights("weights", dict(weights))
    _finite("tie_margin", tie_margin)
    if tie_margin < 0:
        raise ValueError(f"tie_margin: expected >= 0, got {tie_margin!r}")
    pairs: list[PreferencePair] = []
    stats = PairStats()
    for record in records:
        if not isinstance(record, PromptRecord):
            raise TypeError(f"records: expected PromptRecord items, got {type(record).__name__}")
        stats.prompts += 1
        scored = []
        for im in record.images:
            value = aggregate_score(im.scores, weights) if aspect == AGGREGATE else im.scores.get(aspect)
            if value is None:
                stats.unscored_images += 1
            else:
                scored.append((im, value))
        for (a, sa), (b, sb) in itertools.combinations(scored, 2):
            if abs(sa - sb) <= tie_margin:
                stats.ties += 1
                continue
            chosen, rejected = (a, b) if sa > sb else (b, a)
            pairs.append(PreferencePair(record.prompt_id, record.prompt, chosen, rejected, aspect, abs(sa - sb)))
    stats.pairs = len(pairs)
    return pairs, stats


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> int:
    """Write pairs as JSONL, atomically; returns the count."""
    return write_jsonl(path, pairs)


def read_pairs(path: str | os.PathLike) -> tuple[list[PreferencePair], list[tuple[int, str]]]:
    """The pairs of a JSONL file written by :func:`write_pairs`, and ``(line, reason)`` per malformed line."""
    path = Path(path)
    result = read_jsonl(path, required=["prompt_id", "prompt", "chosen", "rejected", "aspect", "margin"])
    bad = list(result.malformed)
    skipped = {line for line, _ in bad}
    with open(path, encoding="utf-8") as f:
        lines = [n for n, text in enumerate(f, start=1) if text.strip() and n not in skipped]
    pairs = []
    for line, data in zip(lines, result.records):
        try:
            pair = PreferencePair.from_dict(data)
        except (TypeError, ValueError) as exc:
            bad.append((line, str(exc)))
            continue
        for im in (pair.chosen, pair.rejected):
            im.path = _resolve(im.path, path.parent)
        pairs.append(pair)
    return pairs, sorted(bad)
