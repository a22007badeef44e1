"""What the method packages' config dataclasses share: field checks that raise a ``ValueError`` naming
the field and the expectation, and JSON-ready ``to_dict``/``from_dict``."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

__all__ = ["ConfigDict", "check_choice", "check_int", "check_number"]


def check_int(name: str, value: object, low: int) -> None:
    """``value`` is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def check_number(
    name: str, value: object, low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> None:
    """``value`` is a finite int or float (not a bool) within ``[low, high]`` (ends open as asked)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = value > low if open_low else value >= low
        if high is not None:
            ok = ok and (value < high if open_high else value <= high)
    if not ok:
        bound = f"{'>' if open_low else '>='} {low}"
        if high is not None:
            bound += f" and {'<' if open_high else '<='} {high}"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")


def check_choice(name: str, value: object, options: tuple[str, ...]) -> None:
    """``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")


class ConfigDict:
    """``to_dict``/``from_dict`` for a config dataclass; ``from_dict`` refuses unknown fields by name."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict of {cls.__name__} fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"data: unknown {cls.__name__} field(s) {unknown}")
        return cls(**data)
