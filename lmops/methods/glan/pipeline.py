"""``run_glan``: the whole GLAN data pipeline over a run directory, resumable at any instant.

Stages run in order (subjects -> syllabi -> questions with their answers -> decontamination), each over
the units not yet on disk, in batches of ``config.batch_size`` with ``config.workers`` batches in flight
(threads; results are written by the calling thread only). Every finished unit is one line appended with
:class:`~lmops.common.jsonl.JsonlAppender` (flushed and synced), and every unit has a deterministic id
(a hash of the discipline, the subject's position and the sample index) and a deterministic draw (an RNG
seeded by the seed and that id), so a run killed at any point and run again makes exactly the records of
an uninterrupted run: none twice, none lost. Units that produced nothing (every answer malformed, or a
backend error) are not written and are asked again by the next run (free through a
:class:`~lmops.llm.CachedLLM`, which also replays a deterministic failure). The output
``instructions.jsonl`` is rewritten atomically at the end from ``pairs.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ...common.files import atomic_write
from ...common.jsonl import JsonlAppender, read_jsonl, write_jsonl
from ...common.progress import progress_bar
from ...llm import LLM
from . import data as files
from .config import GlanConfig
from .data import DisciplineSubjects, InstructionRecord, Subject, Syllabus, record_id
from .decontam import NgramDecontaminator
from .prompts import prompt_hashes
from .sampling import MixedSampler, QuestionSampler
from .stages import (
    QuestionUnit,
    answer_stage,
    make_record,
    question_stage,
    sample_rng,
    subjects_stage,
    syllabus_stage,
)
from .taxonomy import Discipline, Taxonomy

__all__ = ["GlanSummary", "run_glan"]

U = TypeVar("U")


@dataclass
class GlanSummary:
    """What a run did and what the directory holds.

    Attributes:
        counts: this run's events: ``pairs`` made, ``subjects``/``syllabi``/``questions``/``answers``
            parsed, ``*_malformed`` answers skipped after retries (a unit skipped whole is asked again by
            the next run, so a replayed failure counts again), ``llm_errors`` (backend failures).
        totals: the directory's ``disciplines``, ``subjects``, ``syllabi``, ``pairs``, ``excluded`` (pairs
            of removed nodes or beyond the current limits), ``decontaminated``, ``instructions``,
            ``benchmark_ngrams``.
        models, config: the generator's and answerer's names; the settings.
    """

    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"counts": self.counts, "totals": self.totals, "models": self.models, "config": self.config}

    def lines(self) -> list[str]:
        t, c = self.totals, self.counts
        malformed = sum(v for k, v in c.items() if "malformed" in k)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if "malformed" in k) or "none"
        return [
            (f"instructions: {t.get('instructions', 0)} (of {t.get('pairs', 0)} pairs; {t.get('decontaminated', 0)} "
             f"removed by decontamination, {t.get('excluded', 0)} excluded: node removed or beyond the limits)"),
            f"disciplines {t.get('disciplines', 0)}, subjects {t.get('subjects', 0)}, syllabi {t.get('syllabi', 0)}",
            (f"this run: {c.get('pairs', 0)} new pairs, {malformed} malformed answers skipped ({kinds}), "
             f"{c.get('llm_errors', 0)} backend errors"),
        ]


def _done(path: Path, key: str) -> tuple[dict[str, dict], int]:
    """The records of a stage file keyed by ``key`` (first one wins) and the number of bad lines."""
    if not path.exists():
        return {}, 0
    res = read_jsonl(path, required=[key])
    out: dict[str, dict] = {}
    for r in res.records:
        out.setdefault(r[key], r)
    return out, len(res.malformed)


def _in_batches(
    units: Sequence[U],
    work: Callable[[list[U]], tuple[list, Counter]],
    write: Callable[[U, Any], None],
    counts: Counter,
    config: GlanConfig,
    *,
    desc: str,
    unit: str,
    progress: bool,
) -> None:
    """Run ``work`` over batches of ``units`` (``config.workers`` at once) and ``write`` each finished
    unit's output from this thread, batch by batch, as they complete."""
    batches = [list(units[i : i + config.batch_size]) for i in range(0, len(units), config.batch_size)]
    with progress_bar(total=len(units), desc=desc, unit=unit, disable=not progress or not units) as bar:
        def finish(batch: list[U], result: tuple[list, Counter]) -> None:
            outputs, c = result
            counts.update(c)
            for u, out in zip(batch, outputs):
                write(u, out)
            bar.update(len(batch))

        if config.workers == 1 or len(batches) <= 1:
            for b in batches:
                finish(b, work(b))
            return
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=f"glan-{desc}") as pool:
            futures = {pool.submit(work, b): b for b in batches}
            try:
                for fut in as_completed(futures):
                    finish(futures[fut], fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


def _subjects_of(taxonomy: Taxonomy, by_discipline: dict[str, dict], config: GlanConfig
                 ) -> list[tuple[Discipline, list[Subject]]]:
    out = []
    for d in taxonomy.disciplines():
        line = by_discipline.get(d.name)
        if line is None:
            continue
        subjects = DisciplineSubjects.from_dict(line).subjects
        if config.dedupe_subjects:
            seen: set[str] = set()
            subjects = [s for s in subjects if not (s.name.casefold() in seen or seen.add(s.name.casefold()))]
        out.append((d, subjects[: config.max_subjects_per_discipline]))
    return out


def run_glan(
    taxonomy: Taxonomy,
    out_dir: str | os.PathLike,
    llm: LLM,
    *,
    answer_llm: LLM | None = None,
    config: GlanConfig | None = None,
    benchmarks: Iterable[str] = (),
    sampler: QuestionSampler | None = None,
    progress: bool = True,
) -> GlanSummary:
    """Generate GLAN instruction data for every discipline of ``taxonomy`` into ``out_dir`` (see
    :mod:`lmops.methods.glan.data` for its files), resuming whatever an earlier run left there.

    Args:
        taxonomy: the validated taxonomy (:func:`load_taxonomy`); adding a discipline adds its data on
            the next run, the records of the others are kept.
        out_dir: the run directory (created if missing).
        llm: the generator (subjects, syllabi, questions); wrap it in :class:`~lmops.llm.CachedLLM` to
            make resumes free.
        answer_llm: the separate answer model (default: ``llm``).
        config: the settings (default :class:`GlanConfig`).
        benchmarks: benchmark texts whose n-grams remove a pair (:mod:`.decontam`).
        sampler: chooses each question's sessions and concepts (default :class:`MixedSampler` from the
            config).
        progress: show a progress bar per stage (on stderr).
    Returns:
        a :class:`GlanSummary`, also written to ``out_dir/summary.json``.
    """
    if not isinstance(taxonomy, Taxonomy):
        raise TypeError(f"taxonomy: expected a Taxonomy (load_taxonomy), got {type(taxonomy).__name__}")
    config = config or GlanConfig()
    answer_llm = answer_llm or llm
    sampler = sampler or MixedSampler(config.harder_fraction, config.max_concepts,
                                      uniform_size=config.concept_sampling == "size")
    decon = NgramDecontaminator(list(benchmarks), n=config.ngram_n, min_ngram=config.min_ngram)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    provenance = {"models": {"generator": llm.name, "answerer": answer_llm.name}, "prompts": prompt_hashes(),
                  "seed": config.seed}
    disciplines = taxonomy.disciplines()

    # 1. subjects: one line per discipline
    with JsonlAppender(out / files.SUBJECTS) as app:
        have, bad = _done(out / files.SUBJECTS, "discipline")
        counts["corrupt_lines"] += bad
        todo = [d for d in disciplines if d.name not in have]

        def write_subjects(d: Discipline, rec: DisciplineSubjects | None) -> None:
            if rec is not None:
                app.append(rec)
                have[d.name] = rec.to_dict()

        _in_batches(todo, lambda b: subjects_stage(llm, b, config), write_subjects, counts, config,
                    desc="subjects", unit="discipline", progress=progress)
    per_discipline = _subjects_of(taxonomy, have, config)

    # 2. syllabi: one line per subject
    with JsonlAppender(out / files.SYLLABI) as app:
        syllabi, bad = _done(out / files.SYLLABI, "subject_id")
        counts["corrupt_lines"] += bad
        todo_s = [s for _, subs in per_discipline for s in subs if s.id not in syllabi]

        def write_syllabus(s: Subject, rec: Syllabus | None) -> None:
            if rec is not None:
                app.append(rec)
                syllabi[s.id] = rec.to_dict()

        _in_batches(todo_s, lambda b: syllabus_stage(llm, b, config), write_syllabus, counts, config,
                    desc="syllabi", unit="subject", progress=progress)

    # 3. questions and answers: one line per pair
    order: dict[str, tuple[int, int, int]] = {}  # record id -> (discipline, subject, sample) position
    with JsonlAppender(out / files.PAIRS) as app:
        pairs, bad = _done(out / files.PAIRS, "id")
        counts["corrupt_lines"] += bad
        units: list[QuestionUnit] = []
        for di, (d, subs) in enumerate(per_discipline):
            for si, s in enumerate(subs):
                if s.id not in syllabi:
                    continue
                syl = Syllabus.from_dict(syllabi[s.id])
                for j in range(config.questions_per_syllabus):
                    u_id = record_id(s.id, j)
                    order[u_id] = (di, si, j)
                    if u_id not in pairs:
                        smp = sampler.sample([len(x.concepts) for x in syl.sessions], sample_rng(config.seed, u_id))
                        units.append(QuestionUnit(d, syl, j, smp))

        def qa(batch: list[QuestionUnit]) -> tuple[list, Counter]:
            questions, c = question_stage(llm, batch, config)
            asked = [i for i, q in enumerate(questions) if q is not None]
            answers, c2 = answer_stage(answer_llm, [questions[i] for i in asked], config) if asked else ([], Counter())
            c.update(c2)
            recs: list[InstructionRecord | None] = [None] * len(batch)
            for i, a in zip(asked, answers):
                if a is not None:
                    recs[i] = make_record(batch[i], questions[i], a, provenance)
            return recs, c

        def write_pair(u: QuestionUnit, rec: InstructionRecord | None) -> None:
            if rec is not None:
                app.append(rec)
                pairs[rec.id] = rec.to_dict()
                counts["pairs"] += 1

        _in_batches(units, qa, write_pair, counts, config, desc="questions", unit="pair", progress=progress)

    # 4. decontamination and the output, rewritten atomically
    kept, removed = [], []
    for rid, rec in pairs.items():
        if rid not in order:
            continue
        text = rec["question"] + ("\n" + rec["answer"] if config.decontaminate_answers else "")
        gram = decon.match(text) if decon.n_grams else None
        if gram is None:
            kept.append((order[rid], rec))
        else:
            removed.append((order[rid], {**rec, "matched_ngram": gram}))
    kept.sort(key=lambda x: x[0])
    removed.sort(key=lambda x: x[0])
    write_jsonl(out / files.INSTRUCTIONS, (r for _, r in kept))
    write_jsonl(out / files.DECONTAMINATED, (r for _, r in removed))

    summary = GlanSummary(
        counts={k: v for k, v in sorted(counts.items()) if v},
        totals={"disciplines": len(disciplines), "subjects": sum(len(s) for _, s in per_discipline),
                "syllabi": sum(1 for _, subs in per_discipline for s in subs if s.id in syllabi),
                "pairs": len(pairs), "excluded": sum(1 for rid in pairs if rid not in order),
                "decontaminated": len(removed), "instructions": len(kept), "benchmark_ngrams": decon.n_grams},
        models=provenance["models"],
        config=config.to_dict(),
    )
    text = json.dumps(summary.to_dict(), indent=2) + "\n"
    atomic_write(out / files.SUMMARY, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return summary
