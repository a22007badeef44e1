"""QA generation: the teacher reads each document and writes question-answer pairs about it (paper,
section 3.1), through :func:`lmops.llm.ask` so that a malformed answer is retried, then counted and
skipped, never fatal.

The prompt is the paper's, verbatim (:data:`QA_PROMPT`). The paper labels 10,000 documents per domain
with gpt-3.5-turbo and distils a LLaMA-7B on that output to label the rest; here the teacher is any
:class:`~lmops.llm.LLM` (an API, a local model, the distilled student), and the distillation step is
the user's (train a model on ``qa.jsonl``, then point ``--llm`` at it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...common.jsonl import JsonlAppender
from ...common.progress import progress_bar
from ...llm import LLM, ask, extract_json
from .config import QAConfig
from .data import Document, DocumentQA, QAPair, read_qa

__all__ = ["QA_PROMPT", "QAReport", "build_prompt", "generate_qa", "parse_qa"]

QA_PROMPT = (
    "{DOCUMENT} Ask a few questions to help understand the above passage about {DOMAIN} and give the "
    "corresponding answers in JSON list (each JSON contain two keys: question and answer)"
)


def build_prompt(document: str, domain: str, *, max_document_chars: int | None = None) -> str:
    """The paper's prompt for one document (cut to ``max_document_chars`` characters when given)."""
    if not isinstance(document, str) or not isinstance(domain, str) or not domain.strip():
        raise ValueError("document, domain: expected a str and a non-empty str")
    if max_document_chars is not None:
        document = document[:max_document_chars]
    # str.replace, not str.format: documents hold braces
    return QA_PROMPT.replace("{DOMAIN}", domain).replace("{DOCUMENT}", document)


def parse_qa(text: str) -> tuple[list[QAPair], int]:
    """The QA pairs in a teacher's answer, and how many list items were dropped.

    The answer's first JSON list (fenced, bare, or inside prose; see :func:`lmops.llm.extract_json`) is
    read; each item must be an object with non-empty string ``question`` and ``answer`` (whitespace
    stripped), others are dropped. Raises ``ValueError`` when there is no list or no valid item, which
    :func:`lmops.llm.ask` retries and then counts as a failure.
    """
    items = extract_json(text, expect=list)
    pairs: list[QAPair] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        q, a = item.get("question"), item.get("answer")
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            pairs.append(QAPair(q.strip(), a.strip()))
    if not pairs:
        raise ValueError(f"the JSON list holds no {{'question': str, 'answer': str}} item ({len(items)} items)")
    return pairs, len(items) - len(pairs)


@dataclass
class QAReport:
    """Counts of one :func:`generate_qa` run.

    Attributes:
        documents: documents given; skipped_existing: already in the output (resume); asked: sent to the
        teacher; ok / failed: answered with at least one pair / with none after the retries;
        pairs: QA pairs written; dropped_items: malformed list items dropped; retries: extra attempts.
        failures: ``(document id, last error)`` per failed document (the first 100).
    """

    documents: int = 0
    skipped_existing: int = 0
    asked: int = 0
    ok: int = 0
    failed: int = 0
    pairs: int = 0
    dropped_items: int = 0
    retries: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def generate_qa(
    llm: LLM,
    documents: Sequence[Document],
    domain: str,
    out_path: str | os.PathLike,
    *,
    config: QAConfig | None = None,
    retry_failed: bool = False,
    on_batch: Callable[[QAReport], None] | None = None,
    progress: bool = True,
) -> QAReport:
    """Ask the teacher for QA pairs about every document and append one :class:`DocumentQA` per
    document to ``out_path`` (JSONL), batch by batch.

    Resumable: documents whose id is already in ``out_path`` are skipped (with ``retry_failed``, those
    recorded as failed are asked again; the new record replaces the old one on reading). An empty
    ``documents`` writes nothing and returns a report of zeros.

    Args:
        llm: the teacher (wrap it in :class:`~lmops.llm.CachedLLM` to make reruns free).
        documents: the corpus; ids must be unique.
        domain: the ``{DOMAIN}`` of the prompt (e.g. ``"biomedicine"``).
        out_path: the JSONL output.
        config: :class:`QAConfig` (batching, retries, chat or completion).
        on_batch: called with the running report after each batch.
    """
    cfg = config or QAConfig()
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError(f"domain: expected a non-empty string, got {domain!r}")
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        raise ValueError("documents: ids must be unique")
    out_path = Path(out_path)
    done: dict[str, DocumentQA] = read_qa(out_path)[0] if out_path.exists() else {}
    todo = [d for d in documents if d.id not in done or (retry_failed and done[d.id].status == "failed")]
    report = QAReport(documents=len(documents), skipped_existing=len(documents) - len(todo))
    if not todo:
        return report
    bar = progress_bar(len(todo), desc="domain-rc qa", unit="doc", disable=not progress)
    with JsonlAppender(out_path) as out, bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            prompts = [build_prompt(d.text, domain, max_document_chars=cfg.max_document_chars) for d in batch]
            requests: list = [[{"role": "user", "content": p}] for p in prompts] if cfg.chat else prompts
            result = ask(llm, requests, parse_qa, chat=cfg.chat, retries=cfg.retries,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
            errors = dict(result.failures)
            report.asked += len(batch)
            report.retries += result.retries
            for i, doc in enumerate(batch):
                value = result.values[i]
                if value is None:
                    record = DocumentQA(doc.id, doc.text, [], "failed", errors.get(i, "no answer"))
                    report.failed += 1
                    if len(report.failures) < 100:
                        report.failures.append((doc.id, record.error or ""))
                else:
                    pairs, dropped = value
                    record = DocumentQA(doc.id, doc.text, pairs, "ok", None, dropped)
                    report.ok += 1
                    report.pairs += len(pairs)
                    report.dropped_items += dropped
                out.append(record)
            bar.update(len(batch))
            bar.set_postfix(ok=report.ok, failed=report.failed)
            if on_batch is not None:
                on_batch(report)
    return report
