"""The collator's contrastive draws and masking, and resumable training of one round."""

import json
import random

import pytest
import torch

from lmops.methods.reason_distill import (
    ARITHMETIC_TASK,
    DistillCollator,
    LossConfig,
    TrainConfig,
    TrainItem,
    arithmetic_problems,
    batch_losses,
    scripted_teacher,
    tiny_student,
    train_round,
    weighted_mle_loss,
)
from lmops.methods.reason_distill.training import leading_special_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def _items(n=8):
    train, _ = arithmetic_problems(n, 0, seed=2)
    teacher = scripted_teacher()
    items = []
    for q in train:
        outs = teacher.generate([ARITHMETIC_TASK.teacher_prompt(q.question)], n=2)[0]
        comps = [ARITHMETIC_TASK.completion(ARITHMETIC_TASK.parse_teacher(o).rationale, q.answer) for o in outs]
        for c in comps:
            items.append(TrainItem(q.id, ARITHMETIC_TASK.student_prompt(q.question), c, positives=comps,
                                   negatives=["1 + 1 = 5. The answer is 5.\nAnswer: 5", "zzz"]))
    return items


def test_collator_draws_a_different_positive_and_masks_incomplete_items():
    _, tok = tiny_student(hidden_size=16, num_layers=1)
    col = DistillCollator(tok, max_length=256)
    base = TrainItem("q", "Question: 2+2?\nReasoning: ", "2 + 2 = 4.\nAnswer: 4")
    items = [
        TrainItem(**{**base.to_dict(), "positives": [base.completion, "two and two make 4.\nAnswer: 4"],
                     "negatives": ["2 + 2 = 5.\nAnswer: 5"]}),
        TrainItem(**{**base.to_dict(), "positives": [base.completion], "negatives": ["x"]}),  # only itself
        TrainItem(**{**base.to_dict(), "positives": ["other"], "negatives": []}),             # no negative
        TrainItem(**{**base.to_dict(), "positives": [], "negatives": ["x"]}),                 # no positive
    ]
    for seed in range(5):
        batch = col(items, random.Random(seed))
        assert batch.cl_mask.tolist() == [1.0, 0.0, 0.0, 0.0]
        assert len(batch.anchors) == 1
        assert tok.decode(batch.positives[0][:-1]) == "two and two make 4.\nAnswer: 4"  # never the anchor
        assert tok.decode(batch.negatives[0][:-1]) == "2 + 2 = 5.\nAnswer: 5"
        assert batch.anchors[0][-1] == tok.eos_token_id == batch.positives[0][-1] == batch.negatives[0][-1]
    # the MLE row is prefix + completion + eos, right-padded, with the prefix length recorded
    p = tok(base.prefix, add_special_tokens=False)["input_ids"]
    c = tok(base.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch.input_ids[0, : len(p) + len(c)].tolist() == p + c
    assert batch.prefix_lengths.tolist() == [len(p)] * 4 and batch.attention_mask[0].sum() == len(p) + len(c)
    assert leading_special_ids(tok) == []
    # truncation keeps the completion and the prefix's end
    short = DistillCollator(tok, max_length=len(c) + 3)
    pp, cc = short.encode(base.prefix, base.completion)
    assert cc == c and pp == p[-3:]
    no_cl = DistillCollator(tok, contrastive=False)(items, random.Random(0))
    assert no_cl.cl_mask.sum() == 0 and not no_cl.anchors


def test_batch_losses_combine_mle_and_half_the_triplet():
    model, tok = tiny_student(hidden_size=32, num_layers=1, seed=1)
    col = DistillCollator(tok)
    batch = col(_items(3), random.Random(0))
    values = batch_losses(model, batch, LossConfig(), col.pad_id)
    assert values["cl"].item() > 0 and len(batch.anchors) == len(batch.cl_mask)
    assert values["loss"].item() == pytest.approx(values["mle"].item() + 0.5 * values["cl"].item(), rel=1e-6)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    want = weighted_mle_loss(logits, batch.input_ids, batch.attention_mask, batch.prefix_lengths, 0.1)
    assert values["mle"].item() == pytest.approx(want.item(), rel=1e-5)
    off = batch_losses(model, batch, LossConfig(contrastive=False), col.pad_id)
    assert off["cl"].item() == 0 and off["loss"].item() == pytest.approx(off["mle"].item())


CFG = TrainConfig(learning_rate=1e-2, max_steps=12, batch_size=4, warmup_steps=2, save_steps=5, seed=1)


def test_training_reduces_the_loss_and_checkpoints_without_pickle(tmp_path):
    model, tok = tiny_student(hidden_size=32, num_layers=1)
    items = _items()
    res = train_round(model, tok, items, train=CFG, loss=LossConfig(), state_dir=tmp_path / "s",
                      log_path=tmp_path / "log.jsonl")
    assert res.total_steps == 12 and res.start_step == 0 and len(res.log) == 12
    first = sum(r["mle"] for r in res.log[:3]) / 3
    last = sum(r["mle"] for r in res.log[-3:]) / 3
    assert last < 0.8 * first
    assert any(r["cl_items"] > 0 for r in res.log)
    latest = tmp_path / "s" / "latest"
    assert (latest / "model.safetensors").is_file() and (latest / "config.json").is_file()
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == 12
    torch.load(latest / "optimizer.pt", weights_only=True)
    torch.load(latest / "rng.pt", weights_only=True)
    with pytest.raises(ValueError, match="items"):
        train_round(model, tok, [], train=CFG, loss=LossConfig(), state_dir=tmp_path / "t")


class Stop(Exception):
    pass


def test_an_interrupted_round_resumes_at_the_step_and_ends_identical(tmp_path):
    items = _items()
    model_a, tok = tiny_student(hidden_size=32, num_layers=1)
    full = train_round(model_a, tok, items, train=CFG, loss=LossConfig(), state_dir=tmp_path / "a",
                       log_path=tmp_path / "a.jsonl")

    def crash(step, record):
        if step == 7:  # after the step-5 checkpoint, before the step-10 one
            raise Stop

    model_b, _ = tiny_student(hidden_size=32, num_layers=1)
    with pytest.raises(Stop):
        train_round(model_b, tok, items, train=CFG, loss=LossConfig(), state_dir=tmp_path / "b",
                    log_path=tmp_path / "b.jsonl", on_step=crash)
    model_c, _ = tiny_student(hidden_size=32, num_layers=1, seed=9)  # fresh weights: all must come from disk
    resumed = train_round(model_c, tok, items, train=CFG, loss=LossConfig(), state_dir=tmp_path / "b",
                          log_path=tmp_path / "b.jsonl")
    assert resumed.start_step == 5 and [r["step"] for r in resumed.log] == list(range(5, 12))
    logged = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(12))  # steps 5-7 were dropped and redone, not doubled
    for x, y in zip(full.log, logged):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="other training data"):
        train_round(model_c, tok, items[:-1], train=CFG, loss=LossConfig(), state_dir=tmp_path / "b")
