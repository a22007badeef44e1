"""What every verb of the ``lmops`` command shares: the user-error exception and argument types."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_USAGE", "Fail", "positive_float", "positive_int", "require_transformers"]

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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def require_transformers() -> None:
    """``Fail`` with the install command when transformers (the ``hf`` extra) is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise Fail('needs transformers, from the hf extra: pip install --no-build-isolation -e ".[hf]"') from None
