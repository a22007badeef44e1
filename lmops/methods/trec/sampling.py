"""Sampling: DDIM with step skipping over the x0-predicting denoiser, self-conditioning carried across steps,
optional clamping, then argmax rounding and pad removal; corpus BLEU with sacrebleu.

From ``z ~ N(0, I)`` at ``t_0 = T-1``, each step predicts ``x0_hat = f(z, x0_prev, t)`` and moves to the next
kept timestep ``t'`` (Song et al., DDIM, with the x0 parametrisation)::

    eps_hat = (z - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)
    sigma   = eta * sqrt((1 - ab_t') / (1 - ab_t) * (1 - ab_t / ab_t'))
    z       = sqrt(ab_t') x0_hat + sqrt(1 - ab_t' - sigma^2) eps_hat + sigma * n

``eta = 0`` is deterministic DDIM; ``eta = 1`` with every timestep kept is DDPM's ancestral sampler. The last
step's ``x0_hat`` (at t = 0) is rounded to tokens by argmax of the tied-embedding softmax. Length: the target
has the model's fixed length and the ``<pad>`` tokens it predicts are removed (DiffuSeq).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .config import SampleConfig
from .data import Seq2SeqExample, Vocab, encode_examples
from .model import TRECModel
from .schedule import NoiseScaling, NoiseSchedule

__all__ = ["corpus_bleu", "ddim_timesteps", "generate", "sample"]


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``T-1`` down to 0, evenly spaced (rounded, distinct); ``steps >= T`` gives all."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if steps >= T:
        return list(range(T - 1, -1, -1))
    if steps == 1:
        return [T - 1]  # one step: the x0 estimate from pure noise, as DDIM with one step
    ts = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(ts), reverse=True)


def _nearest_embedding(model: TRECModel, x: torch.Tensor) -> torch.Tensor:
    # DiffuSeq's clamping: each latent snaps to the token embedding nearest in L2
    w = model.embed.weight
    dist = (x * x).sum(-1, keepdim=True) - 2 * x @ w.t() + (w * w).sum(-1)
    return w[dist.argmin(-1)]


@torch.no_grad()
def sample(
    model: TRECModel,
    schedule: NoiseSchedule,
    src: torch.Tensor,
    config: SampleConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    noise_scaling: NoiseScaling | None = None,
    return_latents: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Token ids int64 ``(B, target_len)`` for source ids int64 ``(B, S)``.

    Args:
        config: steps, eta, clamp, self_condition (default :class:`SampleConfig`()).
        generator: the CPU generator of the start noise (and of eta's noise); default: seeded with
            ``config.seed``.
        noise_scaling: when given (e.g. the TAVS object a model was trained with), the sampler's marginal
            noise std is ``s(t) sqrt(1 - ab_t)`` instead of ``sqrt(1 - ab_t)``; default None (training-only TAVS).
        return_latents: also return the final x0 estimate ``(B, L, d)``.
    """
    cfg = config or SampleConfig()
    if generator is None:
        generator = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        mc = model.config
        memory, mask = model.encode(src)
        B, L, d = src.shape[0], mc.target_len, mc.embed_dim
        dtype = model.embed.weight.dtype
        ts = ddim_timesteps(schedule.T, cfg.steps)
        like = torch.empty(B, L, d, dtype=dtype, device=src.device)

        def std(t: int) -> torch.Tensor:
            return schedule.noise_std(torch.full((B,), t, dtype=torch.long), like, noise_scaling)

        def sig(t: int) -> torch.Tensor:
            return schedule.signal(torch.full((B,), t, dtype=torch.long), like)

        z = torch.randn(B, L, d, generator=generator).to(like) * std(ts[0])
        x0 = None
        for i, t in enumerate(ts):
            tt = torch.full((B,), t, dtype=torch.long, device=src.device)
            prev = x0 if (cfg.self_condition and mc.self_condition) else None
            x0 = model.denoise(z, tt, memory, mask, prev)
            if cfg.clamp:
                x0 = _nearest_embedding(model, x0)
            if i + 1 == len(ts):
                break
            t_next = ts[i + 1]
            eps = (z - sig(t) * x0) / std(t)
            var_t, var_next = std(t) ** 2, std(t_next) ** 2
            ratio = (sig(t) / sig(t_next)) ** 2
            sigma = cfg.eta * torch.sqrt((var_next / var_t * (1 - ratio)).clamp(min=0))
            z = sig(t_next) * x0 + torch.sqrt((var_next - sigma**2).clamp(min=0)) * eps
            if cfg.eta > 0:
                z = z + sigma * torch.randn(B, L, d, generator=generator).to(like)
        ids = model.logits(x0).argmax(-1)
    finally:
        model.train(was_training)
    return (ids, x0) if return_latents else ids


def generate(
    model: TRECModel,
    schedule: NoiseSchedule,
    vocab: Vocab,
    sources: Sequence[str],
    config: SampleConfig | None = None,
    *,
    noise_scaling: NoiseScaling | None = None,
) -> list[str]:
    """The output text of each source (batched by ``config.batch_size``; one generator seeded with
    ``config.seed`` across batches)."""
    cfg = config or SampleConfig()
    if isinstance(sources, str):
        raise TypeError("sources: expected a list of strings, got one string")
    mc = model.config
    examples = [Seq2SeqExample(s, "") for s in sources]
    if not examples:
        return []
    src, _ = encode_examples(examples, vocab, mc.max_source_len, mc.target_len)
    device = model.embed.weight.device
    generator = torch.Generator().manual_seed(cfg.seed)
    out: list[str] = []
    for start in range(0, len(examples), cfg.batch_size):
        ids = sample(model, schedule, src[start : start + cfg.batch_size].to(device), cfg, generator=generator,
                     noise_scaling=noise_scaling)
        out.extend(vocab.decode(row) for row in ids.tolist())
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of the hypotheses against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"references: expected {len(hypotheses)} (one per hypothesis), got {len(references)}")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
