"""Turning clusters into training texts, and mixing in general instructions (paper, section 3.2).

A cluster's text is its documents, concatenated in cluster order (the seed first), then all their QA
pairs, shuffled together (seeded). The template (:class:`ClusterTemplate`) is a choice: the paper shows
no exact layout. The default, for a cluster of two documents with two pairs each::

    <document 1>

    <document 2>

    Question: <q>
    Answer: <a>

    Question: <q>
    Answer: <a>
    ...

General instructions are mixed in by tokens: ``ratio`` general tokens per domain token (AdaptLLM's
1:1 by default), sampled without repetition in a seeded order unless ``allow_repeat``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .data import Cluster, DocumentQA, Example, QAPair

__all__ = ["ClusterTemplate", "MixReport", "format_cluster", "format_clusters", "mix_general"]

LengthFn = Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class ClusterTemplate:
    """The layout of a cluster's text: ``document_separator`` between documents,
    ``section_separator`` between the documents and the QA pairs, each pair as ``qa_format`` (with
    ``{question}`` and ``{answer}``), ``qa_separator`` between pairs."""

    document_separator: str = "\n\n"
    section_separator: str = "\n\n"
    qa_format: str = "Question: {question}\nAnswer: {answer}"
    qa_separator: str = "\n\n"

    def __post_init__(self) -> None:
        if "{question}" not in self.qa_format or "{answer}" not in self.qa_format:
            raise ValueError(f"qa_format: expected '{{question}}' and '{{answer}}' in it, got {self.qa_format!r}")

    def qa_block(self, pairs: Sequence[QAPair]) -> str:
        # replace, not format: questions and answers hold braces
        return self.qa_separator.join(
            self.qa_format.replace("{question}", p.question).replace("{answer}", p.answer) for p in pairs
        )

    def render(self, documents: Sequence[str], pairs: Sequence[QAPair]) -> str:
        text = self.document_separator.join(documents)
        return text + self.section_separator + self.qa_block(pairs) if pairs else text


def format_cluster(
    cluster: Cluster, docs: Mapping[str, DocumentQA], rng: random.Random, template: ClusterTemplate | None = None
) -> str:
    """The cluster's training text: its documents, then all their QA pairs shuffled with ``rng``."""
    template = template or ClusterTemplate()
    missing = [i for i in cluster.doc_ids if i not in docs]
    if missing:
        raise ValueError(f"cluster {cluster.id}: document id(s) {missing[:5]} are not in the QA data")
    members = [docs[i] for i in cluster.doc_ids]
    pairs = [p for d in members for p in d.qa]
    rng.shuffle(pairs)
    return template.render([d.text for d in members], pairs)


def format_clusters(
    clusters: Sequence[Cluster], docs: Mapping[str, DocumentQA], *, seed: int = 0, template: ClusterTemplate | None = None
) -> list[Example]:
    """Every cluster as a domain :class:`Example` (``id = "cluster-<id>"``); one seeded RNG for all."""
    rng = random.Random(seed)
    return [Example(f"cluster-{c.id}", "domain", format_cluster(c, docs, rng, template)) for c in clusters]


@dataclass
class MixReport:
    """Tokens and examples of each kind after :func:`mix_general`; ``achieved_ratio`` is general tokens
    per domain token (below the asked ratio when the general data ran out)."""

    domain_examples: int = 0
    domain_tokens: int = 0
    general_examples: int = 0
    general_tokens: int = 0
    general_available: int = 0
    asked_ratio: float = 0.0
    achieved_ratio: float = 0.0
    repeated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mix_general(
    domain: Sequence[Example],
    general: Sequence[Example],
    length_fn: LengthFn,
    *,
    ratio: float = 1.0,
    seed: int = 0,
    allow_repeat: bool = False,
) -> tuple[list[Example], MixReport]:
    """Domain examples plus general ones worth ``ratio`` times the domain tokens, shuffled together.

    General examples are taken in a seeded random order until their tokens reach ``ratio *
    domain_tokens`` (the last one may overshoot by less than its own length); when they run out, all
    are used (or, with ``allow_repeat``, the order starts again). Lengths from ``length_fn``.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0:
        raise ValueError(f"ratio: expected a number >= 0, got {ratio!r}")
    domain_tokens = sum(length_fn([e.text for e in domain])) if domain else 0
    report = MixReport(domain_examples=len(domain), domain_tokens=domain_tokens, general_available=len(general),
                       asked_ratio=float(ratio))
    rng = random.Random(seed)
    target = ratio * domain_tokens
    chosen: list[Example] = []
    if general and target > 0:
        lengths = length_fn([e.text for e in general])
        if allow_repeat and max(lengths) == 0:
            raise ValueError("general: every general example is empty; nothing can reach the ratio")
        rounds = 0
        while report.general_tokens < target:
            order = list(range(len(general)))
            rng.shuffle(order)
            for i in order:
                if report.general_tokens >= target:
                    break
                e = general[i]
                chosen.append(e if rounds == 0 else Example(f"{e.id}@{rounds}", e.kind, e.text))
                report.general_tokens += lengths[i]
            rounds += 1
            if not allow_repeat:
                break
        report.repeated = rounds > 1
    report.general_examples = len(chosen)
    report.achieved_ratio = report.general_tokens / domain_tokens if domain_tokens else 0.0
    mixed = list(domain) + chosen
    rng.shuffle(mixed)
    return mixed, report
