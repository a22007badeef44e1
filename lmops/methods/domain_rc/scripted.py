"""An offline teacher for the demo and the tests: deterministic QA pairs made from the document's own
sentences, as a :class:`~lmops.llm.FunctionLLM`. It is no language model; it only answers in the shape
the paper's prompt asks for, and can answer badly on purpose (no JSON, or a list of bad items)."""

from __future__ import annotations

import hashlib
import json
import re

from ...llm import FunctionLLM
from .qa import QA_PROMPT

__all__ = ["scripted_teacher"]

_ASK = " " + QA_PROMPT.split("{DOCUMENT} ", 1)[1].split("{DOMAIN}", 1)[0]  # " Ask a few ... passage about "
_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def _document(prompt: str) -> str:
    text = prompt
    if text.startswith("user: "):  # FunctionLLM's plain chat rendering of one user message
        text = text[len("user: "):]
    return text.split(_ASK, 1)[0].strip()


def _hash01(text: str) -> float:
    # a cryptographic hash: CRC32 of texts that differ in one character are close to each other
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def scripted_teacher(
    *,
    max_pairs: int = 3,
    malformed_rate: float = 0.0,
    malformed: str = "always",
    bad_items: bool = False,
    name: str = "domain-rc-scripted",
) -> FunctionLLM:
    """A scripted teacher: for each of the document's first ``max_pairs`` sentences, the question
    "What does the passage say about <its first words>?" answered by the sentence, as a JSON list in a
    ```json fence after a line of prose (as chat models answer).

    Args:
        malformed_rate: the share of documents (chosen by a hash of the text, so the same ones every
            run) answered with prose and no JSON.
        malformed: ``"always"``: those documents never get a parsable answer (every retry fails too);
            ``"first"``: only the first, greedy attempt is malformed (a retry at temperature > 0 or a
            second sample succeeds).
        bad_items: add items that are not ``{"question": str, "answer": str}`` to every list (they are
            dropped by :func:`~lmops.methods.domain_rc.parse_qa`).
    """
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError(f"malformed_rate: expected a number in [0, 1], got {malformed_rate!r}")
    if malformed not in ("always", "first"):
        raise ValueError(f"malformed: expected 'always' or 'first', got {malformed!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs: expected a positive int, got {max_pairs!r}")

    def answer(prompt: str, *, temperature: float = 0.0, sample: int = 0, **_: object) -> str:
        doc = _document(prompt)
        bad = _hash01(doc) < malformed_rate
        if bad and (malformed == "always" or (temperature == 0.0 and sample == 0)):
            return "Sure! Here are a few questions about the passage: what is it about, and why does it matter?"
        sentences = [s.strip() for s in _SENTENCE.findall(doc)] or [doc]
        pairs: list[object] = []
        for s in sentences[:max_pairs]:
            topic = " ".join(s.rstrip(".!?").split()[:4])
            pairs.append({"question": f"What does the passage say about {topic}?", "answer": s})
        if bad_items:
            pairs += [{"question": "Missing answer?"}, "not an object", {"question": 1, "answer": 2}]
        return "Here are some questions and answers:\n```json\n" + json.dumps(pairs, indent=1) + "\n```"

    return FunctionLLM(answer, name=name)
