"""The offline VisionPrefer demo: a synthetic preference set with a planted rule, annotated by the
scripted judge (malformed answers included), VP-Score trained on a tiny CLIP (or BLIP) built from a
config, and its held-out pairwise accuracy; optionally one tiny alignment run with the trained reward.

    >>> from lmops.methods.visionprefer.demo import run_demo
    >>> summary = run_demo("out/vp-demo")
    >>> summary["valid_accuracy"]          # held-out pairwise accuracy on the planted rule
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .annotate import annotate, merge_annotations
from .backbones import tiny_blip, tiny_clip
from .config import (
    ASPECTS,
    AnnotateConfig,
    DPOConfig,
    PPOConfig,
    ReFLConfig,
    SamplerConfig,
    TrainScoreConfig,
    VPScoreConfig,
)
from .data import make_pairs, write_records
from .scripted import ScriptedJudge
from .synthetic import make_synthetic_dataset
from .train_score import pairwise_accuracy, split_by_prompt, train_vp_score
from .vp_score import VPScore

__all__ = ["DEMO_SCORE_CONFIG", "DEMO_TRAIN_CONFIG", "run_demo", "run_alignment"]

# tiny-model settings tuned for the demo (a choice): ImageReward's head scaled down, no dropout
DEMO_SCORE_CONFIG = VPScoreConfig(head_dims=(64, 16), head_dropout=(0.0,), finetune="full")
DEMO_TRAIN_CONFIG = TrainScoreConfig(epochs=12, batch_size=16, lr=1e-3)


def run_alignment(
    method: str,
    reward: VPScore | None,
    prompts: list[str],
    *,
    pairs: list | None = None,
    seed: int = 0,
    steps: int | None = None,
    reward_fn: Any = None,
) -> dict[str, Any]:
    """One short alignment run of a tiny pipeline (``refl``, ``dpo`` or ``ppo``) and the mean reward of
    fixed-seed samples before and after. ``reward_fn`` (images, prompts) -> (B,) defaults to ``reward``'s."""
    from .diffusion import tiny_pipeline
    from .dpo import train_dpo
    from .ppo import train_ppo
    from .refl import mean_reward, train_refl

    fn = reward_fn or reward.reward_fn()
    pipe = tiny_pipeline(seed=seed)
    sampler = SamplerConfig(num_steps=6, eta=0.0)
    eval_prompts = (prompts * (16 // max(1, len(prompts)) + 1))[:16]
    before = mean_reward(pipe, eval_prompts, fn, sampler, seed=seed + 1)
    if method == "refl":
        rep = train_refl(
            pipe,
            prompts,
            fn,
            ReFLConfig(steps=steps or 20, batch_size=8, lr=1e-2, grad_steps=2, sampler=sampler, seed=seed),
        ).to_dict()
    elif method == "ppo":
        rep = train_ppo(
            pipe,
            prompts,
            fn,
            PPOConfig(
                epochs=steps or 10,
                batch_size=8,
                lr=3e-3,
                clip_range=0.2,
                sampler=SamplerConfig(num_steps=6, eta=1.0),
                seed=seed,
            ),
        ).to_dict()
    elif method == "dpo":
        if not pairs:
            raise ValueError("pairs: Diffusion-DPO needs preference pairs")
        rep = train_dpo(
            pipe, pairs, DPOConfig(steps=steps or 30, batch_size=8, lr=1e-3, beta=500.0, seed=seed)
        ).to_dict()
    else:
        raise ValueError(f"method: expected 'refl', 'dpo' or 'ppo', got {method!r}")
    after = mean_reward(pipe, eval_prompts, fn, sampler, seed=seed + 1)
    return {"method": method, "mean_reward_before": before, "mean_reward_after": after, "train": rep, "pipeline": pipe}


def run_demo(
    out: str | os.PathLike | None = None,
    *,
    n_prompts: int = 320,
    backbone: str = "clip",
    malformed: float = 0.1,
    valid_fraction: float = 0.25,
    seed: int = 0,
    score_config: VPScoreConfig | None = None,
    train_config: TrainScoreConfig | None = None,
    align: str | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns a summary (``valid_accuracy`` is the held-out pairwise accuracy on the
    aggregated planted preferences; ``per_aspect_valid_accuracy`` per aspect). Files (images, prompts,
    the annotation log, the annotated set, the trained VP-Score) go under ``out`` (a temporary folder,
    removed afterwards, when ``None``)."""
    if backbone not in ("clip", "blip"):
        raise ValueError(f"backbone: expected 'clip' or 'blip', got {backbone!r}")
    if out is None:
        with tempfile.TemporaryDirectory(prefix="vp-demo-") as tmp:
            return run_demo(
                tmp,
                n_prompts=n_prompts,
                backbone=backbone,
                malformed=malformed,
                valid_fraction=valid_fraction,
                seed=seed,
                score_config=score_config,
                train_config=train_config,
                align=align,
                save=False,
            )
    root = Path(out)
    start = time.perf_counter()
    records = make_synthetic_dataset(root / "data", n_prompts, seed=seed)
    write_records(root / "data" / "prompts.jsonl", records)
    judge = ScriptedJudge(malformed, seed=seed)
    report = annotate(records, judge, root / "data" / "annotations.jsonl", AnnotateConfig(), fsync=False)
    annotated = merge_annotations(records, root / "data" / "annotations.jsonl")
    write_records(root / "data" / "annotated.jsonl", annotated)
    pairs, stats = make_pairs(annotated)
    train, valid = split_by_prompt(pairs, valid_fraction, seed)
    torch.manual_seed(seed)
    bb = tiny_clip(seed=seed) if backbone == "clip" else tiny_blip(seed=seed)
    model = VPScore(bb, score_config or DEMO_SCORE_CONFIG)
    tcfg = train_config or TrainScoreConfig(**{**DEMO_TRAIN_CONFIG.to_dict(), "seed": seed})
    trained = train_vp_score(model, train, tcfg, valid_pairs=valid)
    held = {p.prompt_id for p in valid}
    per_aspect = {}
    for aspect in ASPECTS:
        aspect_pairs = make_pairs([r for r in annotated if r.prompt_id in held], aspect)[0]
        per_aspect[aspect] = pairwise_accuracy(model, aspect_pairs) if aspect_pairs else None
    summary: dict[str, Any] = {
        "backbone": f"tiny-{backbone}",
        "prompts": n_prompts,
        "images": sum(len(r.images) for r in records),
        "annotation": report.to_dict(),
        "pairs": stats.to_dict(),
        "train_pairs": len(train),
        "valid_pairs": len(valid),
        "valid_accuracy_before": trained.valid_accuracy_before,
        "valid_accuracy": trained.valid_accuracy,
        "train_accuracy": trained.train_accuracy,
        "per_aspect_valid_accuracy": per_aspect,
        "epoch_loss": trained.epoch_loss,
        "train_seconds": trained.seconds,
    }
    if save:
        model.save(root / "vp_score")
        summary["vp_score_dir"] = str(root / "vp_score")
    if align:
        prompts = sorted({r.prompt for r in annotated})
        result = run_alignment(align, model, prompts, pairs=train, seed=seed)
        pipe = result.pop("pipeline")
        if save:
            pipe.save_pretrained(root / f"generator-{align}")
        summary["alignment"] = {k: v for k, v in result.items() if k != "train"}
    summary["seconds"] = time.perf_counter() - start
    if save:
        (root / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
