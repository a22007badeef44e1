"""PPO-style policy-gradient fine-tuning of the generator (DDPO, Black et al. 2023, arXiv 2305.13301):
the paper's way to compare reward models (SD v1.5 tuned to maximize VP-Score vs other rewards).

The denoising chain is a policy: each DDIM step with ``eta > 0`` is a Gaussian transition whose
log-density :func:`~lmops.methods.visionprefer.diffusion.ddim_step` gives. Per round: sample
trajectories without gradient (keeping every ``x_t`` and the log-probabilities), reward the final
images (no gradient needed: any reward works), turn rewards into advantages (normalized over the
round, or per prompt as DDPO's stat tracker), clip them, then for each trajectory and each (or a
``timestep_fraction`` of the) steps recompute the log-probability of the stored transition under the
current UNet (deterministic steps, with no density, are skipped) and minimize DDPO's clipped
objective ``mean(max(-A * r, -A * clip(r, 1 - c, 1 + c)))`` with ``r = exp(logp_new - logp_old)``.
Gradients of all trained steps of a minibatch are accumulated into one optimizer step, as DDPO does.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .config import PPOConfig
from .diffusion import T2IPipeline, ddim_step, sample, step_std
from .refl import RewardFn

__all__ = ["PPOReport", "advantages", "ppo_clip_loss", "train_ppo"]


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """DDPO's clipped surrogate: ``mean(max(-A r, -A clip(r, 1-c, 1+c)))``, ``r = exp(logp - old_logp)``;
    all ``(B,)``. Stats: ``clipfrac`` and ``approx_kl`` (``mean((logp - old_logp)^2) / 2``)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    with torch.no_grad():
        stats = {
            "clipfrac": float((torch.abs(ratio - 1.0) > clip_range).float().mean()),
            "approx_kl": float(0.5 * ((log_prob - old_log_prob) ** 2).mean()),
        }
    return loss, stats


def advantages(
    rewards: torch.Tensor,
    prompts: Sequence[str] | None = None,
    *,
    mode: str = "batch",
    min_count: int = 4,
    clip: float | None = None,
) -> torch.Tensor:
    """Rewards (B,) normalized to mean 0 and std 1 over the batch (``mode="batch"``), or per prompt
    (``"prompt"``, DDPO's per-prompt stat tracking; a prompt with fewer than ``min_count`` samples uses
    the batch statistics); clipped to ``[-clip, clip]`` when given."""
    r = rewards.float()
    out = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)
    if mode == "prompt":
        if prompts is None or len(prompts) != r.numel():
            raise ValueError("prompts: expected one prompt per reward for mode='prompt'")
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[p].append(i)
        for idx in groups.values():
            if len(idx) >= min_count:
                sub = r[idx]
                out[idx] = (sub - sub.mean()) / (sub.std(unbiased=False) + 1e-8)
    elif mode != "batch":
        raise ValueError(f"mode: expected 'batch' or 'prompt', got {mode!r}")
    return out.clamp(-clip, clip) if clip is not None else out


@dataclass
class PPOReport:
    """Per round: the mean reward of its samples, mean loss, clip fraction and approximate KL."""

    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    clipfrac: list[float] = field(default_factory=list)
    approx_kl: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_ppo(
    pipe: T2IPipeline, prompts: Sequence[str], reward_fn: RewardFn, config: PPOConfig | None = None
) -> PPOReport:
    """Fine-tune ``pipe.unet`` in place with DDPO's PPO on ``prompts`` (drawn with replacement)."""
    config = config or PPOConfig()
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    s = config.sampler
    rng = random.Random(config.seed)
    g = torch.Generator(device="cpu").manual_seed(config.seed)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, foreach=True)
    report = PPOReport()
    start = time.perf_counter()
    pipe.scheduler.set_timesteps(s.num_steps, device=pipe.device)
    # a deterministic step (std 0, e.g. the last one when the schedule ends at t=0) has no density to train
    stochastic = [j for j, t in enumerate(pipe.scheduler.timesteps) if step_std(pipe.scheduler, int(t), s.eta) > 0]
    if not stochastic:
        raise ValueError(
            "sampler: no DDIM step of this scheduler is stochastic; PPO needs eta > 0 and a schedule "
            "with noise (set_alpha_to_one=False or steps_offset=1)"
        )
    n_train = max(1, int(round(config.timestep_fraction * len(stochastic))))
    for _ in range(config.epochs):
        # 1. sample trajectories with the current policy
        pipe.unet.eval()
        rounds = []
        for _ in range(config.batches_per_epoch):
            batch = [prompts[rng.randrange(len(prompts))] for _ in range(config.batch_size)]
            with torch.no_grad():
                cond = pipe.encode_prompts(batch)
                out = sample(pipe, batch, s, generator=g, keep_trajectory=True, cond=cond)
                rewards = reward_fn(out.images, batch).detach().float()
            rounds.append((batch, cond, out, rewards))
        all_rewards = torch.cat([r[3] for r in rounds])
        all_prompts = [p for r in rounds for p in r[0]]
        adv_all = advantages(
            all_rewards,
            all_prompts,
            mode=config.advantages,
            min_count=config.min_prompt_count,
            clip=config.adv_clip_max,
        )
        report.rewards.append(float(all_rewards.mean()))
        # 2. optimize the clipped objective on the stored transitions
        pipe.unet.train()
        uncond_cache: dict[int, torch.Tensor] = {}
        losses, clipfracs, kls = [], [], []
        for _ in range(config.inner_epochs):
            offset = 0
            for batch, cond, out, _ in rounds:
                adv = adv_all[offset : offset + len(batch)]
                offset += len(batch)
                if s.guidance_scale != 1.0 and len(batch) not in uncond_cache:
                    uncond_cache[len(batch)] = pipe.encode_prompts([""] * len(batch))
                uncond = uncond_cache.get(len(batch))
                chosen = sorted(rng.sample(stochastic, n_train))
                pipe.scheduler.set_timesteps(s.num_steps, device=pipe.device)
                opt.zero_grad(set_to_none=True)
                for j in chosen:
                    t = out.timesteps[j]
                    x_t, x_next = out.latents[j], out.latents[j + 1]
                    eps = pipe.predict_eps(pipe.unet, x_t, t, cond, uncond, s.guidance_scale)
                    step = ddim_step(pipe.scheduler, eps, t, x_t, s.eta, prev_sample=x_next)
                    loss, stats = ppo_clip_loss(step.log_prob, out.log_probs[:, j], adv, config.clip_range)
                    (loss / n_train).backward()
                    losses.append(float(loss.detach()))
                    clipfracs.append(stats["clipfrac"])
                    kls.append(stats["approx_kl"])
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
        report.losses.append(sum(losses) / len(losses))
        report.clipfrac.append(sum(clipfracs) / len(clipfracs))
        report.approx_kl.append(sum(kls) / len(kls))
    report.seconds = time.perf_counter() - start
    return report
