"""What a reasoning task supplies to the loop: the student's few-shot CoT prompt and target format, answer
extraction and checking, and the teacher's prompts and answer parser. Every piece is a constructor
argument of :class:`ReasoningTask`, so a task swaps one without subclassing.

Faithful to the official code (``preprocessors.py``, ``tools.py``): the student's prompt
``"{demos}\\n\\nQuestion: {question}\\nReasoning: "`` (demonstrations separated by blank lines), the
target ``"{rationale}\\nAnswer: {answer}"`` (the rationale's newlines folded to spaces) and the math
answer extraction (:func:`extract_numeric_answer`).
A choice: the teacher's prompt and the feedback prompt of rounds >= 2 (the paper's prompt is not in the
code), and the teacher-answer parser (:func:`parse_teacher_answer`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Demo",
    "ReasoningTask",
    "TeacherAnswer",
    "default_feedback_prompt",
    "default_teacher_prompt",
    "extract_numeric_answer",
    "numbers_match",
    "parse_teacher_answer",
]

_NUMBER = re.compile(r"-?\d+\.?\d*")
# the official cleanup's structured-answer markers, in its order, then the teacher's own phrasing
_ANSWER_MARKERS = ("\nAnswer", "Therefore, the answer is", "The answer is")
_TEACHER_FINAL = re.compile(r"(?:the answer is|answer:)\s*\$?\s*(-?[\d,]*\d(?:\.\d+)?)\s*\.?", re.IGNORECASE)


@dataclass(frozen=True)
class Demo:
    """A few-shot demonstration: a question, its rationale and its final answer."""

    question: str
    reasoning: str
    answer: str


@dataclass(frozen=True)
class TeacherAnswer:
    """A parsed teacher answer: the rationale text (folded to one line, cut after the final answer) and
    the final answer it states."""

    rationale: str
    answer: str


def _clean_number(text: str) -> str:
    return text.replace(",", "").strip(".")


def extract_numeric_answer(text: str) -> str | None:
    """The final number of a student's rationale, as the official ``cleanup`` does for GSM8K, SVAMP and
    MultiArith: the text is cut at the first blank line; if it holds ``"\\nAnswer"`` or ``"Therefore, the
    answer is"`` (or, here also, ``"The answer is"``), the first number after the first such marker,
    otherwise the last number in the text. Commas are dropped; ``None`` when there is no number."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    text = text.strip().split("\n\n")[0]
    for marker in _ANSWER_MARKERS:
        if marker in text:
            after = text.split(marker)[1]
            found = _NUMBER.findall(after.replace(",", ""))
            return _clean_number(found[0]) if found else None
    found = _NUMBER.findall(text.replace(",", ""))
    return _clean_number(found[-1]) if found else None


def numbers_match(prediction: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold one: numerically when both are numbers (so ``"7.0"``
    matches ``"7"``, a choice; the official code compares lower-cased strings), else as lower-cased
    strings. ``None`` never matches."""
    if prediction is None:
        return False
    try:
        return abs(float(_clean_number(prediction)) - float(_clean_number(gold))) < 1e-6
    except ValueError:
        return prediction.strip().lower() == gold.strip().lower()


def parse_teacher_answer(text: str) -> TeacherAnswer:
    """Parse a teacher's rationale. It must state its final answer as ``"The answer is N"`` or
    ``"Answer: N"`` (the last such statement counts); the rationale is the text up to the end of that
    statement with its whitespace folded to single spaces. Raises ``ValueError`` when there is no such
    statement (a malformed answer: :func:`lmops.llm.ask` retries it). A choice of format."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    matches = list(_TEACHER_FINAL.finditer(text))
    if not matches:
        raise ValueError(f"no final answer ('The answer is N.') in the teacher's answer: {text[:80]!r}")
    last = matches[-1]
    rationale = " ".join(text[: last.end()].split())
    if not rationale:
        raise ValueError("empty rationale")
    return TeacherAnswer(rationale, _clean_number(last.group(1)))


def _with_answer(demo: Demo) -> str:
    """A demonstration's rationale ending in its answer statement (added when it has none)."""
    text = " ".join(demo.reasoning.split())
    return text if _TEACHER_FINAL.search(text) else f"{text} The answer is {demo.answer}."


def default_teacher_prompt(question: str, demos: Sequence[Demo]) -> str:
    """Round 1: ask the teacher for a step-by-step rationale ending in ``"The answer is N."`` (a choice;
    the official rationales were collected from ChatGPT with a prompt not in the repository)."""
    instruction = ("Answer the question. Reason step by step, then end with \"The answer is N.\" where N is "
                   "the final number.")
    lines = [instruction, ""]
    for d in demos:
        lines += [f"Question: {d.question}", f"Answer: {_with_answer(d)}", ""]
    lines += [f"Question: {question}", "Answer:"]
    return "\n".join(lines)


def default_feedback_prompt(question: str, student_rationale: str, demos: Sequence[Demo]) -> str:
    """Rounds >= 2: show the teacher the student's wrong rationale and ask for a customised correct one
    (a choice: the paper gives its feedback prompt in the text only; this one follows its idea, the
    teacher sees the mistake and writes a rationale that fixes it)."""
    instruction = ("Write a correct step-by-step rationale that fixes the student's mistake, in the student's "
                   "style, and end with \"The answer is N.\" where N is the final number.")
    lines = ["You are a teacher. Your student answered the question below with a wrong rationale.", "",
             f"Question: {question}", f"Student's rationale: {student_rationale.strip()}", "", instruction, ""]
    for d in demos:
        lines += [f"Example of the style: {_with_answer(d)}", ""]
    lines += ["Correct rationale:"]
    return "\n".join(lines)


class ReasoningTask:
    """A reasoning task's prompts and checks (math word problems by default).

    Args:
        name: a label for logs.
        demos: the student's few-shot CoT demonstrations (official: 4-8 per task; any number).
        extract_answer: student rationale -> final answer or ``None`` (default :func:`extract_numeric_answer`).
        answers_match: ``(prediction, gold) -> bool`` (default :func:`numbers_match`).
        teacher_prompt: ``(question, demos) -> str`` for round 1 (default :func:`default_teacher_prompt`).
        feedback_prompt: ``(question, wrong student rationale, demos) -> str`` for rounds >= 2
            (default :func:`default_feedback_prompt`).
        parse_teacher: teacher text -> :class:`TeacherAnswer`, raising ``ValueError`` on a malformed answer
            (default :func:`parse_teacher_answer`).
        teacher_demos: demonstrations shown to the teacher (default: ``demos``).
    """

    def __init__(
        self,
        name: str = "math",
        demos: Sequence[Demo] = (),
        *,
        extract_answer: Callable[[str], str | None] = extract_numeric_answer,
        answers_match: Callable[[str | None, str], bool] = numbers_match,
        teacher_prompt: Callable[[str, Sequence[Demo]], str] = default_teacher_prompt,
        feedback_prompt: Callable[[str, str, Sequence[Demo]], str] = default_feedback_prompt,
        parse_teacher: Callable[[str], TeacherAnswer] = parse_teacher_answer,
        teacher_demos: Sequence[Demo] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        for label, d in (("demos", demos), ("teacher_demos", teacher_demos or ())):
            if not all(isinstance(x, Demo) for x in d):
                raise TypeError(f"{label}: expected a sequence of Demo, got {list(d)[:2]!r}")
        for label, fn in (("extract_answer", extract_answer), ("answers_match", answers_match),
                          ("teacher_prompt", teacher_prompt), ("feedback_prompt", feedback_prompt),
                          ("parse_teacher", parse_teacher)):
            if not callable(fn):
                raise TypeError(f"{label}: expected a callable, got {type(fn).__name__}")
        self.name = name
        self.demos = tuple(demos)
        self.teacher_demos = tuple(self.demos if teacher_demos is None else teacher_demos)
        self.extract_answer = extract_answer
        self.answers_match = answers_match
        self._teacher_prompt = teacher_prompt
        self._feedback_prompt = feedback_prompt
        self.parse_teacher = parse_teacher

    # -- the student ------------------------------------------------------------------------
    def student_prompt(self, question: str) -> str:
        """The prompt prefix: demonstrations (blank-line separated), then ``Question: ...\\nReasoning: ``."""
        blocks = [f"Question: {d.question}\nReasoning: {self.fold(d.reasoning)}\nAnswer: {d.answer}"
                  for d in self.demos]
        blocks.append(f"Question: {question.strip()}\nReasoning: ")
        return "\n\n".join(blocks)

    @staticmethod
    def fold(text: str) -> str:
        """A rationale on one line (the official ``replace('\\n', ' ')``, spaces collapsed)."""
        return " ".join(text.split())

    def completion(self, rationale: str, answer: str) -> str:
        """The training target after the prefix: ``"{rationale}\\nAnswer: {answer}"``."""
        return f"{self.fold(rationale)}\nAnswer: {answer}"

    def check(self, text: str, gold: str) -> tuple[str | None, bool]:
        """``(extracted answer, correct?)`` for a student rationale."""
        pred = self.extract_answer(text)
        return pred, bool(self.answers_match(pred, gold))

    # -- the teacher ------------------------------------------------------------------------
    def teacher_prompt(self, question: str) -> str:
        return self._teacher_prompt(question, self.teacher_demos)

    def feedback_prompt(self, question: str, student_rationale: str) -> str:
        return self._feedback_prompt(question, student_rationale, self.teacher_demos)
