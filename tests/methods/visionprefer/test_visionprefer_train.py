"""Training VP-Score: the end-to-end demo on the planted rule (held-out pairwise accuracy), the
held-out split, and a short LoRA/BLIP run that lowers the Bradley-Terry loss."""

import pytest
import torch

from lmops.methods.visionprefer import (
    ScriptedJudge,
    TrainScoreConfig,
    VPScore,
    VPScoreConfig,
    annotate,
    make_pairs,
    make_synthetic_dataset,
    merge_annotations,
    pairwise_accuracy,
    split_by_prompt,
    tiny_blip,
    tiny_clip,
    train_vp_score,
)
from lmops.methods.visionprefer.demo import run_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_learns_the_planted_preference_rule(tmp_path):
    """The fast end-to-end path: synthetic images -> scripted judge (10% malformed answers) -> pairs ->
    tiny CLIP VP-Score -> held-out pairwise accuracy on prompts never trained on."""
    summary = run_demo(tmp_path, n_prompts=320, seed=0)
    assert summary["annotation"]["skipped"] < 0.01 * 320 * 4 * 4 and summary["annotation"]["retries"] > 0
    assert summary["valid_pairs"] > 300
    assert summary["valid_accuracy"] > 0.75
    assert summary["valid_accuracy"] > summary["valid_accuracy_before"] + 0.1
    per = summary["per_aspect_valid_accuracy"]
    assert per["harmlessness"] > 0.8 and per["prompt_following"] > 0.6  # the text-dependent aspect too
    assert (tmp_path / "vp_score" / "vpscore.json").is_file() and (tmp_path / "data" / "annotated.jsonl").is_file()
    loaded = VPScore.load(tmp_path / "vp_score")
    from lmops.methods.visionprefer import read_records

    records, bad = read_records(tmp_path / "data" / "annotated.jsonl")
    assert bad == [] and len(records) == 320
    _, valid = split_by_prompt(make_pairs(records)[0], 0.25, 0)
    assert pairwise_accuracy(loaded, valid) == pytest.approx(summary["valid_accuracy"], abs=1e-6)


def test_split_by_prompt_keeps_prompts_whole():
    from lmops.methods.visionprefer import ImageEntry, PreferencePair

    im = ImageEntry("i", "x.png")
    pairs = [PreferencePair(f"p{i % 10}", "a", im, im, "aggregate", 1.0) for i in range(60)]
    train, valid = split_by_prompt(pairs, 0.3, seed=1)
    assert {p.prompt_id for p in train}.isdisjoint({p.prompt_id for p in valid})
    assert len({p.prompt_id for p in valid}) == 3 and len(train) + len(valid) == 60
    with pytest.raises(ValueError, match="valid_fraction"):
        split_by_prompt(pairs, 1.0)


@pytest.mark.parametrize("kind, mode", [("blip", "lora"), ("clip", "reslora")])
def test_adapter_training_lowers_the_loss_and_only_moves_adapters(tmp_path, kind, mode):
    records = make_synthetic_dataset(tmp_path, 16, seed=4)
    annotate(records, ScriptedJudge(), tmp_path / "ann.jsonl", fsync=False)
    pairs, _ = make_pairs(merge_annotations(records, tmp_path / "ann.jsonl"))
    bb = tiny_clip(seed=1) if kind == "clip" else tiny_blip(seed=1)
    model = VPScore(bb, VPScoreConfig(head_dims=(16,), head_dropout=(), finetune=mode, lora_r=4))
    frozen = {n: p.detach().clone() for n, p in model.backbone.model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.backbone.model.named_parameters() if p.requires_grad}
    report = train_vp_score(model, pairs, TrainScoreConfig(epochs=6, batch_size=16, lr=3e-3, calibrate=False))
    assert report.epoch_loss[-1] < report.epoch_loss[0] - 0.05
    params = dict(model.backbone.model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in adapters.items())
