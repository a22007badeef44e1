"""``scripted``: an offline, deterministic stand-in for the GLAN models, for the demo and the tests.

:func:`scripted_llm` is a :class:`~lmops.llm.FunctionLLM` that recognizes each stage's prompt (from
:mod:`.prompts`) and answers it plausibly from templates: subject lists from the discipline's name, the
JSONL conversion of its own lists, syllabi built from a subject's subtopics, their JSON extraction,
homework questions naming the sampled concepts, and answers. Nothing is random: an answer depends only on
the request (prompt, sample index, temperature), so a rerun, a cache replay and a resumed run all see
the same text. ``malformed`` makes that fraction of the structured answers (conversions, extractions,
questions, answers, taxonomy lists) unusable, to exercise the count-and-skip path; ``delay`` sleeps per
completion, to make a run slow enough to be killed mid-way.
"""

from __future__ import annotations

import hashlib
import json
import re
import time

from ...llm import FunctionLLM
from . import prompts

__all__ = ["ScriptedGlan", "scripted_llm"]

_NAMES = ("Foundations of {d}", "Methods of {d}", "History of {d}", "Applied {d}", "Quantitative {d}",
          "{d} in Practice", "Advanced Topics in {d}", "Research Seminar in {d}", "Ethics and {d}",
          "Computational {d}")
_LEVELS = ("Introductory (undergraduate year 1)", "Intermediate (undergraduate year 2)",
           "Advanced (undergraduate year 3)", "Graduate")
_TOPICS = ("core definitions", "classical models", "measurement and data", "historical development",
           "case studies", "problem solving", "formal theory", "experimental design", "critical analysis",
           "modern applications", "open research questions", "quantitative reasoning")
_CONCEPTS = ("the definition of {t}", "a worked example of {t}", "common misconceptions about {t}",
             "the assumptions behind {t}", "how to evaluate {t}")
_TAXONOMY = {
    "Natural Sciences": {"Physical Sciences": ["Physics", "Chemistry"], "Life Sciences": ["Biology", "Ecology"]},
    "Humanities": {"Philosophy and Religion": ["Philosophy", "Ethics"], "Arts": ["Music", "Visual Arts"]},
    "Social Sciences": {"Economics and Business": ["Economics", "Accounting"], "Behavioral Sciences": ["Psychology"]},
}


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode("utf-8")).digest()[:8], "big")


class ScriptedGlan:
    """The callable behind :func:`scripted_llm` (``fn(prompt, *, temperature, sample, ...) -> str``)."""

    def __init__(self, *, malformed: float = 0.0, delay: float = 0.0, subjects_per_query: int = 3) -> None:
        if isinstance(malformed, bool) or not isinstance(malformed, (int, float)) or not 0 <= malformed <= 1:
            raise ValueError(f"malformed: expected a fraction in [0, 1], got {malformed!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError(f"delay: expected seconds >= 0, got {delay!r}")
        if isinstance(subjects_per_query, bool) or not isinstance(subjects_per_query, int) or subjects_per_query < 1:
            raise ValueError(f"subjects_per_query: expected a positive int, got {subjects_per_query!r}")
        self.malformed = float(malformed)
        self.delay = float(delay)
        self.subjects_per_query = subjects_per_query

    def __call__(self, prompt: str, *, temperature: float = 0.0, sample: int = 0, **_: object) -> str:
        if self.delay:
            time.sleep(self.delay)
        try:
            msgs = json.loads(prompt)
            assert isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs)
        except (ValueError, AssertionError):
            msgs = [{"role": "user", "content": prompt}]
        last = msgs[-1]["content"]
        broken = _h("malformed", prompt, sample, temperature) % 10_000 < self.malformed * 10_000
        if last == prompts.convert_subjects():
            return "Sure, here they are: subjects listed above." if broken else self._convert(msgs[-2]["content"])
        if last == prompts.extract_sessions():
            return "{'sessions': oops" if broken else self._extract(msgs[-2]["content"])
        if last == prompts.taxonomy_fields():
            return "fields" if broken else json.dumps(list(_TAXONOMY))
        m = re.match(r"List the sub-fields of the field \"(.+?)\"", last)
        if m:
            return "sub-fields" if broken else json.dumps(list(_TAXONOMY.get(m[1], {f"Core {m[1]}": []})))
        m = re.match(r"List the disciplines of the sub-field \"(.+?)\" \(in the field \"(.+?)\"\)", last)
        if m:
            leaves = _TAXONOMY.get(m[2], {}).get(m[1]) or [f"{m[1]} Studies"]
            return "disciplines" if broken else json.dumps(leaves)
        m = re.match(r"You are an education expert in (.+?)\. List all the subjects", last)
        if m:
            return self._subjects(m[1], sample)
        m = re.match(r"You are an expert teacher of (.+?)\. Design a syllabus for the course \"(.+?)\" for students "
                     r"at the level \"(.+?)\"\. The course covers these subtopics: (.+?)\. Divide", last, re.DOTALL)
        if m:
            return self._syllabus(m[2], m[3], [t.strip() for t in m[4].split(";") if t.strip()])
        if "Write one homework question" in last:
            return "" if broken else self._question(last, sample)
        return "" if broken else self._answer(last, sample)

    # -- the answers ------------------------------------------------------------------------------
    def _subjects(self, d: str, sample: int) -> str:
        lines = [f"Here are subjects that a student of {d} should learn:", ""]
        for i in range(self.subjects_per_query):
            k = sample * self.subjects_per_query + i
            name = _NAMES[k % len(_NAMES)].format(d=d)
            level = _LEVELS[_h(d, name) % len(_LEVELS)]
            start = _h("topics", d, name) % len(_TOPICS)
            topics = [_TOPICS[(start + j * 5) % len(_TOPICS)] for j in range(3)]
            lines += [f"{i + 1}. {name}", f"Level: {level}",
                      f"Introduction: This course introduces students to {name.lower()}.",
                      f"Subtopics: {'; '.join(topics)}", ""]
        return "\n".join(lines)

    @staticmethod
    def _convert(text: str) -> str:
        rows = re.findall(r"^\d+\. (.+)\nLevel: (.+)\nIntroduction: .*\nSubtopics: (.+)$", text, re.MULTILINE)
        return "\n".join(json.dumps({"subject_name": n, "level": lv, "subtopics": [t.strip() for t in s.split(";")]})
                         for n, lv, s in rows)

    @staticmethod
    def _syllabus(subject: str, level: str, subtopics: list[str]) -> str:
        extra = ["case studies", "current research"]
        topics = list(dict.fromkeys([f"an overview of {subject}"] + subtopics + extra))
        n = 3 + _h("sessions", subject, level) % 3
        lines = [f"Syllabus: {subject} ({level})", ""]
        for i, topic in enumerate(topics[:n]):
            m = 2 + _h("concepts", subject, topic) % 4
            concepts = [c.format(t=topic) for c in _CONCEPTS[:m]]
            lines += [f"Session {i + 1}: {topic[0].upper() + topic[1:]}",
                      f"Description: students study {topic} as it applies to {subject}.",
                      f"Key concepts: {'; '.join(concepts)}", ""]
        return "\n".join(lines)

    @staticmethod
    def _extract(text: str) -> str:
        rows = re.findall(r"^Session \d+: (.+)\nDescription: (.+)\nKey concepts: (.+)$", text, re.MULTILINE)
        sessions = [{"title": t, "description": d, "key_concepts": [c.strip() for c in k.split(";")]}
                    for t, d, k in rows]
        return "```json\n" + json.dumps({"sessions": sessions}, indent=1) + "\n```"

    @staticmethod
    def _question(text: str, sample: int) -> str:
        subject = re.search(r"teacher of the course \"(.+?)\"", text)
        sessions = re.search(r"learned up to the class session\(s\): (.+?)\.\n", text)
        concepts = re.search(r"Key concepts to use: (.+?)\.\n", text)
        if not (subject and sessions and concepts):
            return "I cannot write a question for this."
        cs = [c.strip() for c in concepts[1].split(";")]
        ask = cs[0] if len(cs) == 1 else ", ".join(cs[:-1]) + " and " + cs[-1]
        verbs = ("Explain", "Discuss", "Compare", "Analyze")
        verb = verbs[_h(text, sample) % len(verbs)]
        return (f"Question: {verb} {ask}, drawing on the sessions \"{sessions[1]}\" of {subject[1]}. "
                "Support your answer with a concrete example.")

    @staticmethod
    def _answer(question: str, sample: int) -> str:
        topic = question.split(",")[0].split(" ", 1)[-1] if " " in question else question
        return (f"To answer this, start from {topic}. State the relevant definitions, show how each idea applies "
                f"in a concrete example, and check the result against the assumptions made. "
                f"(worked answer #{_h(question, sample) % 1000})")


def scripted_llm(model: str = "glan-scripted", *, malformed: float = 0.0, delay: float = 0.0,
                 subjects_per_query: int = 3) -> FunctionLLM:
    """The scripted recipe as an LLM backend named ``scripted:<model>`` (use two names for the generator
    and the answer model so their caches stay apart). Conversations reach it as JSON."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected a non-empty name, got {model!r}")
    fn = ScriptedGlan(malformed=malformed, delay=delay, subjects_per_query=subjects_per_query)
    return FunctionLLM(fn, name=f"scripted:{model}", chat_template=lambda conv: json.dumps(conv, ensure_ascii=False))
