"""Tiny TREC models and data the TREC tests share (a helper module, not collected)."""

from __future__ import annotations

from lmops.methods.trec import ModelConfig, NoiseSchedule, Vocab, build_model, synthetic_splits

TRAIN, TEST = synthetic_splits(1000, 60, seed=0, min_len=3, max_len=6, words=("ant", "bee", "cat", "dog", "eel",
                                                                              "fox", "gnu", "hen"))
VOCAB = Vocab.build(TRAIN + TEST)


def tiny_config(**overrides) -> ModelConfig:
    sizes = dict(vocab_size=len(VOCAB), embed_dim=8, hidden_dim=32, num_heads=2, ffn_dim=64, encoder_layers=1,
                 denoiser_layers=1, max_source_len=6, target_len=6)
    sizes.update(overrides)
    return ModelConfig(**sizes)


def tiny_model(seed: int = 0, **overrides):
    return build_model(tiny_config(**overrides), seed=seed)


def tiny_schedule(T: int = 100, name: str = "sqrt") -> NoiseSchedule:
    return NoiseSchedule(name, T)


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)
