"""Annotating prompt records with a multimodal judge: resumable, malformed answers retried then counted.

:func:`annotate` asks the judge for a score and a rationale per (image, aspect), through
:func:`lmops.llm.ask` (the judge is wrapped as an :class:`lmops.llm.LLM` whose prompts are JSON-encoded
:class:`~lmops.methods.visionprefer.judge.JudgeRequest`), so a malformed answer gets the project's retry
rule (a greedy request is retried at ``retry_temperature`` with more samples) and is then counted and
skipped, never a crash. Each parsed answer is appended to a JSONL log keyed by
``(prompt_id, image_id, aspect)`` with :class:`lmops.common.jsonl.JsonlAppender`, so a killed run
resumes where it stopped and asks nothing twice; skipped ones are asked again on the next run.
:func:`merge_annotations` folds the log into the records.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ...common.jsonl import JsonlAppender
from ...llm import LLMError, ask
from ...llm.protocol import check_generation_args
from .config import ASPECTS, AnnotateConfig
from .data import PromptRecord
from .judge import Judge, JudgeRequest, as_judge, parse_judgement

__all__ = ["AnnotationReport", "JudgeLLM", "annotate", "merge_annotations", "read_annotations"]

_ERROR_MARK = "\x00judge-error: "  # an answer that stands for a judge failure on one request
Key = tuple[str, str, str]


class JudgeLLM:
    """A :class:`Judge` seen as an :class:`lmops.llm.LLM` (``generate`` only), so :func:`lmops.llm.ask`
    can drive it: each prompt is a :meth:`JudgeRequest.to_json`. A judge failure on one request
    (:class:`lmops.llm.LLMError`, an unreadable image) becomes a malformed answer naming the error."""

    def __init__(self, judge: Judge) -> None:
        self.judge = as_judge(judge)
        self.name = f"judge:{self.judge.name}"

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Any = None,
        n: int = 1,
    ) -> list[list[str]]:
        prompts = check_generation_args(prompts, max_new_tokens, temperature, top_p, stop, n)
        requests = [JudgeRequest.from_json(p) for p in prompts]
        many = getattr(self.judge, "judge_many", None)
        if callable(many):  # a batch judge fails or succeeds as a batch (ask counts an LLMError per request)
            try:
                return many(requests, temperature=temperature, n=n, max_new_tokens=max_new_tokens)
            except OSError:
                pass  # an unreadable image: ask one by one, so only its request fails
        out = []
        for req in requests:
            try:
                out.append(
                    self.judge.judge(
                        req.prompt,
                        list(req.image_paths),
                        req.aspect,
                        temperature=temperature,
                        n=n,
                        max_new_tokens=max_new_tokens,
                    )
                )
            except (LLMError, OSError) as exc:
                out.append([f"{_ERROR_MARK}{type(exc).__name__}: {exc}"] * n)
        return out

    def chat(self, *args: Any, **kwargs: Any) -> list[list[str]]:
        raise NotImplementedError("JudgeLLM answers JudgeRequests through generate() only")

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        raise NotImplementedError("a judge gives no log-likelihoods")


@dataclass
class AnnotationReport:
    """What :func:`annotate` did.

    Attributes:
        requested: judge requests made this run (before retries).
        annotated: ``(image, aspect)`` annotations written this run.
        already_done: annotations found in the log and not asked again.
        retries: extra attempts for malformed answers.
        skipped: ``(prompt_id, image_ids, aspect, last error)`` per request that never parsed.
        malformed_log_lines: ``(line, reason)`` of unreadable lines in an existing log (ignored).
    """

    requested: int = 0
    annotated: int = 0
    already_done: int = 0
    retries: int = 0
    skipped: list[tuple[str, tuple[str, ...], str, str]] = field(default_factory=list)
    malformed_log_lines: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "annotated": self.annotated,
            "already_done": self.already_done,
            "retries": self.retries,
            "skipped": len(self.skipped),
            "skipped_examples": [list(s[:3]) + [s[3]] for s in self.skipped[:10]],
            "malformed_log_lines": len(self.malformed_log_lines),
        }


def _check_row(row: Any) -> Key:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("prompt_id", "image_id", "aspect", "score") if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    if row["aspect"] not in ASPECTS:
        raise ValueError(f"unknown aspect {row['aspect']!r}")
    score = row["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"score {score!r} is not a finite number")
    return str(row["prompt_id"]), str(row["image_id"]), row["aspect"]


def read_annotations(path: str | os.PathLike) -> tuple[dict[Key, dict], list[tuple[int, str]]]:
    """The annotation log: ``{(prompt_id, image_id, aspect): row}`` (the last row of a key wins) and the
    ``(line, reason)`` of malformed lines (skipped). A missing file is an empty log."""
    rows: dict[Key, dict] = {}
    bad: list[tuple[int, str]] = []
    if not Path(path).exists():
        return rows, bad
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[_check_row(row)] = row
            except json.JSONDecodeError as exc:
                bad.append((number, f"not JSON ({exc.msg})"))
            except ValueError as exc:
                bad.append((number, str(exc)))
    return rows, bad


def _parser(n_images: int, config: AnnotateConfig):
    def parse(text: str) -> list[tuple[float, str]]:
        if text.startswith(_ERROR_MARK):
            raise ValueError(text[len(_ERROR_MARK) :])
        return parse_judgement(text, n_images, config.score_min, config.score_max)

    return parse


def annotate(
    records: Sequence[PromptRecord],
    judge: Any,
    out: str | os.PathLike,
    config: AnnotateConfig | None = None,
    *,
    progress: bool = False,
    fsync: bool = True,
) -> AnnotationReport:
    """Annotate every ``(image, aspect)`` of ``records`` not yet in the log ``out`` (JSONL, appended).

    Args:
        records: the prompts and their images (paths must be readable by the judge).
        judge: a :class:`~lmops.methods.visionprefer.Judge` or a callable ``fn(prompt, image_paths, aspect) -> str``.
        out: the annotation log; one line per annotation: ``prompt_id, image_id, aspect, score, rationale, judge``.
        config: scale, aspects, per-image or per-prompt requests, retries (:class:`AnnotateConfig`).
        progress: print a progress bar over requests.
        fsync: sync the log to disk after every line (survives a power loss); ``False`` only flushes to
            the OS (survives a killed process), much faster for cheap judges.
    Returns an :class:`AnnotationReport`. Use :func:`merge_annotations` to put the scores into records.
    """
    config = config or AnnotateConfig()
    llm = JudgeLLM(judge)
    done, malformed = read_annotations(out)
    report = AnnotationReport(malformed_log_lines=malformed)
    # each job: (record, the images shown, the images whose annotation is missing, aspect)
    jobs: list[tuple[PromptRecord, list, list, str]] = []
    for record in records:
        if not isinstance(record, PromptRecord):
            raise TypeError(f"records: expected PromptRecord items, got {type(record).__name__}")
        for aspect in config.aspects:
            missing = [im for im in record.images if (record.prompt_id, im.image_id, aspect) not in done]
            report.already_done += len(record.images) - len(missing)
            if not missing:
                continue
            if config.mode == "per_prompt":
                jobs.append((record, list(record.images), missing, aspect))
            else:
                jobs.extend((record, [im], [im], aspect) for im in missing)
    # ask() takes one parser per call, so requests are grouped by how many images they show
    groups: dict[int, list] = {}
    for job in jobs:
        groups.setdefault(len(job[1]), []).append(job)
    bar = None
    if progress and jobs:
        from ...common.progress import progress_bar

        bar = progress_bar(len(jobs), desc="annotate", unit="req")
    try:
        with JsonlAppender(out, fsync=fsync) as log:
            for n_images, group in groups.items():
                parse = _parser(n_images, config)
                for start in range(0, len(group), config.chunk_size):
                    chunk = group[start : start + config.chunk_size]
                    requests = [
                        JudgeRequest(rec.prompt, tuple(im.path for im in shown), aspect).to_json()
                        for rec, shown, _, aspect in chunk
                    ]
                    result = ask(
                        llm,
                        requests,
                        parse,
                        retries=config.retries,
                        temperature=config.temperature,
                        retry_temperature=config.retry_temperature,
                        max_new_tokens=config.max_new_tokens,
                    )
                    report.requested += len(chunk)
                    report.retries += result.retries
                    errors = dict(result.failures)
                    for i, (rec, shown, missing, aspect) in enumerate(chunk):
                        value = result.values[i]
                        if value is None:
                            report.skipped.append(
                                (rec.prompt_id, tuple(im.image_id for im in shown), aspect, errors.get(i, "no answer"))
                            )
                            continue
                        wanted = {im.image_id for im in missing}
                        for im, (score, rationale) in zip(shown, value):
                            if im.image_id not in wanted:
                                continue
                            log.append(
                                {
                                    "prompt_id": rec.prompt_id,
                                    "image_id": im.image_id,
                                    "aspect": aspect,
                                    "score": score,
                                    "rationale": rationale,
                                    "judge": llm.judge.name,
                                }
                            )
                            report.annotated += 1
                    if bar is not None:
                        bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return report


def merge_annotations(
    records: Iterable[PromptRecord], annotations: str | os.PathLike | dict[Key, dict]
) -> list[PromptRecord]:
    """Copies of ``records`` with the scores and rationales of the annotation log (a path, or the dict
    :func:`read_annotations` returns) filled in; scores of aspects the log lacks are kept."""
    rows = annotations if isinstance(annotations, dict) else read_annotations(annotations)[0]
    by_image: dict[tuple[str, str], dict[str, dict]] = {}
    for (pid, iid, aspect), row in rows.items():
        by_image.setdefault((pid, iid), {})[aspect] = row
    out = []
    for record in records:
        new = PromptRecord.from_dict(record.to_dict())
        for im in new.images:
            for aspect, row in by_image.get((new.prompt_id, im.image_id), {}).items():
                im.scores[aspect] = float(row["score"])
                im.rationales[aspect] = str(row.get("rationale", ""))
        out.append(new)
    return out
