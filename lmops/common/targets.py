"""Which modules of a model a converter acts on: one matching rule for every converter in lmops.

``lmops.bitnet.convert`` (``exclude``), ``lmops.reslora.apply_reslora`` (``target_modules``),
``lmops.mole.apply_mole`` (``target_modules``) and the reader of transformers' BitNet checkpoints
(``modules_to_not_convert``) all decide with :func:`match_target`.

Not covered on purpose: the keys of peft's ``rank_pattern`` / ``alpha_pattern`` in an adapter's
``adapter_config.json`` (:mod:`lmops.mole.peft`). Those are part of peft's file format, written by peft
and read with peft's own rule (regular expressions anchored at the end of the name), so that a rank
read by lmops is the rank peft used; they are file parsing, not a converter's choice of modules.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["match_target"]


def _components(pattern: object, argument: str) -> list[str]:
    if not isinstance(pattern, str):
        raise TypeError(f"{argument}: expected module names (strings), got {type(pattern).__name__} {pattern!r}")
    parts = pattern.removesuffix(".weight").split(".")
    if not all(parts):
        raise ValueError(
            f"{argument}: {pattern!r} is not a dotted module name (expected e.g. 'q_proj', 'mlp' or 'layers.0')"
        )
    return parts


def match_target(name: str, patterns: str | Iterable[str], *, argument: str = "patterns") -> str | None:
    """The first of ``patterns`` that matches module ``name``, or None.

    The rule: a pattern matches when its dotted components equal a run of consecutive dotted
    components of ``name``. So, for ``name = "model.layers.0.self_attn.q_proj"``:

    - ``"q_proj"``, ``"self_attn.q_proj"`` or the full name match (peft's "full name or dotted suffix");
    - ``"self_attn"``, ``"layers.0"`` or ``"model"`` match too (every module under that one);
    - ``"layers.1"`` does not, and ``"layers.1"`` never matches ``layers.10`` (whole components only);
    - ``"proj"`` and ``"q_pro"`` do not (no substrings), nor do regular expressions (``".*q_proj"``).

    A trailing ``.weight`` on a pattern is ignored (``"lm_head.weight"`` is ``"lm_head"``).
    ``patterns`` may be one string (one pattern, not its characters). Raises ``TypeError`` for a
    pattern that is not a string and ``ValueError`` for one with an empty component (``""``,
    ``"layers."``, ``"a..b"``); ``argument`` names the caller's argument in those messages.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    checked = [(pattern, _components(pattern, argument)) for pattern in patterns]  # all checked, not just the first
    parts = name.split(".")
    for pattern, p in checked:
        if any(parts[i : i + len(p)] == p for i in range(len(parts) - len(p) + 1)):
            return pattern
    return None
