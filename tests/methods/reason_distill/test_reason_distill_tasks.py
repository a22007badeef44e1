"""Prompts, answer extraction, teacher parsing, the synthetic task and the scripted teacher."""

import re
from pathlib import Path

import pytest

from lmops.methods.reason_distill import (
    ARITHMETIC_TASK,
    Demo,
    Question,
    ReasoningTask,
    arithmetic_problems,
    extract_numeric_answer,
    numbers_match,
    parse_teacher_answer,
    read_questions,
    scripted_teacher,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "lmops" / "methods" / "reason_distill" / "examples"


@pytest.mark.parametrize("text, want", [
    ("3 + 4 = 7. The answer is 7.\nAnswer: 7", "7"),       # the structured line wins
    ("4 + 4 = 9, no.\nAnswer: 1,234 apples", "1234"),       # commas dropped
    ("Therefore, the answer is 12. Later 99", "12"),        # first number after the marker
    ("he had 3 then 5", "5"),                               # no marker: the last number
    ("x = 2\n\nAnswer: 9", "2"),                            # cut at the first blank line
    ("no numbers here", None),
    ("\nAnswer: none", None),
    ("the answer is -3.5.", "-3.5"),
])
def test_extract_numeric_answer(text, want):
    assert extract_numeric_answer(text) == want


def test_numbers_match():
    assert numbers_match("7.0", "7") and numbers_match("1,000", "1000")
    assert not numbers_match("8", "7") and not numbers_match(None, "7")
    assert numbers_match("Yes", "yes")


def test_parse_teacher_answer():
    got = parse_teacher_answer("Tom has 3.\nHe buys 4, so 3 + 4 = 7.\nThe answer is 7. Hope that helps!")
    assert got.answer == "7"
    assert got.rationale == "Tom has 3. He buys 4, so 3 + 4 = 7. The answer is 7."  # folded, cut after it
    assert parse_teacher_answer("5 - 2 = 3\nAnswer: 3").answer == "3"
    assert parse_teacher_answer("The answer is 2. No wait, the answer is 1,500.").answer == "1500"  # the last
    for bad in ("I am not sure.", "3 + 4 = 7", ""):
        with pytest.raises(ValueError, match="final answer"):
            parse_teacher_answer(bad)


def test_student_prompt_and_completion_format():
    task = ReasoningTask("t", [Demo("Q1?", "a\nb. The answer is 1.", "1")])
    prompt = task.student_prompt("Q2?")
    assert prompt == "Question: Q1?\nReasoning: a b. The answer is 1.\nAnswer: 1\n\nQuestion: Q2?\nReasoning: "
    assert task.completion("x\ny.", "3") == "x y.\nAnswer: 3"
    assert task.check("1 + 2 = 3.\nAnswer: 3", "3") == ("3", True)
    assert task.check("garbage", "3") == (None, False)
    assert "Student's rationale: 1 + 1 = 3." in task.feedback_prompt("Q2?", "1 + 1 = 3.")
    assert task.teacher_prompt("Q2?").endswith("Question: Q1?\nAnswer: a b. The answer is 1.\n\nQuestion: Q2?\nAnswer:")
    plain = ReasoningTask("t", [Demo("Q1?", "1 + 1 = 2.", "2")])
    assert "Answer: 1 + 1 = 2. The answer is 2.\n" in plain.teacher_prompt("Q?")  # the statement is added once
    assert ARITHMETIC_TASK.student_prompt("Q?") == "Question: Q?\nReasoning: "  # the tiny student: no demos
    with pytest.raises(TypeError, match="extract_answer"):
        ReasoningTask("t", extract_answer=3)
    with pytest.raises(TypeError, match="demos"):
        ReasoningTask("t", ["not a demo"])


def _compute(question: str) -> int:
    a, b = map(int, re.findall(r"\d+", question))
    return a + b if "buys" in question else a - b


def test_arithmetic_problems_are_deterministic_disjoint_and_right():
    train, held = arithmetic_problems(40, 20, seed=3)
    assert (train, held) == arithmetic_problems(40, 20, seed=3)
    assert arithmetic_problems(40, 20, seed=4)[0] != train
    assert len(train) == 40 and len(held) == 20
    assert not {q.question for q in train} & {q.question for q in held}
    for q in train + held:
        assert int(q.answer) == _compute(q.question) and int(q.answer) >= 1
    with pytest.raises(ValueError, match="n_train"):
        arithmetic_problems(-1)


def test_shipped_examples_match_the_generator():
    train, held = arithmetic_problems(64, 32, seed=0)
    assert read_questions(EXAMPLES / "arithmetic_train.jsonl") == (train, [])
    assert read_questions(EXAMPLES / "arithmetic_heldout.jsonl") == (held, [])


def test_read_questions_reports_bad_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a?", "answer": 1}\nnot json\n{"question": "b?"}\n'
                    '{"id": "1", "question": "c?", "answer": "2"}\n{"question": "", "answer": "2"}\n')
    questions, bad = read_questions(path)
    assert questions == [Question("1", "a?", "1")]
    assert [line for line, _ in bad] == [2, 3, 4, 5]
    assert "repeated" in bad[2][1] and "question" in bad[3][1]


def test_scripted_teacher_answers_right_and_malformed_on_request():
    train, _ = arithmetic_problems(30, 0)
    teacher = scripted_teacher()
    outs = teacher.generate([ARITHMETIC_TASK.teacher_prompt(q.question) for q in train], n=3, temperature=0.7)
    for q, samples in zip(train, outs):
        parsed = [parse_teacher_answer(s) for s in samples]
        assert all(p.answer == q.answer for p in parsed)
        assert len({p.rationale for p in parsed}) == 3  # three phrasings: positives exist
    fb = teacher.generate([ARITHMETIC_TASK.feedback_prompt(train[0].question, "1 + 1 = 5.")])[0][0]
    assert parse_teacher_answer(fb).answer == train[0].answer
    noisy = scripted_teacher(malformed=0.5, wrong=0.3, seed=1)
    texts = [t for group in noisy.generate([ARITHMETIC_TASK.teacher_prompt(q.question) for q in train], n=4)
             for t in group]
    n_bad = sum(1 for t in texts if "The answer is" not in t)
    assert 0.3 < n_bad / len(texts) < 0.7
    assert teacher.generate(["Question: what is love?\nAnswer:"])[0][0].startswith("Let me think")
    with pytest.raises(ValueError, match="malformed"):
        scripted_teacher(malformed=2)
