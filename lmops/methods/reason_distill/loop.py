"""The multi-round loop (the paper's Algorithm 1; the official repo runs its steps as separate scripts).

Round ``r`` (1..R), in stages:

1. ``exam``: the student of round ``r - 1`` samples ``k`` rationales per training question
   (``round_{r}/exam.jsonl``); wrong ones become this round's negatives.
2. ``teacher``: round 1 asks the teacher for rationales of *all* training questions; rounds >= 2 ask for
   customised corrections of the questions the student got wrong (``round_{r}/teacher.jsonl``).
3. ``data``: one :class:`TrainItem` per kept teacher rationale, with its question's positives (other
   teacher rationales so far) and negatives (this exam's wrong rationales) (``round_{r}/train.jsonl``).
4. ``train``: from round ``r - 1``'s checkpoint (round 0: the initial student), saved to
   ``round_{r}/checkpoint/``; resumable at the step (``round_{r}/train_state/``).
5. ``eval``: greedy accuracy on the training and held-out questions (``round_{r}/eval.json``; also
   ``round_0/eval.json`` for the initial student).

``run_state.json`` says where the run is (round, stage, step), ``stages.jsonl`` logs each finished stage
with its counts, ``metrics.json`` gathers them. A rerun skips the stages logged as finished and resumes
the one in progress: the exam and the teacher by question, training by step.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...common.files import atomic_directory, atomic_write
from ...common.jsonl import JsonlAppender, read_jsonl, write_jsonl
from ...llm import LLM, HFLocal, load_local_model
from .config import DistillConfig
from .data import ExamRecord, Question, TeacherRecord, TrainItem, read_records
from .exam import evaluate, take_exam
from .tasks import ReasoningTask
from .teacher import collect_rationales
from .training import train_round

__all__ = ["STAGES", "param_fingerprint", "run_distillation"]

STAGES = ("exam", "teacher", "data", "train", "eval")
Hook = Callable[[str, int, dict], None]


def param_fingerprint(model: Any) -> str:
    """A short hash of a model's parameters (name, shape, sum and sum of squares in float64): equal
    weights give equal fingerprints; used to check the checkpoint hand-off between rounds."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            t = p.detach().double()
            h.update(f"{name}:{tuple(t.shape)}:{float(t.sum()):.12e}:{float((t * t).sum()):.12e}".encode())
    return h.hexdigest()[:16]


def _questions_hash(questions: Sequence[Question]) -> str:
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps(q.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1), encoding="utf-8"))


class _Run:
    """The run directory: settings, stage log, run state, round folders."""

    def __init__(self, out: Path, config: DistillConfig, info: dict) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = out / "config.json"
        current = {"config": config.to_dict(), "run": info}
        if cfg_path.exists():
            stored = json.loads(cfg_path.read_text(encoding="utf-8"))
            _check_same(stored, current)
        _write_json(cfg_path, current)
        self.log_path = out / "stages.jsonl"
        self.done: dict[tuple[int, str], dict] = {}
        if self.log_path.exists():
            with JsonlAppender(self.log_path):  # drops a line cut by a kill
                pass
            for rec in read_jsonl(self.log_path).records:
                self.done[(int(rec["round"]), rec["stage"])] = rec

    def round_dir(self, r: int) -> Path:
        path = self.out / f"round_{r}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def state(self, r: int, stage: str, step: int | None = None, **extra: Any) -> None:
        _write_json(self.out / "run_state.json", {"round": r, "stage": stage, "step": step, **extra})

    def finish(self, r: int, stage: str, summary: dict) -> None:
        record = {"round": r, "stage": stage, "summary": summary, "time": time.time()}
        with JsonlAppender(self.log_path) as log:
            log.append(record)
        self.done[(r, stage)] = record


def _check_same(stored: dict, current: dict) -> None:
    a, b = dict(stored.get("config", {})), dict(current["config"])
    a.pop("rounds", None), b.pop("rounds", None)  # more rounds may be added to a finished run
    diffs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    run_a, run_b = stored.get("run", {}), current["run"]
    diffs += sorted(f"run.{k}" for k in ("task", "student", "train_questions") if run_a.get(k) != run_b.get(k))
    if diffs:
        raise ValueError(f"out: this directory holds a run with other settings ({', '.join(diffs)}); "
                         "use a new directory or the same settings to resume")


def run_distillation(
    out: str | os.PathLike,
    *,
    student: str | os.PathLike,
    teacher: LLM,
    task: ReasoningTask,
    train_questions: Sequence[Question],
    eval_questions: Sequence[Question] = (),
    config: DistillConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    hook: Hook | None = None,
) -> dict:
    """Run (or resume) tailored reasoning distillation in ``out``.

    Args:
        out: the run directory (created; an existing one is resumed, with the same settings).
        student: the initial student's model directory (``save_pretrained`` + tokenizer).
        teacher: any :class:`lmops.llm.LLM` (wrap it in :class:`lmops.llm.CachedLLM` to make reruns free).
        task: prompts, answer extraction and teacher parsing.
        train_questions: the training set (the exam and the teacher's questions).
        eval_questions: held-out questions for the greedy evaluations.
        config: settings (default :class:`DistillConfig`).
        device: where the student runs.
        progress: progress bars.
        log: one line per stage (``None``: quiet).
        hook: called as ``hook(event, round, info)`` with ``"train_start"`` (``info["model"]``, the
            student just loaded from the previous round's checkpoint) and ``"train_step"`` (the step's
            log record); an exception it raises stops the run (the stages finished so far stay done).

    Returns:
        The metrics (also in ``out/metrics.json``): per round the exam, teacher, data, train and eval
        summaries.
    """
    config = config or DistillConfig()
    qs = list(train_questions)
    if not qs:
        raise ValueError("train_questions: expected at least one question")
    evs = list(eval_questions)
    say = log or (lambda _msg: None)
    out = Path(out)
    student = Path(student)
    if not (student / "config.json").is_file():
        raise FileNotFoundError(f"student: {student} is not a model directory (no config.json)")
    info = {"task": task.name, "student": str(student.resolve()), "train_questions": _questions_hash(qs),
            "eval_questions": _questions_hash(evs), "teacher": getattr(teacher, "name", type(teacher).__name__)}
    run = _Run(out, config, info)
    by_id = {q.id: q for q in qs}

    def checkpoint(r: int) -> Path:
        return student if r == 0 else out / f"round_{r}" / "checkpoint"

    def load(r: int) -> tuple[Any, Any]:
        return load_local_model(checkpoint(r), device=device)

    def stage_eval(r: int) -> None:
        if not config.evaluate or (r, "eval") in run.done:
            return
        run.state(r, "eval")
        model, tok = load(r)
        llm = HFLocal(model, tok, batch_size=config.exam.batch_size)
        summary = {}
        details = {}
        for name, data in (("train", qs), ("heldout", evs)):
            if data:
                res = evaluate(llm, task, data, max_new_tokens=config.eval_max_new_tokens, stop=config.exam.stop,
                               batch_size=config.exam.batch_size)
                summary[name] = res.summary()
                details[name] = res.outputs[:5]
        _write_json(run.round_dir(r) / "eval.json", {"round": r, **summary, "examples": details})
        run.finish(r, "eval", summary)
        say(f"round {r} eval: " + ", ".join(f"{k} {v['accuracy']:.3f} ({v['correct']}/{v['total']})"
                                           for k, v in summary.items()))

    if run.done:
        last = max(run.done, key=lambda k: (k[0], STAGES.index(k[1]) if k[1] in STAGES else -1))
        say(f"resuming {out}: finished up to round {last[0]} stage {last[1]}")
    stage_eval(0)
    for r in range(1, config.rounds + 1):
        rdir = run.round_dir(r)
        # 1. exam
        if (r, "exam") not in run.done:
            run.state(r, "exam")
            model, tok = load(r - 1)
            llm = HFLocal(model, tok, batch_size=config.exam.batch_size, seed=config.exam.seed + r)
            res = take_exam(llm, task, qs, config.exam, round=r, path=rdir / "exam.jsonl", progress=progress)
            del model, llm
            run.finish(r, "exam", res.summary())
            say(f"round {r} exam: sample accuracy {res.sample_accuracy:.3f}, {res.n_negatives} wrong rationales kept"
                + (f" ({res.resumed} questions resumed)" if res.resumed else ""))
        exams = {rec.qid: rec for rec in read_records(rdir / "exam.jsonl", ExamRecord)}
        # 2. teacher
        if (r, "teacher") not in run.done:
            run.state(r, "teacher")
            mistakes = None
            if r >= 2:
                mistakes = {q.id: _first_wrong(exams[q.id]) for q in qs
                            if q.id in exams and exams[q.id].n_correct < len(exams[q.id].samples)}
            res_t = collect_rationales(teacher, task, qs, config.teacher, round=r, mistakes=mistakes,
                                       path=rdir / "teacher.jsonl", progress=progress)
            run.finish(r, "teacher", res_t.summary())
            s = res_t.summary()
            say(f"round {r} teacher: {s['asked']} asked, {s['rationales']} rationales kept, {s['rejected_wrong']} "
                f"wrong filtered, {s['malformed']} malformed, {s['failed']} failed after retries")
        # 3. data
        if (r, "data") not in run.done:
            run.state(r, "data")
            items = _build_items(out, r, task, by_id, exams, config)
            write_jsonl(rdir / "train.jsonl", items)
            summary = {"items": len(items), "questions": len({it.qid for it in items}),
                       "with_positive": sum(any(p != it.completion for p in it.positives) for it in items),
                       "with_negative": sum(bool(it.negatives) for it in items)}
            run.finish(r, "data", summary)
            say(f"round {r} data: {summary['items']} items over {summary['questions']} questions")
        # 4. train
        if (r, "train") not in run.done:
            items = read_records(rdir / "train.jsonl", TrainItem)
            model, tok = load(r - 1)
            start_fp = param_fingerprint(model)
            if hook is not None:
                hook("train_start", r, {"model": model})
            state_dir = rdir / "train_state"
            summary: dict[str, Any] = {"start_fingerprint": start_fp, "items": len(items)}
            if items:
                run.state(r, "train", _saved_step(state_dir))
                if _saved_step(state_dir):
                    say(f"round {r} train: resuming at step {_saved_step(state_dir)}")

                def on_step(step: int, record: dict, r: int = r) -> None:
                    if (step + 1) % config.train.save_steps == 0:
                        run.state(r, "train", step + 1)
                    if hook is not None:
                        hook("train_step", r, record)

                result = train_round(model, tok, items, train=config.train, loss=config.loss, state_dir=state_dir,
                                     round=r, log_path=rdir / "train_log.jsonl", progress=progress, on_step=on_step)
                losses = [x["loss"] for x in read_jsonl(rdir / "train_log.jsonl").records]
                k = max(1, len(losses) // 10)
                summary.update(start_step=result.start_step, total_steps=result.total_steps,
                               loss_first=sum(losses[:k]) / k if losses else None,
                               loss_last=sum(losses[-k:]) / k if losses else None)
            else:
                summary.update(start_step=0, total_steps=0, skipped="no training items: the weights carry over")
            with atomic_directory(rdir / "checkpoint") as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
            summary["final_fingerprint"] = param_fingerprint(model)
            del model
            run.finish(r, "train", summary)
            shutil.rmtree(state_dir, ignore_errors=True)  # the round's checkpoint supersedes it
            say(f"round {r} train: {summary['total_steps']} steps"
                + (f", loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}" if summary.get("loss_first")
                   is not None else "") + f"; saved {rdir / 'checkpoint'}")
        # 5. eval
        stage_eval(r)
    run.state(config.rounds, "done")
    metrics = _metrics(run, config.rounds)
    _write_json(out / "metrics.json", metrics)
    return metrics


def _saved_step(state_dir: Path) -> int:
    path = state_dir / "latest" / "trainer_state.json"
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8")).get("step", 0))


def _first_wrong(record: ExamRecord) -> str:
    wrong = record.wrong_rationales
    return wrong[0] if wrong else "(no rationale)"


def _build_items(out: Path, r: int, task: ReasoningTask, by_id: dict[str, Question],
                 exams: dict[str, ExamRecord], config: DistillConfig) -> list[TrainItem]:
    """Round ``r``'s items: this round's kept teacher rationales (``round_data="cumulative"``: every round's
    so far), each with the question's positive pool (all teacher completions so far, at most
    ``cl_pos_num``) and negative pool (this exam's distinct wrong rationales, at most ``cl_neg_num``)."""
    per_round: dict[int, list[TeacherRecord]] = {}
    for k in range(1, r + 1):
        path = out / f"round_{k}" / "teacher.jsonl"
        per_round[k] = read_records(path, TeacherRecord) if path.exists() else []
    pools: dict[str, list[str]] = {}
    for k in range(1, r + 1):
        for rec in per_round[k]:
            q = by_id.get(rec.qid)
            if q is None:
                continue
            for text in rec.rationales:
                comp = task.completion(text, q.answer)
                if comp not in pools.setdefault(rec.qid, []):
                    pools[rec.qid].append(comp)
    sources = range(1, r + 1) if config.round_data == "cumulative" else (r,)
    items = []
    for k in sources:
        for rec in per_round[k]:
            q = by_id.get(rec.qid)
            if q is None:
                continue
            rng = random.Random(f"{config.train.seed}:{r}:{rec.qid}")
            positives = pools.get(rec.qid, [])
            if len(positives) > config.loss.cl_pos_num:
                positives = rng.sample(positives, config.loss.cl_pos_num)
            negatives = exams[rec.qid].wrong_rationales if rec.qid in exams else []
            if len(negatives) > config.loss.cl_neg_num:
                negatives = rng.sample(negatives, config.loss.cl_neg_num)
            prefix = task.student_prompt(q.question)
            for text in rec.rationales:
                items.append(TrainItem(qid=q.id, prefix=prefix, completion=task.completion(text, q.answer),
                                       positives=list(positives), negatives=list(negatives), round=k))
    return items


def _metrics(run: _Run, rounds: int) -> dict:
    table = []
    for r in range(rounds + 1):
        row: dict[str, Any] = {"round": r}
        for stage in STAGES:
            rec = run.done.get((r, stage))
            if rec is not None:
                row[stage] = rec["summary"]
        table.append(row)
    return {"rounds": table}
