"""Training and evaluating VP-Score on preference pairs: the pairwise Bradley-Terry loss, AdamW, and
pairwise accuracy (the paper's "preference prediction accuracy") on held-out pairs.

Held-out pairs are split by prompt (:func:`split_by_prompt`), so no image of a held-out pair is seen
in training. Each image is preprocessed once and cached (``cache_pixels``), which suits datasets that
fit in memory; pass ``cache_pixels=False`` for large ones.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .config import TrainScoreConfig
from .data import PreferencePair
from .vp_score import VPScore, bradley_terry_loss, pairwise_accuracy_from_scores

__all__ = ["TrainReport", "pairwise_accuracy", "score_pairs", "split_by_prompt", "train_vp_score"]


def split_by_prompt(
    pairs: Sequence[PreferencePair], valid_fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, valid)``: the prompts (not the pairs) are shuffled with ``seed`` and ``valid_fraction``
    of them held out, with all their pairs."""
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction: expected a number in [0, 1), got {valid_fraction!r}")
    prompts = sorted({p.prompt_id for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: int(round(valid_fraction * len(prompts)))])
    return [p for p in pairs if p.prompt_id not in held], [p for p in pairs if p.prompt_id in held]


class _Pixels:
    """Preprocessed pixels per image path, cached when asked."""

    def __init__(self, model: VPScore, cache: bool) -> None:
        self.model, self.cache, self.store = model, cache, {}

    def __call__(self, paths: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(paths) if p not in self.store]
        if missing:
            fresh = self.model.backbone.pixels_from_images(missing)
            got = dict(zip(missing, fresh))
            if self.cache:
                self.store.update(got)
        else:
            got = {}
        return torch.stack([self.store[p] if p in self.store else got[p] for p in paths])


def _pair_scores(model: VPScore, batch: Sequence[PreferencePair], pixels: _Pixels) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(batch)
    pix = pixels([p.chosen.path for p in batch] + [p.rejected.path for p in batch])
    text = model.backbone.encode_text([p.prompt for p in batch] * 2)
    scores = model(pix, text["input_ids"], text["attention_mask"])
    return scores[:n], scores[n:]


@torch.no_grad()
def score_pairs(
    model: VPScore, pairs: Sequence[PreferencePair], *, batch_size: int = 64, pixels: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen scores, rejected scores)``, each ``(len(pairs),)``, in eval mode."""
    was = model.training
    model.eval()
    pixels = pixels or _Pixels(model, cache=False)
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = _pair_scores(model, pairs[i : i + batch_size], pixels)
        chosen.append(c)
        rejected.append(r)
    model.train(was)
    return torch.cat(chosen), torch.cat(rejected)


def pairwise_accuracy(
    model: VPScore, pairs: Sequence[PreferencePair], *, batch_size: int = 64, pixels: Any = None
) -> float:
    """The share of ``pairs`` whose chosen image the model scores higher (ties count one half)."""
    if not pairs:
        raise ValueError("pairs: expected at least one pair")
    chosen, rejected = score_pairs(model, pairs, batch_size=batch_size, pixels=pixels)
    return pairwise_accuracy_from_scores(chosen, rejected)


@dataclass
class TrainReport:
    """What :func:`train_vp_score` did: per-epoch mean loss, accuracies (``None`` when there was no such
    split), pair counts, optimizer steps, wall time, calibration."""

    epoch_loss: list[float] = field(default_factory=list)
    train_accuracy: float | None = None
    valid_accuracy: float | None = None
    valid_accuracy_before: float | None = None
    n_train: int = 0
    n_valid: int = 0
    steps: int = 0
    seconds: float = 0.0
    reward_mean: float = 0.0
    reward_std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_vp_score(
    model: VPScore,
    pairs: Sequence[PreferencePair],
    config: TrainScoreConfig | None = None,
    *,
    valid_pairs: Sequence[PreferencePair] = (),
    cache_pixels: bool = True,
) -> TrainReport:
    """Train ``model`` in place on ``pairs`` with the Bradley-Terry loss; report accuracies before and
    after on ``valid_pairs`` (held out) and after on the training pairs."""
    config = config or TrainScoreConfig()
    if not pairs:
        raise ValueError("pairs: expected at least one training pair")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    pixels = _Pixels(model, cache_pixels)
    report = TrainReport(n_train=len(pairs), n_valid=len(valid_pairs))
    start = time.perf_counter()
    if valid_pairs:
        report.valid_accuracy_before = pairwise_accuracy(model, valid_pairs, pixels=pixels)
    head = [p for p in model.head.parameters() if p.requires_grad]
    rest = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": config.head_lr or config.lr}]
    if rest:
        groups.append({"params": rest, "lr": config.lr})
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay, foreach=True)
    order = list(range(len(pairs)))
    total_steps = config.epochs * ((len(pairs) + config.batch_size - 1) // config.batch_size)
    sched = None
    if config.schedule == "cosine":
        warm = int(config.warmup * total_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    bar = None
    if config.progress:
        from ...common.progress import progress_bar

        bar = progress_bar(total_steps, desc="train VP-Score", unit="step")
    model.train()
    try:
        for _ in range(config.epochs):
            rng.shuffle(order)
            total, count = 0.0, 0
            for i in range(0, len(order), config.batch_size):
                batch = [pairs[j] for j in order[i : i + config.batch_size]]
                chosen, rejected = _pair_scores(model, batch, pixels)
                loss = bradley_terry_loss(chosen, rejected)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
                report.steps += 1
                if bar is not None:
                    bar.update(1)
            report.epoch_loss.append(total / count)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    if config.calibrate:
        seen = {}
        for p in pairs:
            for im in (p.chosen, p.rejected):
                seen.setdefault(im.path, p.prompt)
        report.reward_mean, report.reward_std = model.calibrate(list(seen.values()), list(seen.keys()))
    report.train_accuracy = pairwise_accuracy(model, pairs, pixels=pixels)
    if valid_pairs:
        report.valid_accuracy = pairwise_accuracy(model, valid_pairs, pixels=pixels)
    report.seconds = time.perf_counter() - start
    return report
