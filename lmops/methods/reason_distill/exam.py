"""The student's exam (``infer_student_wrong.py``) and greedy evaluation.

The exam samples ``k`` rationales per training question from the few-shot CoT prompt, extracts and
checks each answer, and keeps the wrong ones as the next training round's negatives (and, from round 2,
as the mistakes the teacher corrects). The student is any :class:`lmops.llm.LLM`; the loop passes
``HFLocal(model, tokenizer, seed=...)``. Results are appended per batch of questions, so a killed exam
resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...common.jsonl import JsonlAppender
from ...common.progress import progress_bar
from ...llm import LLM
from .config import ExamConfig
from .data import ExamRecord, Question, read_records
from .tasks import ReasoningTask

__all__ = ["EvalResult", "ExamResult", "evaluate", "take_exam"]


@dataclass
class ExamResult:
    """An exam's records and its scores.

    Attributes:
        records: one per question, in the order of the questions.
        sample_accuracy: correct samples / all samples.
        question_accuracy: questions with at least one correct sample / questions.
        n_wrong_samples: wrong samples (before de-duplication).
        n_negatives: distinct wrong rationales kept as negatives.
        resumed: questions read back from an earlier, interrupted exam.
    """

    records: list[ExamRecord]
    sample_accuracy: float
    question_accuracy: float
    n_wrong_samples: int
    n_negatives: int
    resumed: int = 0

    def summary(self) -> dict:
        return {"questions": len(self.records), "sample_accuracy": self.sample_accuracy,
                "question_accuracy": self.question_accuracy, "wrong_samples": self.n_wrong_samples,
                "negatives": self.n_negatives, "resumed": self.resumed}


def _check_questions(questions: Sequence[Question]) -> list[Question]:
    qs = list(questions)
    if not all(isinstance(q, Question) for q in qs):
        raise TypeError("questions: expected a sequence of Question")
    ids = [q.id for q in qs]
    if len(set(ids)) != len(ids):
        raise ValueError("questions: ids must be unique")
    return qs


def take_exam(
    student: LLM,
    task: ReasoningTask,
    questions: Sequence[Question],
    config: ExamConfig,
    *,
    round: int,
    path: str | os.PathLike | None = None,
    progress: bool = False,
) -> ExamResult:
    """Sample ``config.k`` rationales per question and check them.

    With ``path``, records are appended there batch by batch (``JsonlAppender``) and questions already
    in the file are not asked again (resume)."""
    qs = _check_questions(questions)
    done: dict[str, ExamRecord] = {}
    if path is not None and Path(path).exists():
        with JsonlAppender(path):  # drops a line cut by a kill
            pass
        done = {r.qid: r for r in read_records(path, ExamRecord)}
    resumed = sum(q.id in done for q in qs)
    todo = [q for q in qs if q.id not in done]
    appender = JsonlAppender(path) if path is not None else None
    bar = progress_bar(len(todo), desc=f"exam round {round}", unit="q") if progress and todo else None
    try:
        for start in range(0, len(todo), config.batch_size):
            chunk = todo[start: start + config.batch_size]
            outs = student.generate([task.student_prompt(q.question) for q in chunk], n=config.k,
                                    max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    top_p=config.top_p, stop=list(config.stop))
            for q, samples in zip(chunk, outs):
                checked = [task.check(s, q.answer) for s in samples]
                record = ExamRecord(round=round, qid=q.id, question=q.question, answer=q.answer,
                                    samples=list(samples), predictions=[p for p, _ in checked],
                                    correct=[ok for _, ok in checked])
                done[q.id] = record
                if appender is not None:
                    appender.append(record)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if appender is not None:
            appender.close()
        if bar is not None:
            bar.close()
    records = [done[q.id] for q in qs]
    n_samples = sum(len(r.samples) for r in records)
    n_correct = sum(r.n_correct for r in records)
    return ExamResult(
        records=records,
        sample_accuracy=n_correct / n_samples if n_samples else 0.0,
        question_accuracy=sum(r.n_correct > 0 for r in records) / len(records) if records else 0.0,
        n_wrong_samples=n_samples - n_correct,
        n_negatives=sum(len(r.wrong_rationales) for r in records),
        resumed=resumed,
    )


@dataclass
class EvalResult:
    """Greedy accuracy on a question set: ``correct / total``, with each question's output."""

    accuracy: float
    correct: int
    total: int
    outputs: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}


def evaluate(
    student: LLM,
    task: ReasoningTask,
    questions: Sequence[Question],
    *,
    max_new_tokens: int = 128,
    stop: Sequence[str] = ("\n\n",),
    batch_size: int = 16,
) -> EvalResult:
    """Greedy decoding (``temperature=0``), one answer per question, checked by ``task``."""
    qs = _check_questions(questions)
    outputs: list[dict] = []
    correct = 0
    for start in range(0, len(qs), batch_size):
        chunk = qs[start: start + batch_size]
        outs = student.generate([task.student_prompt(q.question) for q in chunk], n=1,
                                max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
        for q, (text,) in zip(chunk, outs):
            pred, ok = task.check(text, q.answer)
            correct += ok
            outputs.append({"qid": q.id, "output": text, "prediction": pred, "answer": q.answer, "correct": ok})
    return EvalResult(correct / len(qs) if qs else 0.0, correct, len(qs), outputs)
