"""Asking an LLM for something a program can use: parse each answer, retry the ones that do not parse,
then count and skip what still fails, so a long run never stops on one malformed answer.

:func:`ask` is what every method package calls. Its retry rule: a deterministic backend repeats a
greedy answer, and a cache would replay it, so attempt ``i`` (from 1) asks again at
``retry_temperature`` (when the request was greedy) with ``n = i + 1`` samples, a request no earlier
attempt made, and takes the first sample that parses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from .errors import LLMError
from .protocol import LLM, Message

__all__ = ["AskResult", "ask", "extract_json"]

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def extract_json(text: str, *, expect: type | tuple[type, ...] | None = None) -> Any:
    """The first JSON value in ``text``: a fenced ```json block, the whole text, or the first ``{...}`` /
    ``[...]`` span that parses (models often wrap JSON in prose). ``expect`` restricts the type
    (``dict``, ``list``). Raises ``ValueError`` when nothing parses."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        stripped = candidate.strip()
        try:
            value = json.loads(stripped)
            if expect is None or isinstance(value, expect):
                return value
        except json.JSONDecodeError:
            pass
        for i, ch in enumerate(stripped):
            if ch not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(stripped, i)
            except json.JSONDecodeError:
                continue
            if expect is None or isinstance(value, expect):
                return value
    raise ValueError(f"no JSON{'' if expect is None else ' ' + str(expect)} value in the answer: {text[:120]!r}")


@dataclass
class AskResult(Generic[T]):
    """Per request: the parsed value, or ``None`` where every attempt failed.

    Attributes:
        values: one per request, in order.
        raw: the answer text each value was parsed from (``None`` where it failed).
        failures: ``(request index, last error)`` for each request skipped.
        retries: how many extra attempts were made in all.
        backend_failed: the indices among ``failures`` whose last attempt was a backend error
            (:class:`LLMError`: the server failed after its retries) rather than an unparsable answer.
    """

    values: list[T | None]
    raw: list[str | None]
    failures: list[tuple[int, str]] = field(default_factory=list)
    retries: int = 0
    backend_failed: set[int] = field(default_factory=set)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_malformed(self) -> int:
        """Requests skipped because every answer failed to parse."""
        return len(self.failures) - len(self.backend_failed)


def ask(
    llm: LLM,
    requests: Sequence[str] | Sequence[list[Message]],
    parse: Callable[[str], T],
    *,
    chat: bool = False,
    retries: int = 2,
    retry_temperature: float = 0.7,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: str | Sequence[str] | None = None,
) -> AskResult[T]:
    """Send ``requests`` (prompts, or conversations with ``chat=True``) in one batch, parse each answer
    with ``parse`` (which raises ``ValueError``/``KeyError``/``TypeError`` on a bad answer), and retry
    the failures up to ``retries`` times (see the module docstring). A backend error after the
    backend's own retries (:class:`LLMError`) also counts as a failure of that batch's requests.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an int >= 0, got {retries!r}")
    if not callable(parse):
        raise TypeError(f"parse: expected a callable str -> value, got {type(parse).__name__}")
    send = llm.chat if chat else llm.generate
    values: list[Any] = [None] * len(requests)
    raw: list[str | None] = [None] * len(requests)
    errors: dict[int, str] = {}
    backend: set[int] = set()
    pending = list(range(len(requests)))
    extra = 0
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            extra += len(pending)
        temp = temperature if attempt == 0 or temperature > 0 else retry_temperature
        try:
            answers = send([requests[i] for i in pending], max_new_tokens=max_new_tokens, temperature=temp,
                           top_p=top_p, stop=stop, n=attempt + 1)
        except LLMError as exc:
            for i in pending:
                errors[i] = str(exc)
                backend.add(i)
            continue
        still = []
        for i, samples in zip(pending, answers):
            for text in samples:
                try:
                    values[i] = parse(text)
                    raw[i] = text
                    break
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    backend.discard(i)
            else:
                still.append(i)
        pending = still
    return AskResult(values, raw, [(i, errors.get(i, "no answer")) for i in pending], extra, backend & set(pending))
