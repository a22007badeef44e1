"""Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) from preference pairs: the paper's way to
compare preference datasets (VisionPrefer vs ImageRewardDB, HPD v2, Pick-a-Pic).

For a pair (x_w preferred to x_l) with the same prompt, one timestep ``t`` and one noise ``eps`` shared by
both (as the official code), with ``err(m, x) = ||eps - m(x_t, t)||^2`` averaged over pixels:

    loss = -log sigmoid(-beta/2 * ((err(theta, x_w) - err(ref, x_w)) - (err(theta, x_l) - err(ref, x_l))))

``ref`` is a frozen copy of the UNet before training. The official code's ``beta/2`` absorbs the paper's
``beta * T * omega(lambda_t)`` (constant weighting); ``beta`` is ``DPOConfig.beta``. The gradient lowers
the model's error on the preferred image relative to the reference and raises it on the other.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import DPOConfig
from .data import PreferencePair
from .diffusion import T2IPipeline, randint, randn

__all__ = ["DPOReport", "diffusion_dpo_loss", "dpo_pair_loss", "load_pair_images", "train_dpo"]


def diffusion_dpo_loss(
    model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss from per-pair errors (each ``(B,)``: the mean squared denoising error of the model or the
    reference on the preferred ``w`` / dispreferred ``l`` image); returns ``(loss, stats)`` where stats
    has ``implicit_acc`` (share of pairs where the model beats the reference more on ``w`` than on ``l``)."""
    shapes = {tuple(x.shape) for x in (model_w, model_l, ref_w, ref_l)}
    if len(shapes) != 1:
        raise ValueError(f"model_w, model_l, ref_w, ref_l: expected one shape, got {sorted(shapes)}")
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta!r}")
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():
        stats = {
            "implicit_acc": float((inside > 0).float().mean()),
            "model_diff": float(model_diff.mean()),
            "ref_diff": float(ref_diff.mean()),
        }
    return loss, stats


def dpo_pair_loss(
    pipe: T2IPipeline,
    ref_unet: torch.nn.Module,
    x_w: torch.Tensor,
    x_l: torch.Tensor,
    cond: torch.Tensor,
    beta: float,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One Diffusion-DPO loss on model-space pairs ``x_w``, ``x_l`` (B, C, H, W) with text states ``cond``."""
    sched = pipe.scheduler
    b = x_w.shape[0]
    noise = randn(x_w.shape, generator, x_w.device)
    t = randint(sched.config.num_train_timesteps, (b,), generator, x_w.device)
    x0 = torch.cat([x_w, x_l])
    noise2, t2, cond2 = torch.cat([noise, noise]), torch.cat([t, t]), torch.cat([cond, cond])
    x_t = sched.add_noise(x0, noise2, t2)
    target = pipe.training_target(x0, noise2, t2)

    def errors(unet: torch.nn.Module) -> torch.Tensor:
        pred = unet(x_t, t2, encoder_hidden_states=cond2).sample
        return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))

    model_err = errors(pipe.unet)
    with torch.no_grad():
        ref_err = errors(ref_unet)
    return diffusion_dpo_loss(model_err[:b], model_err[b:], ref_err[:b], ref_err[b:], beta)


def load_pair_images(pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` images of ``pairs`` as float tensors (N, 3, H, W) in [0, 1] (all one size)."""
    import numpy as np

    from .backbones import open_images

    def stack(paths: list[str]) -> torch.Tensor:
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in open_images(paths)]
        sizes = {a.shape for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"pairs: images of different sizes {sorted(sizes)[:3]}; resize them first")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return stack([p.chosen.path for p in pairs]), stack([p.rejected.path for p in pairs])


@dataclass
class DPOReport:
    """Per step: loss and implicit accuracy; wall time."""

    losses: list[float] = field(default_factory=list)
    implicit_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_dpo(
    pipe: T2IPipeline,
    pairs: Sequence[PreferencePair],
    config: DPOConfig | None = None,
    *,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DPOReport:
    """Fine-tune ``pipe.unet`` in place with Diffusion-DPO on ``pairs`` (images read from their paths, or
    given as ``images = (chosen, rejected)`` tensors in [0, 1])."""
    config = config or DPOConfig()
    if not pairs:
        raise ValueError("pairs: expected at least one preference pair")
    chosen, rejected = images if images is not None else load_pair_images(pairs)
    if chosen.shape[0] != len(pairs) or rejected.shape[0] != len(pairs):
        raise ValueError(
            f"images: expected {len(pairs)} chosen and rejected images, got {chosen.shape[0]} and {rejected.shape[0]}"
        )
    x_w, x_l = pipe.encode_images(chosen), pipe.encode_images(rejected)
    cond_all = pipe.encode_prompts([p.prompt for p in pairs])
    ref = pipe.frozen_copy()
    rng = random.Random(config.seed)
    g = torch.Generator(device="cpu").manual_seed(config.seed)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, foreach=True)
    report = DPOReport()
    start = time.perf_counter()
    pipe.unet.train()
    for _ in range(config.steps):
        idx = torch.tensor([rng.randrange(len(pairs)) for _ in range(config.batch_size)], device=x_w.device)
        loss, stats = dpo_pair_loss(pipe, ref, x_w[idx], x_l[idx], cond_all[idx], config.beta, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        report.losses.append(float(loss.detach()))
        report.implicit_acc.append(stats["implicit_acc"])
    report.seconds = time.perf_counter() - start
    return report
