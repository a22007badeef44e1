"""TREC's training objective for one batch: the embedding-diffusion loss with self-conditioning, plus
Reinforced Conditioning and Time-Aware Variance Scaling.

The diffusion loss is DiffuSeq's x0-parametrised one (Diffusion-LM's end-to-end objective):

- ``x0 = embed(y) + sqrt(1 - alpha_bar_0) * n`` (a sample of ``q(x0 | y)``), ``t ~ U{0..T-1}``,
  ``z_t = q(z_t | x0)`` (with TAVS's noise factor when given);
- ``mse``: ``|x0_hat - x0|^2`` averaged over positions and dims (at ``t = 0`` against ``embed(y)``);
- ``tT``: ``|sqrt(alpha_bar_{T-1}) x0|^2`` (keeps the embeddings from growing past what the prior covers);
- ``rounding``: cross-entropy of ``y`` under the tied softmax of the x0 sample (Diffusion-LM's rounding term);
- ``anchor`` (weight 0 = off): cross-entropy of ``y`` under the softmax of ``x0_hat`` (Difformer's anchor loss).

Self-conditioning (Chen et al., Analog Bits; one coin per batch, probability ``self_cond_prob``): a first
pass ``z0_hat = f(z_t, 0)`` without gradient, then the trained pass ``z0_sc = f(z_t, z0_hat)``. With
``rc_weight > 0`` that batch also gets RC's term (:func:`~lmops.methods.trec.reinforced.rc_loss`). With
``rc_weight == 0`` RC is never computed: no reward, no extra random draw, so training is bitwise plain
self-conditioning.

All randomness (t, the noises, the coin, RC's sampled actions) comes from the ``generator`` argument, drawn
on the CPU (so a seed gives the same run on any device and a checkpoint resumes it exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .model import TRECModel
from .reinforced import Reward, rc_loss, sentence_bleu_reward
from .schedule import NoiseScaling, NoiseSchedule

__all__ = ["LossOutput", "training_loss"]


@dataclass
class LossOutput:
    """One batch's loss (``total``, with gradient) and its parts as floats for logging."""

    total: torch.Tensor
    mse: float
    tT: float
    rounding: float
    anchor: float
    rc: float = 0.0
    advantage: float = 0.0
    self_conditioned: bool = False


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    # per-example mean token cross-entropy: (B, L, V), (B, L) -> (B,)
    return F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none").mean(-1)


def training_loss(
    model: TRECModel,
    schedule: NoiseSchedule,
    src: torch.Tensor,
    tgt: torch.Tensor,
    config: TrainConfig,
    *,
    generator: torch.Generator | None = None,
    noise_scaling: NoiseScaling | None = None,
    reward: Reward = sentence_bleu_reward,
    decode: Callable[[Sequence[int]], str] | None = None,
    references: Sequence[str] | None = None,
) -> LossOutput:
    """The loss of one batch.

    Args:
        model: the denoiser.
        schedule: the forward process.
        src: source ids int64 ``(B, S)``; ``tgt``: target ids int64 ``(B, L)`` (padded).
        config: the loss weights, ``self_cond_prob``, and RC's ``rc_weight``/``rc_clip``/``rc_action``.
        generator: the CPU generator every random draw comes from.
        noise_scaling: TAVS (:class:`~lmops.methods.trec.schedule.TimeAwareVarianceScaling`) or None.
        reward, decode, references: RC's reward, ids -> text, and the reference texts (default:
            ``decode(tgt)``); ``decode`` is needed when ``config.rc_weight > 0``.
    """
    if src.dim() != 2 or tgt.dim() != 2 or src.shape[0] != tgt.shape[0]:
        raise ValueError(f"src, tgt: expected (B, S) and (B, L) ids, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    use_rc = config.rc_weight > 0
    if use_rc and not model.config.self_condition:
        raise ValueError("rc_weight: Reinforced Conditioning needs a model built with self_condition=True")
    if use_rc and decode is None:
        raise ValueError("decode: needed to compute rewards when rc_weight > 0 (e.g. vocab.decode)")
    B = tgt.shape[0]
    T = schedule.T
    memory, mask = model.encode(src)
    x0_mean = model.embed_tokens(tgt)
    std0 = schedule.sqrt_one_minus_alpha_bar[0].item()
    x0 = x0_mean + std0 * _randn(x0_mean.shape, generator, x0_mean)
    t = torch.randint(0, T, (B,), generator=generator).to(tgt.device)
    z_t = schedule.q_sample(x0, t, _randn(x0.shape, generator, x0), noise_scaling)

    self_cond = model.config.self_condition and bool(torch.rand((), generator=generator) < config.self_cond_prob)
    x0_first = None
    if self_cond:
        with torch.no_grad():
            x0_first = model.denoise(z_t, t, memory, mask, None)
    x0_hat = model.denoise(z_t, t, memory, mask, x0_first)

    mse = torch.where(t == 0, _mean_flat((x0_mean - x0_hat) ** 2), _mean_flat((x0 - x0_hat) ** 2))
    tT = _mean_flat((schedule.signal(torch.full_like(t, T - 1), x0) * x0) ** 2)
    rounding = _ce(model.logits(x0), tgt)
    logits_hat = model.logits(x0_hat)
    anchor = _ce(logits_hat, tgt) if config.anchor_weight > 0 else torch.zeros_like(rounding)
    total = (mse + tT + config.rounding_weight * rounding + config.anchor_weight * anchor).mean()
    out = LossOutput(total, mse.mean().item(), tT.mean().item(), rounding.mean().item(), anchor.mean().item(),
                     self_conditioned=self_cond)
    if use_rc and x0_first is not None:
        refs = list(references) if references is not None else [decode(row) for row in tgt.tolist()]
        with torch.no_grad():
            logits_first = model.logits(x0_first)
        rc = rc_loss(logits_hat, logits_first, refs, decode, eps=config.rc_clip, reward=reward,
                     action=config.rc_action, generator=generator)
        out.total = out.total + config.rc_weight * rc.loss
        out.rc, out.advantage = rc.loss.item(), rc.advantage.mean().item()
    return out
