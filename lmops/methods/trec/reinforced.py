"""Reinforced Conditioning (RC): reward the improvement the self-conditioned pass makes over the plain pass.

The paper's Eq. 10-12 (as quoted by a secondary source that read the PDF; medium confidence): the plain
pass (``z0_hat = f(z_t, 0)``) and the self-conditioned pass (``z0_sc = f(z_t, z0_hat)``) are two "agents"
sharing parameters; the paired advantage is

    A = clip(R(z0_sc) - R(z0_hat), -eps, eps)

and the REINFORCE-style term ``L_RL = -mean(A * log p(y | z0_sc))`` is added to the diffusion loss, so the
self-conditioned pass is pushed towards outputs that beat the first estimate -- which it can only do by
using ``z_t``, not by copying ``z0_hat`` (the "degradation" RC fixes).

Choices here (unconfirmed in the paper): R is sentence BLEU / 100 against the reference (pluggable
:data:`Reward`); both predictions are rounded to tokens by argmax of the tied-embedding softmax; y is that
argmax sequence (or a sample, ``action="sample"``); ``log p`` is the sum over all target positions (pads
included: they carry the length); A is detached; eps defaults to 0.5 (:class:`TrainConfig.rc_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["RCOutput", "Reward", "clipped_advantage", "rc_loss", "reinforce_loss", "sentence_bleu_reward"]

#: ``reward(hypotheses, references) -> one float per pair`` (higher is better).
Reward = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def sentence_bleu_reward(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """sacrebleu's sentence BLEU of each hypothesis against its reference, on a 0-1 scale (its default
    ``exp`` smoothing, so short sentences get a graded, non-zero score)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"references: expected {len(hypotheses)} (one per hypothesis), got {len(references)}")
    return [sacrebleu.sentence_bleu(h, [r]).score / 100.0 for h, r in zip(hypotheses, references)]


def clipped_advantage(r_sc: torch.Tensor, r_hat: torch.Tensor, eps: float) -> torch.Tensor:
    """``clip(r_sc - r_hat, -eps, eps)``, detached: float ``(B,)`` from two float ``(B,)`` rewards."""
    if r_sc.shape != r_hat.shape:
        raise ValueError(f"r_hat: expected the shape of r_sc {tuple(r_sc.shape)}, got {tuple(r_hat.shape)}")
    if not eps > 0:
        raise ValueError(f"eps: expected a number > 0, got {eps!r}")
    return (r_sc - r_hat).clamp(-eps, eps).detach()


def reinforce_loss(logits: torch.Tensor, actions: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """``-mean_b(A_b * log p(y_b))`` with ``log p(y_b) = sum_l log_softmax(logits)[b, l, y_bl]``.

    ``logits`` float ``(B, L, V)``, ``actions`` int64 ``(B, L)``, ``advantage`` float ``(B,)`` (no gradient
    flows into it). A positive advantage makes its gradient step raise ``log p(y)``; a negative one lowers it.
    """
    if actions.shape != logits.shape[:2] or advantage.shape != logits.shape[:1]:
        raise ValueError(
            f"actions, advantage: expected shapes {tuple(logits.shape[:2])} and {tuple(logits.shape[:1])}, "
            f"got {tuple(actions.shape)} and {tuple(advantage.shape)}"
        )
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, actions[..., None]).squeeze(-1).sum(-1)
    return -(advantage.detach().to(logp.dtype) * logp).mean()


@dataclass
class RCOutput:
    """The RC term of one batch: ``loss`` (scalar, with gradient), the rewards and advantages ``(B,)``."""

    loss: torch.Tensor
    reward_sc: torch.Tensor
    reward_hat: torch.Tensor
    advantage: torch.Tensor


def rc_loss(
    logits_sc: torch.Tensor,
    logits_hat: torch.Tensor,
    references: Sequence[str],
    decode: Callable[[Sequence[int]], str],
    *,
    eps: float,
    reward: Reward = sentence_bleu_reward,
    action: str = "argmax",
    generator: torch.Generator | None = None,
) -> RCOutput:
    """Reinforced Conditioning's term for one batch.

    Args:
        logits_sc: rounding logits of the self-conditioned prediction z0_sc, ``(B, L, V)``, with gradient.
        logits_hat: rounding logits of the first-pass prediction z0_hat, ``(B, L, V)`` (only argmax is read).
        references: the B reference texts.
        decode: token ids -> text (e.g. :meth:`Vocab.decode`).
        eps: the advantage clip.
        reward: :data:`Reward`; default :func:`sentence_bleu_reward`.
        action: ``"argmax"`` (y = the rounded z0_sc) or ``"sample"`` (y drawn from softmax(logits_sc) with
            ``generator``, on the CPU; R_sc is then y's reward).
    """
    if action not in ("argmax", "sample"):
        raise ValueError(f"action: expected 'argmax' or 'sample', got {action!r}")
    if len(references) != logits_sc.shape[0]:
        raise ValueError(f"references: expected {logits_sc.shape[0]}, got {len(references)}")
    with torch.no_grad():
        if action == "argmax":
            y = logits_sc.argmax(-1)
        else:
            probs = F.softmax(logits_sc.float(), dim=-1).cpu().reshape(-1, logits_sc.shape[-1])
            y = torch.multinomial(probs, 1, generator=generator).view(logits_sc.shape[:2]).to(logits_sc.device)
        y_hat = logits_hat.argmax(-1)
        hyp_sc = [decode(row) for row in y.tolist()]
        hyp_hat = [decode(row) for row in y_hat.tolist()]
        r_sc = torch.tensor([float(r) for r in reward(hyp_sc, references)], dtype=torch.float32)
        r_hat = torch.tensor([float(r) for r in reward(hyp_hat, references)], dtype=torch.float32)
    if r_sc.shape[0] != len(references) or r_hat.shape[0] != len(references):
        raise ValueError(f"reward: expected one score per hypothesis ({len(references)}), got {r_sc.shape[0]}")
    adv = clipped_advantage(r_sc, r_hat, eps).to(logits_sc.device)
    return RCOutput(reinforce_loss(logits_sc, y, adv), r_sc, r_hat, adv)
