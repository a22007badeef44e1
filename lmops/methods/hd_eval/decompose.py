"""Decomposition: the LLM splits a criterion into finer sub-criteria.

The request (:func:`decomposition_request`) asks for a JSON list of ``{"name", "description"}`` objects;
:func:`parse_subcriteria` also accepts a JSON list of strings and numbered or bulleted lines
(``1. name: description``), since models drift from the format. A malformed answer is retried by
:func:`lmops.llm.ask`, then the criterion stays a leaf and the reason is kept. The prompt wording is
ours (the paper's is unconfirmed): a choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ...llm import ask, extract_json
from .tree import SEP

__all__ = ["DecompositionResult", "decompose", "decomposition_request", "parse_subcriteria"]

DECOMPOSE_MARK = "Criterion to decompose: "
_SYSTEM = "You design fine-grained evaluation criteria for judging model outputs."


def decomposition_request(task: str, criterion: str, description: str, low: int = 2, high: int = 5) -> str:
    """The user message asking to split ``criterion`` (displayed path) into ``low``..``high`` sub-criteria."""
    return (
        f"Evaluation task: {task}\n{DECOMPOSE_MARK}{criterion}\nDefinition: {description}\n\n"
        f"Split this criterion into {low} to {high} finer, non-overlapping sub-criteria that together cover "
        "it, each judgeable on its own from the sample.\n"
        'Answer with a JSON list only: [{"name": "short name", "description": "what to judge"}, ...]'
    )


_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+(.+?)\s*$")
_SPLIT = re.compile(r"\s*(?::|\s[-\u2013\u2014]\s)\s*")


def _clean_name(name: str) -> str:
    name = re.sub(r"[*_`\"]+", "", name)  # markdown emphasis and quotes around names
    name = " ".join(name.replace(SEP, "-").split()).strip(" .:-")
    return name[:60].strip()


def _item(value: object) -> tuple[str, str]:
    if isinstance(value, dict):
        name = next((value[k] for k in ("name", "criterion", "title") if isinstance(value.get(k), str)), None)
        if name is None:
            raise ValueError(f"a sub-criterion object has no 'name': {value!r:.80}")
        desc = next((value[k] for k in ("description", "definition") if isinstance(value.get(k), str)), "")
    elif isinstance(value, str):
        parts = _SPLIT.split(value.strip(), maxsplit=1)
        name, desc = parts[0], parts[1] if len(parts) > 1 else ""
    else:
        raise TypeError(f"a sub-criterion must be a string or an object, got {type(value).__name__}")
    clean = _clean_name(name)
    if not clean:
        raise ValueError(f"empty sub-criterion name in {value!r:.80}")
    return clean, " ".join(desc.split()) or clean


def parse_subcriteria(text: str, low: int = 2, high: int = 5, *, parent: str | None = None) -> list[tuple[str, str]]:
    """``[(name, description), ...]`` from an answer: a JSON list (of objects or strings) or numbered /
    bulleted lines. Duplicate names (case-insensitive) and the parent's own name are dropped; a list
    longer than ``high`` is cut; fewer than ``low`` raises ``ValueError`` (so :func:`ask` retries)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    try:
        items = extract_json(text, expect=list)
    except ValueError:
        items = [m.group(1) for m in map(_ITEM.match, text.splitlines()) if m]
    if not items:
        raise ValueError(f"no list of sub-criteria in the answer: {text[:80]!r}")
    out: list[tuple[str, str]] = []
    seen = {parent.lower()} if parent else set()
    for value in items:
        name, desc = _item(value)
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append((name, desc))
    if len(out) < low:
        raise ValueError(f"expected at least {low} distinct sub-criteria, got {len(out)}: {text[:80]!r}")
    return out[:high]


@dataclass
class DecompositionResult:
    """Per criterion asked: its sub-criteria, or ``None`` with the reason in ``errors``."""

    children: list[list[tuple[str, str]] | None]
    errors: list[str | None]
    retries: int = 0


def decompose(
    llm,
    task: str,
    criteria: Sequence[tuple[str, str]],
    *,
    low: int = 2,
    high: int = 5,
    chat: bool = True,
    retries: int = 2,
) -> DecompositionResult:
    """Ask ``llm`` to split each ``(displayed path, description)`` in one batch (chat with a system
    message when ``chat``, else a plain prompt)."""
    users = [decomposition_request(task, name, desc, low, high) for name, desc in criteria]
    if chat:
        requests: list = [[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": u}] for u in users]
    else:
        requests = [f"{_SYSTEM}\n\n{u}\n" for u in users]
    got = ask(llm, requests, lambda text: parse_subcriteria(text, low, high), chat=chat, retries=retries,
              max_new_tokens=512)
    children: list[list[tuple[str, str]] | None] = []
    errors: list[str | None] = [None] * len(criteria)
    for i, reason in got.failures:
        errors[i] = reason
    for i, ((name, _), value) in enumerate(zip(criteria, got.values)):
        if value is not None:  # a sub-criterion named like its parent adds nothing: drop it here
            parent = name.split(" > ")[-1].strip().lower()
            value = [(n, d) for n, d in value if n.lower() != parent]
            if len(value) < low:
                errors[i], value = f"ValueError: fewer than {low} sub-criteria besides the criterion itself", None
        children.append(value)
    return DecompositionResult(children, errors, got.retries)
