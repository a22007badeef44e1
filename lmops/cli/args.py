"""What every verb of the ``lmops`` command shares: the user-error exception and argument types."""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "EXIT_USAGE",
    "Fail",
    "fraction",
    "fraction_below_one",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "require_transformers",
]

EXIT_USAGE = 2


class Fail(Exception):
    """A user error: printed as one line, exit code 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def report_skipped(path: object, bad: list[tuple[int, str]], shown: int = 5) -> None:
    """Print, on stderr, the first ``shown`` malformed lines a reader skipped (``(line, reason)`` pairs)
    and how many there were in all."""
    for line, reason in bad[:shown]:
        print(f"{path}:{line}: skipped ({reason})", file=sys.stderr)
    if bad:
        print(f"{path}: {len(bad)} malformed line(s) skipped", file=sys.stderr)


def threads_arg(text: str) -> int | str:
    """``--threads``: a positive int, or ``auto`` (the decode engine chooses by timing its steps)."""
    return "auto" if text == "auto" else positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _number(text: str, convert, ok, expected: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    return _number(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def fraction_below_one(text: str) -> float:
    """A number in [0, 1) (a held-out share, say)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def require_transformers() -> None:
    """``Fail`` with the install command when transformers (the ``hf`` extra) is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise Fail('needs transformers, from the hf extra: pip install --no-build-isolation -e ".[hf]"') from None
