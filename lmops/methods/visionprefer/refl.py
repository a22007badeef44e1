"""ReFL-style reward-gradient fine-tuning (ImageReward, Xu et al. 2023, arXiv 2304.05977).

Per step: sample with the DDIM sampler without gradient down to a step drawn uniformly from the last
``grad_steps`` steps, run that one UNet call with gradient, take its prediction of the clean sample
``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``, decode it, and minimize ``-reward_scale * reward`` (the
reward is differentiable with respect to the image, e.g. :meth:`VPScore.reward_fn`). Optionally a
denoising (pretraining) loss on given images is added as a regularizer (ReFL alternates the two; summing
them is a choice). Whether the paper used ReFL is unconfirmed (it reports PPO and DPO); ReFL is the
ImageReward lineage's way to use a differentiable reward and is offered as the cheap option.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .config import ReFLConfig
from .diffusion import T2IPipeline, ddim_step, randint, randn

__all__ = ["RewardFn", "denoising_loss", "mean_reward", "refl_loss", "train_refl"]

RewardFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]  # (images (B,3,H,W) in [0,1], prompts) -> (B,)


def denoising_loss(
    pipe: T2IPipeline, x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The usual diffusion training loss on model-space samples ``x0`` (B, C, H, W): MSE between the UNet's
    output on ``add_noise(x0, noise, t)`` (``t`` uniform) and its target (noise or velocity)."""
    sched = pipe.scheduler
    noise = randn(x0.shape, generator, x0.device)
    t = randint(sched.config.num_train_timesteps, (x0.shape[0],), generator, x0.device)
    x_t = sched.add_noise(x0, noise, t)
    pred = pipe.unet(x_t, t, encoder_hidden_states=cond).sample
    return torch.nn.functional.mse_loss(pred, pipe.training_target(x0, noise, t))


def refl_loss(
    pipe: T2IPipeline,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: ReFLConfig,
    *,
    generator: torch.Generator | None = None,
    rng: random.Random | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, rewards)`` of one ReFL step on ``prompts`` (see the module docstring); ``rewards`` (B,)."""
    s = config.sampler
    sched = pipe.scheduler
    sched.set_timesteps(s.num_steps, device=pipe.device)
    steps = list(sched.timesteps)
    k = (rng or random).randrange(s.num_steps - config.grad_steps, s.num_steps)
    with torch.no_grad():
        cond = pipe.encode_prompts(prompts)
        uncond = pipe.encode_prompts([""] * len(prompts)) if s.guidance_scale != 1.0 else None
        x = randn((len(prompts), *pipe.sample_shape), generator, pipe.device)
        for t in steps[:k]:
            eps = pipe.predict_eps(pipe.unet, x, t, cond, uncond, s.guidance_scale)
            x = ddim_step(sched, eps, int(t), x, s.eta, generator=generator).prev_sample
    t = int(steps[k])
    eps = pipe.predict_eps(pipe.unet, x, t, cond, uncond, s.guidance_scale)
    a_t = sched.alphas_cumprod.to(x.device)[t].float()
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    rewards = reward_fn(pipe.decode(x0), list(prompts))
    return -config.reward_scale * rewards.mean(), rewards.detach()


@torch.no_grad()
def mean_reward(
    pipe: T2IPipeline, prompts: Sequence[str], reward_fn: RewardFn, sampler: Any, *, seed: int = 0
) -> float:
    """The mean reward of one sample per prompt, drawn with a fixed seed (to compare before and after)."""
    from .diffusion import sample

    was = pipe.unet.training
    pipe.unet.eval()
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = sample(pipe, list(prompts), sampler, generator=g).images
    pipe.unet.train(was)
    return float(reward_fn(images, list(prompts)).mean())


@dataclass
class ReFLReport:
    """Per step: the mean reward of the batch and the loss; wall time."""

    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_refl(
    pipe: T2IPipeline,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: ReFLConfig | None = None,
    *,
    pretrain_images: torch.Tensor | None = None,
    pretrain_prompts: Sequence[str] | None = None,
) -> ReFLReport:
    """Fine-tune ``pipe.unet`` in place with ReFL on ``prompts`` (drawn with replacement per step).

    ``pretrain_images`` (N, 3, H, W) in [0, 1] with ``pretrain_prompts`` feed the denoising regularizer
    when ``config.pretrain_weight > 0``."""
    config = config or ReFLConfig()
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if config.pretrain_weight > 0:
        if pretrain_images is None or pretrain_prompts is None or len(pretrain_prompts) != pretrain_images.shape[0]:
            raise ValueError(
                "pretrain_images, pretrain_prompts: expected N images with N prompts when pretrain_weight > 0"
            )
        pre_x0 = pipe.encode_images(pretrain_images)
    rng = random.Random(config.seed)
    g = torch.Generator(device="cpu").manual_seed(config.seed)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, foreach=True)
    report = ReFLReport()
    start = time.perf_counter()
    pipe.unet.train()
    for _ in range(config.steps):
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(config.batch_size)]
        loss, rewards = refl_loss(pipe, batch, reward_fn, config, generator=g, rng=rng)
        if config.pretrain_weight > 0:
            idx = randint(pre_x0.shape[0], (config.batch_size,), g, pre_x0.device)
            cond = pipe.encode_prompts([pretrain_prompts[int(i)] for i in idx.tolist()])
            loss = loss + config.pretrain_weight * denoising_loss(pipe, pre_x0[idx], cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        report.rewards.append(float(rewards.mean()))
        report.losses.append(float(loss.detach()))
    report.seconds = time.perf_counter() - start
    return report
