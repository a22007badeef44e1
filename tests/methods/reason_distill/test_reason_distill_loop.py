"""The multi-round loop end to end on a tiny student: checkpoint hand-off, data on disk, stage log, resume
after an interruption, bad teacher answers, settings checks."""

import json

import pytest
import torch

from lmops.llm import FunctionLLM, load_local_model
from lmops.methods.reason_distill import (
    ARITHMETIC_TASK,
    DistillConfig,
    ExamConfig,
    ExamRecord,
    LossConfig,
    TeacherConfig,
    TeacherRecord,
    TrainConfig,
    TrainItem,
    arithmetic_problems,
    param_fingerprint,
    read_records,
    run_distillation,
    scripted_teacher,
    tiny_student,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, HELD = arithmetic_problems(6, 3, seed=11)
CONFIG = DistillConfig(
    rounds=2,
    exam=ExamConfig(k=2, max_new_tokens=20, batch_size=8),
    teacher=TeacherConfig(samples=2, batch_size=4),
    loss=LossConfig(),
    train=TrainConfig(learning_rate=5e-3, epochs=2, batch_size=4, warmup_steps=1, save_steps=2),
    eval_max_new_tokens=20,
)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("student")
    model, tok = tiny_student(hidden_size=32, num_layers=1, seed=4)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Counting:
    def __init__(self, llm):
        self.llm, self.name, self.prompts = llm, llm.name, []

    def generate(self, prompts, **kw):
        self.prompts += list(prompts)
        return self.llm.generate(prompts, **kw)

    def chat(self, conversations, **kw):
        return self.llm.chat(conversations, **kw)

    def loglikelihood(self, *a):
        raise NotImplementedError


def _stages(out):
    return [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]


def _run(out, student_dir, teacher=None, config=CONFIG, hook=None):
    return run_distillation(out, student=student_dir, teacher=teacher or scripted_teacher(malformed=0.3, seed=2),
                            task=ARITHMETIC_TASK, train_questions=TRAIN, eval_questions=HELD, config=config,
                            log=None, hook=hook)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, student_dir):
    """One uninterrupted two-round run, with the model each round's training started from."""
    out = tmp_path_factory.mktemp("run") / "ref"
    starts = {}

    def hook(event, r, info):
        if event == "train_start":
            starts[r] = {k: v.clone() for k, v in info["model"].state_dict().items()}

    metrics = _run(out, student_dir, hook=hook)
    return out, metrics, starts


def test_two_rounds_hand_checkpoints_over_and_keep_every_rounds_data(reference, student_dir):
    out, metrics, starts = reference
    for r in (1, 2):
        for name in ("exam.jsonl", "teacher.jsonl", "train.jsonl", "train_log.jsonl", "eval.json"):
            assert (out / f"round_{r}" / name).is_file(), name
        assert (out / f"round_{r}" / "checkpoint" / "config.json").is_file()
        assert not (out / f"round_{r}" / "train_state").exists()  # superseded by the checkpoint
    # round 1 starts from the initial student, round 2 from round 1's checkpoint, parameter by parameter
    for r, source in ((1, student_dir), (2, out / "round_1" / "checkpoint")):
        model, _ = load_local_model(source)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(starts[r][name], value, rtol=0, atol=0, msg=name)
    stages = _stages(out)
    assert [(s["round"], s["stage"]) for s in stages] == [(0, "eval")] + [
        (r, st) for r in (1, 2) for st in ("exam", "teacher", "data", "train", "eval")]
    train = {s["round"]: s["summary"] for s in stages if s["stage"] == "train"}
    init, _ = load_local_model(student_dir)
    assert train[1]["start_fingerprint"] == param_fingerprint(init)
    assert train[2]["start_fingerprint"] == train[1]["final_fingerprint"] != train[1]["start_fingerprint"]
    final, _ = load_local_model(out / "round_2" / "checkpoint")
    assert train[2]["final_fingerprint"] == param_fingerprint(final)
    assert train[1]["loss_last"] < train[1]["loss_first"]
    # metrics: an evaluation before round 1 and after each round, on both sets
    assert [row["round"] for row in metrics["rounds"]] == [0, 1, 2]
    for row in metrics["rounds"]:
        assert set(row["eval"]) == {"train", "heldout"} and row["eval"]["train"]["total"] == len(TRAIN)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads((out / "run_state.json").read_text())["stage"] == "done"


def test_round_one_covers_all_questions_and_later_rounds_the_mistakes(reference):
    out, metrics, _ = reference
    t1 = read_records(out / "round_1" / "teacher.jsonl", TeacherRecord)
    assert [r.qid for r in t1] == [q.id for q in TRAIN] and all(r.kind == "rationale" for r in t1)
    exam2 = read_records(out / "round_2" / "exam.jsonl", ExamRecord)
    wrong = [r.qid for r in exam2 if r.n_correct < len(r.samples)]
    t2 = read_records(out / "round_2" / "teacher.jsonl", TeacherRecord)
    assert [r.qid for r in t2] == wrong and all(r.kind == "correction" for r in t2)
    for rec in t2:
        exam = next(e for e in exam2 if e.qid == rec.qid)
        assert rec.student_rationale in exam.wrong_rationales or rec.student_rationale == "(no rationale)"
    # the scripted teacher's malformed answers were counted, not fatal
    teacher1 = metrics["rounds"][1]["teacher"]
    assert teacher1["malformed"] > 0 and teacher1["asked"] == len(TRAIN)
    items = read_records(out / "round_1" / "train.jsonl", TrainItem)
    kept = sum(len(r.rationales) for r in t1)
    assert len(items) == kept == metrics["rounds"][1]["data"]["items"]
    exam1 = {e.qid: e for e in read_records(out / "round_1" / "exam.jsonl", ExamRecord)}
    for it in items:
        assert it.completion in it.positives and set(it.negatives) <= set(exam1[it.qid].wrong_rationales)
        assert it.prefix == ARITHMETIC_TASK.student_prompt(next(q.question for q in TRAIN if q.id == it.qid))


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_at_its_round_and_step(tmp_path, reference, student_dir):
    _, ref_metrics, _ = reference
    out = tmp_path / "run"

    def crash(event, r, info):
        if event == "train_step" and r == 2 and info["step"] == 2:  # after the step-2 checkpoint
            raise Stop

    with pytest.raises(Stop):
        _run(out, student_dir, hook=crash)
    state = json.loads((out / "run_state.json").read_text())
    assert (state["round"], state["stage"], state["step"]) == (2, "train", 2)
    exam1 = (out / "round_1" / "exam.jsonl").read_bytes()
    teacher = Counting(scripted_teacher(malformed=0.3, seed=2))
    metrics = _run(out, student_dir, teacher=teacher)
    assert teacher.prompts == []  # no finished stage was redone
    assert (out / "round_1" / "exam.jsonl").read_bytes() == exam1
    stages = _stages(out)
    keys = [(s["round"], s["stage"]) for s in stages]
    assert len(keys) == len(set(keys)) == 11
    train2 = next(s["summary"] for s in stages if (s["round"], s["stage"]) == (2, "train"))
    assert train2["start_step"] == 2
    # the same round structure and the same weights as the uninterrupted run
    ref_train2 = ref_metrics["rounds"][2]["train"]
    assert train2["total_steps"] == ref_train2["total_steps"]
    assert train2["final_fingerprint"] == ref_train2["final_fingerprint"]
    assert metrics["rounds"][2]["eval"] == ref_metrics["rounds"][2]["eval"]
    steps = [json.loads(line)["step"] for line in (out / "round_2" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(train2["total_steps"]))


def test_more_rounds_extend_a_finished_run_and_other_settings_are_refused(tmp_path, reference, student_dir):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    with pytest.raises(ValueError, match="train"):
        _run(out, student_dir, config=DistillConfig(**{**CONFIG.__dict__, "train": TrainConfig(learning_rate=1.0)}))
    with pytest.raises(ValueError, match="train_questions"):
        run_distillation(out, student=student_dir, teacher=scripted_teacher(), task=ARITHMETIC_TASK,
                         train_questions=TRAIN[:3], config=CONFIG, log=None)
    teacher = Counting(scripted_teacher(malformed=0.3, seed=2))
    metrics = _run(out, student_dir, teacher=teacher, config=DistillConfig(**{**CONFIG.__dict__, "rounds": 3}))
    assert [row["round"] for row in metrics["rounds"]] == [0, 1, 2, 3]
    assert all("Student's rationale" in p for p in teacher.prompts)  # only round 3's corrections were asked
    assert [(s["round"], s["stage"]) for s in _stages(out)][-5:] == [(3, st) for st in
                                                                     ("exam", "teacher", "data", "train", "eval")]


def test_a_teacher_without_parsable_answers_never_crashes_a_round(tmp_path, student_dir):
    teacher = FunctionLLM(lambda prompt, **_: "Hmm, hard to say.", name="useless")
    config = DistillConfig(**{**CONFIG.__dict__, "evaluate": False})
    metrics = _run(tmp_path / "run", student_dir, teacher=teacher, config=config)
    for r in (1, 2):
        row = metrics["rounds"][r]
        assert row["teacher"]["failed"] == row["teacher"]["asked"] > 0
        assert row["data"]["items"] == 0 and row["train"]["total_steps"] == 0 and "skipped" in row["train"]
    stages = {(s["round"], s["stage"]): s["summary"] for s in _stages(tmp_path / "run")}
    assert stages[(2, "train")]["start_fingerprint"] == stages[(1, "train")]["final_fingerprint"]
    init, _ = load_local_model(student_dir)
    assert stages[(2, "train")]["final_fingerprint"] == param_fingerprint(init)  # the weights carried over
    with pytest.raises(FileNotFoundError, match="student"):
        run_distillation(tmp_path / "x", student=tmp_path, teacher=teacher, task=ARITHMETIC_TASK,
                         train_questions=TRAIN, log=None)
    with pytest.raises(ValueError, match="train_questions"):
        run_distillation(tmp_path / "x", student=student_dir, teacher=teacher, task=ARITHMETIC_TASK,
                         train_questions=[], log=None)
