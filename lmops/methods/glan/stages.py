"""GLAN's generation stages, each a function over one batch of units that talks to the model only through
the :class:`~lmops.llm.LLM` protocol: one ``llm.chat`` call per turn per batch (so a backend with its own
concurrency answers the batch in parallel), and :func:`lmops.llm.ask` wherever an answer must parse, so
a malformed answer is retried, then counted and skipped.

Each stage returns one output per unit (``None`` where the unit produced nothing: it is not written,
and the next run asks again) and a :class:`collections.Counter` of what happened.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...llm import LLM, AskResult, LLMError, ask, extract_json
from . import prompts
from .config import GlanConfig
from .data import (
    DisciplineSubjects,
    InstructionRecord,
    Session,
    Subject,
    Syllabus,
    record_id,
    subject_id,
)
from .sampling import QuestionSample
from .taxonomy import Discipline

__all__ = [
    "QuestionUnit",
    "answer_stage",
    "parse_answer",
    "parse_question",
    "parse_sessions",
    "parse_subjects",
    "question_stage",
    "subjects_stage",
    "syllabus_stage",
]

def _count_failures(counts: Counter, result: AskResult, malformed_key: str) -> None:
    """Unparsable answers under ``malformed_key``, backend failures under ``llm_errors``."""
    counts[malformed_key] += result.n_malformed
    counts["llm_errors"] += len(result.backend_failed)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _text(value: object, what: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: expected a non-empty string, got {value!r:.80}")
    return " ".join(value.split())


def _string_list(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[;,]", value)]
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list of strings, got {type(value).__name__}")
    return [" ".join(v.split()) for v in value if isinstance(v, str) and v.strip()]


# -- parsers (raise ValueError on a malformed answer, so ask() retries it) --------------------------------
def parse_subjects(text: str) -> tuple[list[dict], int]:
    """The conversion turn's JSONL (or a JSON list) -> ``([{name, level, subtopics}], invalid items)``."""
    objs: list[Any] = []
    body = "\n".join(m.group(1) for m in re.finditer(r"```(?:jsonl?|JSONL?)?\s*\n?(.*?)```", text, re.DOTALL)) or text
    for line in body.splitlines():  # JSONL first: a JSON-list search would find a subtopics list
        line = line.strip().rstrip(",")
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError:
                objs.append(None)
    if not any(isinstance(o, dict) for o in objs):
        try:  # a JSON list of objects, possibly pretty-printed
            value = extract_json(text, expect=list)
            if any(isinstance(v, dict) for v in value):
                objs = list(value)
        except ValueError:
            pass
    good, bad = [], 0
    for obj in objs:
        try:
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            good.append({"name": _text(obj["subject_name"], "subject_name"), "level": _text(obj["level"], "level"),
                         "subtopics": _string_list(obj.get("subtopics", []), "subtopics")})
        except (KeyError, ValueError):
            bad += 1
    if not good:
        raise ValueError(f"no subject record with subject_name, level, subtopics in the answer ({bad} invalid)")
    return good, bad


def parse_sessions(text: str) -> list[Session]:
    """The extraction turn's JSON -> the sessions that have at least one key concept."""
    value = extract_json(text, expect=(dict, list))
    items = value.get("sessions") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ValueError("expected {\"sessions\": [...]}")
    sessions = []
    for item in items:
        if not isinstance(item, dict):
            continue
        try:
            title = _text(item.get("title") or item.get("name"), "title")
        except ValueError:
            continue
        desc = item.get("description", "")
        concepts = list(dict.fromkeys(_string_list(item.get("key_concepts", item.get("concepts", [])), "key_concepts")))
        if concepts:
            sessions.append(Session(title, " ".join(desc.split()) if isinstance(desc, str) else "", concepts))
    if not sessions:
        raise ValueError("no class session with a title and key concepts in the answer")
    return sessions


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:homework\s+)?question\s*(?:\d+)?\s*[:.]\s*(?:\*\*)?\s*", re.IGNORECASE)


def parse_question(text: str) -> str:
    """A homework question: the answer less a leading "Question:" label; fewer than 3 words is malformed."""
    q = _LABEL.sub("", text.strip(), count=1).strip()
    if len(q.split()) < 3:
        raise ValueError(f"not a question: {text!r:.80}")
    return q


def parse_answer(text: str) -> str:
    """An answer: any non-empty text."""
    a = text.strip()
    if not a:
        raise ValueError("empty answer")
    return a


# -- stages ---------------------------------------------------------------------------------------------
def subjects_stage(llm: LLM, disciplines: Sequence[Discipline], config: GlanConfig
                   ) -> tuple[list[DisciplineSubjects | None], Counter]:
    """Per discipline: ``n_subject_queries`` free-text subject lists sampled in one request (the prompt
    has no format instruction), then one conversion turn per list into ``{subject_name, level,
    subtopics}`` records."""
    counts: Counter = Counter()
    asks = [_user(prompts.subjects(d.name)) for d in disciplines]
    try:
        samples = llm.chat(asks, n=config.n_subject_queries, temperature=config.subject_temperature,
                           top_p=config.subject_top_p, max_new_tokens=config.max_new_tokens_subjects)
    except LLMError:
        counts["llm_errors"] += len(disciplines)
        return [None] * len(disciplines), counts
    convs, owner = [], []
    for i, texts in enumerate(samples):
        for q, text in enumerate(texts):
            counts["subject_queries"] += 1
            if not text.strip():
                counts["subjects_malformed"] += 1
                continue
            convs.append(asks[i] + [{"role": "assistant", "content": text}, _user(prompts.convert_subjects())[0]])
            owner.append((i, q))
    res = ask(llm, convs, parse_subjects, chat=True, retries=config.retries, temperature=config.convert_temperature,
              max_new_tokens=config.max_new_tokens_convert)
    _count_failures(counts, res, "subjects_malformed")
    out: list[DisciplineSubjects | None] = []
    for i, d in enumerate(disciplines):
        subjects: list[Subject] = []
        malformed, answered, seen = 0, 0, set()
        for (j, q), value in zip(owner, res.values):
            if j != i:
                continue
            if value is None:
                malformed += 1
                continue
            answered += 1
            items, bad = value
            malformed += bad
            counts["subject_items_malformed"] += bad
            for k, item in enumerate(items):
                key = item["name"].casefold()
                if config.dedupe_subjects and key in seen:
                    continue
                seen.add(key)
                subjects.append(Subject(subject_id(d.name, q, k), d.name, item["name"], item["level"],
                                        item["subtopics"], q, k))
        if not answered:
            out.append(None)
            continue
        counts["subjects"] += len(subjects)
        out.append(DisciplineSubjects(d.name, list(d.path), subjects, config.n_subject_queries, malformed))
    return out, counts


def syllabus_stage(llm: LLM, subjects: Sequence[Subject], config: GlanConfig) -> tuple[list[Syllabus | None], Counter]:
    """Per subject: one syllabus (free text, sessions with descriptions and key concepts), then an
    extraction turn into :class:`Session` records."""
    counts: Counter = Counter()
    asks = [_user(prompts.syllabus(s.discipline, s.name, s.level, s.subtopics)) for s in subjects]
    try:
        texts = llm.chat(asks, n=1, temperature=config.syllabus_temperature, top_p=config.syllabus_top_p,
                         max_new_tokens=config.max_new_tokens_syllabus)
    except LLMError:
        counts["llm_errors"] += len(subjects)
        return [None] * len(subjects), counts
    idx = [i for i, t in enumerate(texts) if t[0].strip()]
    counts["syllabi_malformed"] += len(subjects) - len(idx)
    extract = _user(prompts.extract_sessions())[0]
    convs = [asks[i] + [{"role": "assistant", "content": texts[i][0]}, extract] for i in idx]
    res = ask(llm, convs, parse_sessions, chat=True, retries=config.retries, temperature=config.convert_temperature,
              max_new_tokens=config.max_new_tokens_convert)
    _count_failures(counts, res, "syllabi_malformed")
    out: list[Syllabus | None] = [None] * len(subjects)
    for i, sessions in zip(idx, res.values):
        if sessions is not None:
            s = subjects[i]
            out[i] = Syllabus(s.id, s.discipline, s.name, s.level, texts[i][0], sessions)
            counts["syllabi"] += 1
    return out, counts


@dataclass(frozen=True)
class QuestionUnit:
    """One question to make: from ``syllabus``, sample ``sample_index`` (the (sessions, concepts) draw)."""

    discipline: Discipline
    syllabus: Syllabus
    sample_index: int
    sample: QuestionSample

    @property
    def id(self) -> str:
        return record_id(self.syllabus.subject_id, self.sample_index)


def sample_rng(seed: int, unit_id: str) -> random.Random:
    """The RNG of one record: seeded by the run's seed and the record id, so that a draw does not depend
    on the order the units are made in (a resumed run draws exactly what the uninterrupted one did)."""
    return random.Random(f"{seed}:{unit_id}")


def question_stage(llm: LLM, units: Sequence[QuestionUnit], config: GlanConfig) -> tuple[list[str | None], Counter]:
    """One homework question per unit, from the full syllabus, the sampled sessions ("assume students have
    learned up to these sessions") and the sampled key concepts."""
    counts: Counter = Counter()
    reqs = []
    for u in units:
        sessions = [u.syllabus.sessions[i].title for i in u.sample.sessions]
        concepts = [u.syllabus.sessions[s].concepts[c] for s, c in u.sample.concepts]
        reqs.append(_user(prompts.question(u.discipline.name, u.syllabus.subject, u.syllabus.level, u.syllabus.text,
                                           sessions, concepts)))
    res = ask(llm, reqs, parse_question, chat=True, retries=config.retries, temperature=config.question_temperature,
              top_p=config.question_top_p, max_new_tokens=config.max_new_tokens_question)
    _count_failures(counts, res, "questions_malformed")
    counts["questions"] += sum(v is not None for v in res.values)
    return res.values, counts


def answer_stage(answer_llm: LLM, questions: Sequence[str], config: GlanConfig) -> tuple[list[str | None], Counter]:
    """One answer per question, from the (separate) answer model."""
    counts: Counter = Counter()
    res = ask(answer_llm, [_user(prompts.answer(q)) for q in questions], parse_answer, chat=True,
              retries=config.retries, temperature=config.answer_temperature, top_p=config.answer_top_p,
              max_new_tokens=config.max_new_tokens_answer)
    _count_failures(counts, res, "answers_malformed")
    counts["answers"] += sum(v is not None for v in res.values)
    return res.values, counts


def make_record(unit: QuestionUnit, question: str, answer: str, provenance: dict) -> InstructionRecord:
    """The output record of a unit; ``provenance`` (models, prompt hashes, seed) is completed with the
    taxonomy path, the subject id, the sample index and the session indices."""
    syl, smp = unit.syllabus, unit.sample
    return InstructionRecord(
        id=unit.id,
        discipline=unit.discipline.name,
        subject=syl.subject,
        level=syl.level,
        sessions=[syl.sessions[i].title for i in smp.sessions],
        concepts=[syl.sessions[s].concepts[c] for s, c in smp.concepts],
        strategy=smp.strategy,
        question=question,
        answer=answer,
        provenance={**provenance, "taxonomy_path": list(unit.discipline.path), "subject_id": syl.subject_id,
                    "sample_index": unit.sample_index, "session_indices": list(smp.sessions)},
    )
