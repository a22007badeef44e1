"""Which modules of a model a function acts on: one matching rule for every converter in lmops."""

from __future__ import annotations

from typing import Iterable

__all__ = ["is_excluded"]


def is_excluded(name: str, patterns: Iterable[str]) -> bool:
    """True when some pattern equals a run of consecutive dotted components of module ``name``:
    ``"lm_head"`` matches ``lm_head``, ``"mlp"`` every ``...mlp.*`` module, ``"layers.0"`` layer 0 only
    (not ``layers.10``). A trailing ``.weight`` on a pattern is ignored."""
    parts = name.split(".")
    for pattern in patterns:
        p = pattern.removesuffix(".weight").split(".")
        if any(parts[i : i + len(p)] == p for i in range(len(parts) - len(p) + 1)):
            return True
    return False
