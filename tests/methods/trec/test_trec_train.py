"""Training end to end: a tiny model learns the synthetic task; checkpoints round-trip and resume bitwise."""

from __future__ import annotations

import json

import pytest
import torch
from trec_tiny import TEST, TRAIN, VOCAB, bitwise_equal, params, tiny_model, tiny_schedule

from lmops.methods.trec import (
    SampleConfig,
    TrainConfig,
    build_model,
    evaluate,
    generate,
    load_model,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_model_learns_the_synthetic_task_with_rc_and_tavs():
    """Measured (1 thread): untrained BLEU ~1, after 200 steps ~95-100 (plain) in ~3 s."""
    schedule = tiny_schedule(200)
    model = tiny_model(seed=0)
    sample_cfg = SampleConfig(steps=10)
    untrained = evaluate(model, schedule, VOCAB, TEST, sample_cfg)
    cfg = TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, seed=0, rc_weight=0.5, tavs_gamma=0.3)
    result = train(model, schedule, VOCAB, TRAIN, cfg, progress=False, log_every=50)
    trained = evaluate(model, schedule, VOCAB, TEST, sample_cfg)
    assert untrained.bleu < 10
    assert trained.bleu > 60 and trained.bleu > untrained.bleu + 50, (untrained.bleu, trained.bleu)
    assert trained.exact > 0.3
    assert [h["step"] for h in result.history] == [50, 100, 150, 200]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert any(h["rc"] != 0.0 for h in result.history)  # RC ran


def test_checkpoint_round_trip(tmp_path):
    schedule = tiny_schedule(50)
    model = tiny_model(seed=5, linear="bitlinear")
    train(model, schedule, VOCAB, TRAIN, TrainConfig(steps=3, batch_size=8, seed=5), out=tmp_path / "ck",
          progress=False)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["format"] == "lmops-trec" and meta["step"] == 3 and meta["model"]["linear"] == "bitlinear"
    loaded = load_model(tmp_path / "ck")
    assert loaded.step == 3 and loaded.vocab.itos == VOCAB.itos and loaded.schedule.T == 50
    assert bitwise_equal(params(loaded.model), params(model))
    cfg = SampleConfig(steps=4)
    sources = [e.source for e in TEST[:4]]
    assert generate(loaded.model, loaded.schedule, loaded.vocab, sources, cfg) == generate(model, schedule, VOCAB,
                                                                                           sources, cfg)
    with pytest.raises(FileNotFoundError, match="not a TREC checkpoint"):
        load_model(tmp_path)


def test_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    schedule = tiny_schedule(50)
    base = dict(batch_size=8, seed=2, rc_weight=0.5, rc_action="sample", tavs_gamma=0.2, warmup_steps=4)
    straight = tiny_model(seed=2, dropout=0.1)
    train(straight, schedule, VOCAB, TRAIN, TrainConfig(steps=6, **base), progress=False)

    first = tiny_model(seed=2, dropout=0.1)
    train(first, schedule, VOCAB, TRAIN, TrainConfig(steps=3, **base), out=tmp_path / "ck", progress=False)
    resumed = tiny_model(seed=99, dropout=0.1)  # other weights: the checkpoint's must be loaded
    result = train(resumed, schedule, VOCAB, TRAIN, TrainConfig(steps=6, **base), out=tmp_path / "ck", resume=True,
                   progress=False)
    assert result.step == 6
    assert bitwise_equal(params(resumed), params(straight))
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["step"] == 6

    with pytest.raises(ValueError, match="rc_weight"):
        train(tiny_model(dropout=0.1), schedule, VOCAB, TRAIN, TrainConfig(steps=8, **{**base, "rc_weight": 0.1}),
              out=tmp_path / "ck", resume=True, progress=False)
    with pytest.raises(ValueError, match="model config"):
        train(tiny_model(), schedule, VOCAB, TRAIN, TrainConfig(steps=8, **base), out=tmp_path / "ck", resume=True,
              progress=False)


def test_build_model_is_seeded_and_leaves_the_global_rng():
    state = torch.get_rng_state()
    a, b = build_model(tiny_model().config, seed=7), build_model(tiny_model().config, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert bitwise_equal(params(a), params(b))
    assert not bitwise_equal(params(a), params(build_model(a.config, seed=8)))
