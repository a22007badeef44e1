"""The teacher stage (parse, filter, retry, count, skip, resume) and the exam (sample, check, keep wrong)."""

import pytest

from lmops.llm import FunctionLLM, HFLocal, LLMError
from lmops.methods.reason_distill import (
    ARITHMETIC_TASK,
    ExamConfig,
    ExamRecord,
    TeacherConfig,
    TeacherRecord,
    arithmetic_problems,
    collect_rationales,
    evaluate,
    read_records,
    scripted_teacher,
    take_exam,
    tiny_student,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, HELD = arithmetic_problems(12, 4, seed=5)


class Counting:
    """An LLM wrapper counting the prompts it was sent."""

    def __init__(self, llm):
        self.llm, self.name, self.prompts = llm, llm.name, []

    def generate(self, prompts, **kw):
        self.prompts += list(prompts)
        return self.llm.generate(prompts, **kw)

    def chat(self, conversations, **kw):
        self.prompts += [c[-1]["content"] for c in conversations]
        return self.llm.chat(conversations, **kw)

    def loglikelihood(self, *a):
        raise NotImplementedError


def test_round_one_asks_every_question_and_keeps_only_right_answers():
    res = collect_rationales(scripted_teacher(), ARITHMETIC_TASK, TRAIN, TeacherConfig(samples=3), round=1)
    assert res.asked == len(TRAIN) == res.with_rationale
    assert res.rationales == 3 * len(TRAIN) and res.failed == res.malformed == res.rejected_wrong == 0
    for q, rec in zip(TRAIN, res.records):
        assert rec.kind == "rationale" and rec.qid == q.id
        assert all(ARITHMETIC_TASK.parse_teacher(r).answer == q.answer for r in rec.rationales)


def test_wrong_teacher_answers_are_filtered_and_counted():
    res = collect_rationales(scripted_teacher(wrong=1.0), ARITHMETIC_TASK, TRAIN, TeacherConfig(samples=2), round=1)
    assert res.with_rationale == 0 and res.rationales == 0
    assert res.rejected_wrong == 2 * len(TRAIN) and res.failed == 0
    assert all(rec.rejected and rec.rejected[0]["prediction"] != q.answer for q, rec in zip(TRAIN, res.records))


def test_unparsable_answers_are_retried_through_ask_then_counted_and_skipped():
    calls = []

    def fn(prompt, *, sample, temperature, **_):
        calls.append((prompt[-30:], sample))
        # every first answer is malformed; question 0 never answers properly; the others do on retry
        if sample < 1 or TRAIN[0].question in prompt:
            return "I am not sure."
        return "1 + 1 = 2. The answer is 2."

    res = collect_rationales(FunctionLLM(fn), ARITHMETIC_TASK, TRAIN[:4], TeacherConfig(samples=1, retries=2), round=1)
    assert res.asked == 4 and res.failed == 1 and res.malformed == 4  # the first answers
    failed = [r for r in res.records if r.failed]
    assert [r.qid for r in failed] == [TRAIN[0].id] and "final answer" in failed[0].error
    assert res.retries > 0
    # retried answers parsed; their value "2" is checked against gold like any other
    for q, rec in zip(TRAIN[1:4], res.records[1:]):
        assert not rec.failed and (rec.rationales or rec.rejected)
    none = collect_rationales(FunctionLLM(fn), ARITHMETIC_TASK, TRAIN[:4], TeacherConfig(samples=1, retries=0), round=1)
    assert none.failed == 4 and none.retries == 0


def test_backend_errors_never_stop_a_round():
    def broken(prompt, **_):
        raise LLMError("teacher", "server down")

    res = collect_rationales(FunctionLLM(broken), ARITHMETIC_TASK, TRAIN[:3], TeacherConfig(), round=1)
    assert res.failed == 3 and all("server down" in r.error for r in res.records)


def test_a_refused_request_fails_only_its_own_question():
    bad = TRAIN[1].question

    def picky(prompt, **kw):
        if bad in prompt:  # as a local model refuses a prompt longer than its context
            raise ValueError("prompt 0: too long")
        return scripted_teacher().generate([prompt], n=1)[0][0]

    res = collect_rationales(FunctionLLM(picky), ARITHMETIC_TASK, TRAIN[:4], TeacherConfig(samples=1, batch_size=4),
                             round=1)
    assert [r.failed for r in res.records] == [False, True, False, False]
    assert "too long" in res.records[1].error and res.with_rationale == 3


def test_corrections_only_for_mistakes_with_the_feedback_prompt(tmp_path):
    teacher = Counting(scripted_teacher())
    mistakes = {TRAIN[2].id: "7 + 1 = 3.\nAnswer: 3", TRAIN[5].id: "no idea"}
    res = collect_rationales(teacher, ARITHMETIC_TASK, TRAIN, TeacherConfig(samples=2), round=2, mistakes=mistakes,
                             path=tmp_path / "t.jsonl")
    assert [r.qid for r in res.records] == [TRAIN[2].id, TRAIN[5].id]
    assert all(r.kind == "correction" for r in res.records)
    assert res.records[0].student_rationale == "7 + 1 = 3.\nAnswer: 3"
    assert len(teacher.prompts) == 2 and "Student's rationale: 7 + 1 = 3." in teacher.prompts[0]
    with pytest.raises(ValueError, match="mistakes"):
        collect_rationales(teacher, ARITHMETIC_TASK, TRAIN, TeacherConfig(), round=2, mistakes={"nope": "x"})


def test_teacher_stage_resumes_without_asking_twice(tmp_path):
    path = tmp_path / "teacher.jsonl"
    first = collect_rationales(scripted_teacher(), ARITHMETIC_TASK, TRAIN[:5], TeacherConfig(batch_size=2), round=1,
                               path=path)
    with open(path, "a") as f:
        f.write('{"round": 1, "qid": "cut')  # a kill mid-write
    teacher = Counting(scripted_teacher())
    again = collect_rationales(teacher, ARITHMETIC_TASK, TRAIN, TeacherConfig(batch_size=2), round=1, path=path)
    assert len(teacher.prompts) == len(TRAIN) - 5 and again.resumed == 5
    assert [r.qid for r in read_records(path, TeacherRecord)] == [q.id for q in TRAIN]
    assert again.records[:5] == first.records


def test_exam_checks_samples_and_keeps_distinct_wrong_rationales(tmp_path):
    def student(prompt, *, sample, **_):
        if "Max" in prompt or sample == 0:
            return "1 + 1 = 99. The answer is 99.\nAnswer: 99"
        q = next(q for q in TRAIN if q.question in prompt)
        return f"ok.\nAnswer: {q.answer}" if sample == 1 else ""

    path = tmp_path / "exam.jsonl"
    res = take_exam(FunctionLLM(student), ARITHMETIC_TASK, TRAIN, ExamConfig(k=3), round=1, path=path)
    assert len(res.records) == len(TRAIN)
    for q, rec in zip(TRAIN, res.records):
        assert len(rec.samples) == 3 and rec.predictions[0] == "99"
        if "Max" in q.question:
            assert rec.correct == [False] * 3
        else:
            assert rec.correct == [False, True, False]
        assert rec.wrong_rationales == ["1 + 1 = 99. The answer is 99.\nAnswer: 99"]  # distinct, empty dropped
    n_max = sum("Max" in q.question for q in TRAIN)
    assert res.sample_accuracy == pytest.approx((len(TRAIN) - n_max) / (3 * len(TRAIN)))
    assert res.question_accuracy == pytest.approx((len(TRAIN) - n_max) / len(TRAIN))
    assert res.n_negatives == len(TRAIN)
    # resume: nothing is asked again
    counting = Counting(FunctionLLM(student))
    again = take_exam(counting, ARITHMETIC_TASK, TRAIN, ExamConfig(k=3), round=1, path=path)
    assert counting.prompts == [] and again.resumed == len(TRAIN)
    assert read_records(path, ExamRecord) == res.records


def test_exam_and_greedy_eval_with_a_tiny_hf_student():
    model, tok = tiny_student(hidden_size=32, num_layers=1)
    llm = HFLocal(model, tok, seed=3)
    res = take_exam(llm, ARITHMETIC_TASK, TRAIN[:3], ExamConfig(k=4, max_new_tokens=12), round=1)
    assert all(len(r.samples) == 4 for r in res.records)
    assert len({s for r in res.records for s in r.samples}) > 3  # sampled, not greedy copies
    again = take_exam(HFLocal(model, tok, seed=3), ARITHMETIC_TASK, TRAIN[:3], ExamConfig(k=4, max_new_tokens=12),
                      round=1)
    assert [r.samples for r in again.records] == [r.samples for r in res.records]  # seeded: a rerun resamples the same
    ev = evaluate(llm, ARITHMETIC_TASK, HELD, max_new_tokens=12)
    assert ev.total == len(HELD) and len(ev.outputs) == len(HELD) and 0 <= ev.accuracy <= 1
