"""The teacher's part of a round, through :mod:`lmops.llm`.

- Round 1 (:func:`collect_rationales` without ``mistakes``): rationales for *every* training question
  (the author's answer in Raibows/Learn-to-Reason#2: the initial round covers the whole training set).
- Rounds >= 2 (with ``mistakes``): a customised correction for each question the student got wrong in
  this round's exam, asked with the feedback prompt showing one of its wrong rationales.

Each question is asked once for ``samples`` rationales (``n``). Every answer is parsed
(``task.parse_teacher``) and checked against the gold answer: correct ones are kept (distinct), wrong
ones are filtered out and counted (the likely reason 8,193 of CSQA's 9,740 questions have round-1
data). A question none of whose answers parses is retried through :func:`lmops.llm.ask`; still failing,
it is counted and skipped. A failed request (:class:`lmops.llm.LLMError` after the backend's retries, or a
``ValueError`` such as a prompt too long for a local teacher) is asked again question by question and
handled the same way, so no teacher answer ever stops a round. Records are appended per batch, so a killed run asks nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...common.jsonl import JsonlAppender
from ...common.progress import progress_bar
from ...llm import LLM, LLMError, ask
from .config import TeacherConfig
from .data import Question, TeacherRecord, read_records
from .tasks import ReasoningTask, TeacherAnswer

__all__ = ["TeacherResult", "collect_rationales"]

_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError)
# a failed request: the protocol's error after the backend's retries, or a request the backend refuses
# (a local model raises ValueError for a prompt longer than its context)
_BACKEND_ERRORS = (LLMError, ValueError)


@dataclass
class TeacherResult:
    """The teacher's records for a round and their counts.

    Attributes:
        records: one per question asked, in question order.
        asked: questions asked.
        with_rationale: questions with at least one kept rationale.
        rationales: kept rationales in all.
        rejected_wrong: parsable rationales whose answer was wrong (filtered out).
        malformed: answers of the first request without a parsable final answer.
        failed: questions skipped because no answer parsed after the retries.
        retries: requests made through :func:`lmops.llm.ask` for questions whose first answers all failed.
        resumed: questions read back from an earlier, interrupted run.
    """

    records: list[TeacherRecord]
    asked: int
    with_rationale: int
    rationales: int
    rejected_wrong: int
    malformed: int
    failed: int
    retries: int
    resumed: int = 0

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in ("asked", "with_rationale", "rationales", "rejected_wrong",
                                               "malformed", "failed", "retries", "resumed")}


def _sort_answers(task: ReasoningTask, gold: str, parsed: Sequence[TeacherAnswer]) -> tuple[list[str], list[dict]]:
    kept: dict[str, None] = {}
    rejected = []
    for ans in parsed:
        if task.answers_match(ans.answer, gold):
            kept.setdefault(ans.rationale, None)
        else:
            rejected.append({"text": ans.rationale, "prediction": ans.answer})
    return list(kept), rejected


def collect_rationales(
    teacher: LLM,
    task: ReasoningTask,
    questions: Sequence[Question],
    config: TeacherConfig,
    *,
    round: int,
    mistakes: Mapping[str, str] | None = None,
    path: str | os.PathLike | None = None,
    progress: bool = False,
) -> TeacherResult:
    """Ask the teacher (see the module docstring).

    Args:
        teacher: any :class:`lmops.llm.LLM`.
        task: prompts, parser and answer check.
        questions: round 1: the whole training set; later rounds: the set the mistakes refer to.
        config: samples, temperature, retries, chat, batch size.
        round: the round number (stored in the records).
        mistakes: ``{question id: a wrong student rationale}``: ask only these, with the feedback prompt
            (``kind="correction"``); ``None``: ask every question for a rationale (``kind="rationale"``).
        path: ``teacher.jsonl`` to append to and resume from.
    """
    by_id = {q.id: q for q in questions}
    if mistakes is None:
        targets = list(questions)
    else:
        unknown = [qid for qid in mistakes if qid not in by_id]
        if unknown:
            raise ValueError(f"mistakes: question ids {unknown[:3]} are not among the questions")
        targets = [q for q in questions if q.id in mistakes]
    done: dict[str, TeacherRecord] = {}
    if path is not None and Path(path).exists():
        with JsonlAppender(path):  # drops a line cut by a kill
            pass
        done = {r.qid: r for r in read_records(path, TeacherRecord)}
    resumed = sum(q.id in done for q in targets)
    todo = [q for q in targets if q.id not in done]
    retries = 0
    appender = JsonlAppender(path) if path is not None else None
    bar = progress_bar(len(todo), desc=f"teacher round {round}", unit="q") if progress and todo else None
    try:
        for start in range(0, len(todo), config.batch_size):
            chunk = todo[start: start + config.batch_size]
            records, extra = _ask_chunk(teacher, task, chunk, config, round, mistakes)
            retries += extra
            for record in records:
                done[record.qid] = record
                if appender is not None:
                    appender.append(record)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if appender is not None:
            appender.close()
        if bar is not None:
            bar.close()
    records = [done[q.id] for q in targets]
    return TeacherResult(
        records=records,
        asked=len(records),
        with_rationale=sum(bool(r.rationales) for r in records),
        rationales=sum(len(r.rationales) for r in records),
        rejected_wrong=sum(len(r.rejected) for r in records),
        malformed=sum(r.malformed for r in records),
        failed=sum(r.failed for r in records),
        retries=retries,
        resumed=resumed,
    )


def _ask_chunk(
    teacher: LLM,
    task: ReasoningTask,
    chunk: list[Question],
    config: TeacherConfig,
    round: int,
    mistakes: Mapping[str, str] | None,
) -> tuple[list[TeacherRecord], int]:
    prompts = [task.teacher_prompt(q.question) if mistakes is None else task.feedback_prompt(q.question, mistakes[q.id])
               for q in chunk]
    requests: list = [[{"role": "user", "content": p}] for p in prompts] if config.chat else prompts
    send = teacher.chat if config.chat else teacher.generate
    try:
        answers = send(requests, n=config.samples, temperature=config.temperature,
                       max_new_tokens=config.max_new_tokens)
        error = None
    except _BACKEND_ERRORS as exc:
        if len(chunk) > 1:  # one bad request (e.g. too long for a local model) must not sink the others
            records, extra = [], 0
            for q in chunk:
                got, more = _ask_chunk(teacher, task, [q], config, round, mistakes)
                records += got
                extra += more
            return records, extra
        # the backend's own retries are spent: retry through ask below
        answers, error = [[]], f"{type(exc).__name__}: {exc}"
    parsed: list[list[TeacherAnswer]] = []
    malformed: list[int] = []
    errors: list[str | None] = []
    for samples in answers:
        ok, bad, last = [], 0, error
        for text in samples:
            try:
                ok.append(task.parse_teacher(text))
            except _PARSE_ERRORS as exc:
                bad += 1
                last = f"{type(exc).__name__}: {exc}"
        parsed.append(ok)
        malformed.append(bad)
        errors.append(last)
    retry = [i for i, p in enumerate(parsed) if not p]
    extra = 0
    if retry and config.retries > 0:
        try:
            result = ask(teacher, [requests[i] for i in retry], task.parse_teacher, chat=config.chat,
                         retries=config.retries - 1, temperature=config.temperature,
                         max_new_tokens=config.max_new_tokens)
        except ValueError as exc:  # a request the backend refuses (ask itself retries only LLMError)
            for i in retry:
                errors[i] = f"{type(exc).__name__}: {exc}"
        else:
            extra = len(retry) + result.retries
            failed_errors = dict(result.failures)
            for j, i in enumerate(retry):
                if result.values[j] is not None:
                    parsed[i] = [result.values[j]]
                else:
                    errors[i] = failed_errors.get(j, errors[i])
    records = []
    for i, q in enumerate(chunk):
        kept, rejected = _sort_answers(task, q.answer, parsed[i])
        failed = not parsed[i]
        records.append(TeacherRecord(
            round=round, qid=q.id, kind="rationale" if mistakes is None else "correction",
            rationales=kept, rejected=rejected, malformed=malformed[i], failed=failed,
            error=errors[i] if failed else None,
            student_rationale=None if mistakes is None else mistakes[q.id],
        ))
    return records, extra

