"""A text-to-image generator to align with a reward: a ``diffusers`` UNet + DDIM scheduler + CLIP text
encoder (+ an optional VAE), and the DDIM sampler with per-step Gaussian log-probabilities that the
policy-gradient method needs.

The tests and the demo use :func:`tiny_pipeline`: a pixel-space ``UNet2DConditionModel`` on 16x16 RGB
images, cross-attending to a tiny ``CLIPTextModel``'s hidden states (Stable Diffusion's conditioning,
minus the VAE: a choice for speed; with a ``vae`` the same code runs in latent space). Real users load
a Stable Diffusion folder (``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``, ``vae/``) with
:meth:`T2IPipeline.from_pretrained`. Needs the optional ``diffusers`` package.

:func:`ddim_step` is DDPO's ``ddim_step_with_logprob`` (Black et al. 2023): the DDIM update of
Song et al. with noise ``eta * sigma_t``, returning the Gaussian transition's mean, std and the
log-density of the next sample (mean over the non-batch dimensions, as DDPO's code).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...common.files import atomic_directory
from .config import SamplerConfig

__all__ = ["SampleResult", "StepResult", "T2IPipeline", "ddim_step", "sample", "step_std", "tiny_pipeline"]


def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError(
            "lmops.methods.visionprefer alignment needs diffusers, from the diffusers extra: "
            'pip install --no-build-isolation -e ".[diffusers]"'
        ) from None


class T2IPipeline(nn.Module):
    """The generator's parts. Only ``unet`` is trained by the alignment methods; ``text_encoder`` and
    ``vae`` are frozen.

    Args:
        unet: a ``UNet2DConditionModel`` (``cross_attention_dim`` = the text encoder's hidden size).
        scheduler: a ``DDIMScheduler`` (``set_alpha_to_one=False`` keeps the last step stochastic).
        text_encoder, tokenizer: a ``CLIPTextModel`` and its tokenizer (prompts -> hidden states).
        vae: an ``AutoencoderKL`` for latent diffusion, or ``None`` (pixel space, images in [-1, 1]).
        max_text_length: prompts are padded/truncated to this many tokens (SD: 77).
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        text_encoder: nn.Module,
        tokenizer: Any,
        vae: nn.Module | None = None,
        *,
        max_text_length: int | None = None,
    ) -> None:
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.scheduler, self.tokenizer = scheduler, tokenizer
        limit = int(text_encoder.config.max_position_embeddings)
        self.max_text_length = min(limit, max_text_length or limit)
        self.text_encoder.requires_grad_(False)
        if vae is not None:
            vae.requires_grad_(False)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"scheduler: prediction_type {scheduler.config.prediction_type!r} is not supported "
                "(expected 'epsilon' or 'v_prediction')"
            )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of what the UNet denoises."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(h), int(w)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, L, D)`` text hidden states (the UNet's ``encoder_hidden_states``), as Stable Diffusion:
        padded to ``max_text_length``, no attention mask."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts: expected a list of strings")
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_text_length, truncation=True, return_tensors="pt"
        )["input_ids"].to(self.device)
        return self.text_encoder(input_ids=ids).last_hidden_state

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``(B, 3, H, W)`` from model-space samples (differentiable)."""
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space samples from images in [0, 1] ``(B, 3, H, W)`` (resized to the model's size)."""
        x = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            _, h, w = self.sample_shape
            if x.shape[-2:] != (h, w):
                x = nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            return x
        return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def predict_eps(
        self,
        unet: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The noise prediction ``(B, C, H, W)`` of ``unet`` (this pipeline's or a copy), with
        classifier-free guidance when ``uncond`` is given and ``guidance_scale != 1``."""
        t = torch.as_tensor(t, device=x.device)
        if uncond is not None and guidance_scale != 1.0:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            out_u, out_c = out.chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = unet(x, t, encoder_hidden_states=cond).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            a = self.scheduler.alphas_cumprod.to(x.device)[t.long()].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x
        return out

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to output for ``x_t = add_noise(x0, noise, t)``: the noise, or the velocity."""
        if self.scheduler.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return noise

    def frozen_copy(self) -> nn.Module:
        """A frozen copy of the UNet (the reference model of Diffusion-DPO)."""
        ref = copy.deepcopy(self.unet)
        ref.requires_grad_(False)
        return ref.eval()

    # -- files ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """A Stable-Diffusion-style folder (``unet/ scheduler/ text_encoder/ tokenizer/ [vae/]``), atomically."""
        with atomic_directory(path) as tmp:
            self.unet.save_pretrained(tmp / "unet")
            self.scheduler.save_pretrained(tmp / "scheduler")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if self.vae is not None:
                self.vae.save_pretrained(tmp / "vae")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> "T2IPipeline":
        """The parts of a Stable-Diffusion-style folder or hub id (a ``vae/`` is used when present)."""
        _require_diffusers()
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        root = str(path)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype)
        scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        vae = None
        if not Path(root).is_dir() or (Path(root) / "vae").is_dir():
            try:
                vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype)
            except (OSError, ValueError):
                vae = None
        return cls(unet, scheduler, text_encoder, tokenizer, vae)


def tiny_pipeline(*, image_size: int = 16, seed: int = 0, num_train_timesteps: int = 1000) -> T2IPipeline:
    """A random pixel-space pipeline from configs: ``UNet2DConditionModel`` (blocks 8 and 16 channels,
    cross-attention at 8x8), ``DDIMScheduler`` (linear betas, ``set_alpha_to_one=False`` and
    ``steps_offset=1`` as Stable Diffusion's, so every step has noise; no sample clipping), a 1-layer
    ``CLIPTextModel`` (hidden 32) and the offline byte-level tokenizer."""
    _require_diffusers()
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="right", model_max_length=24)
    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=24,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.sep_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="linear",
        set_alpha_to_one=False,
        clip_sample=False,
        steps_offset=1,
    )
    return T2IPipeline(unet, scheduler, text.eval(), tok, None, max_text_length=24)


# -- the sampler ----------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """One DDIM transition: ``prev_sample`` (B, C, H, W), its Gaussian ``mean`` and scalar ``std``, the
    ``log_prob`` (B,) of ``prev_sample`` under it, and the predicted clean sample ``x0``."""

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor
    x0: torch.Tensor


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on ``generator``'s device (a CPU generator drives a GPU run too, so
    runs repeat across devices), then moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def randint(
    high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Integers in ``[0, high)`` drawn like :func:`randn`."""
    where = generator.device if generator is not None else device
    return torch.randint(0, high, tuple(shape), generator=generator, device=where).to(device)


def _alphas(scheduler: Any, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ac = scheduler.alphas_cumprod.to(device)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else torch.as_tensor(scheduler.final_alpha_cumprod, device=device)
    return a_t.float(), a_prev.float()


def step_std(scheduler: Any, t: int, eta: float) -> float:
    """The noise std of the DDIM step at timestep ``t`` (0 for a deterministic step: no log-density)."""
    a_t, a_prev = _alphas(scheduler, int(t), torch.device("cpu"))
    return float(eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt())


def ddim_step(
    scheduler: Any,
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    eta: float,
    *,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """The DDIM step from ``x_t`` at timestep ``t`` given the noise prediction ``eps`` (DDPO's
    ``ddim_step_with_logprob``; ``scheduler.set_timesteps`` must have been called).

    ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``; ``std = eta * sqrt((1 - a_prev)/(1 - a_t) * (1 - a_t/a_prev))``;
    ``mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps``; ``prev_sample = mean + std * noise`` unless
    given (to score a stored transition). ``log_prob`` is the Gaussian log-density of ``prev_sample``,
    averaged over the non-batch dimensions (DDPO's reduction); ``-inf``-free only when ``std > 0``.
    """
    a_t, a_prev = _alphas(scheduler, int(t), x_t.device)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    if prev_sample is None:
        noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        prev_sample = mean + std * noise
    if float(std) > 0:
        log_prob = (
            -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
        )
        log_prob = log_prob.mean(dim=tuple(range(1, x_t.dim())))
    else:
        log_prob = torch.zeros(x_t.shape[0], device=x_t.device)
    return StepResult(prev_sample, mean, std, log_prob, x0)


@dataclass
class SampleResult:
    """What :func:`sample` returns: ``images`` (B, 3, H, W) in [0, 1]; with ``keep_trajectory``, the
    ``latents`` ``[x_T, ..., x_0]`` (num_steps + 1 tensors), the ``log_probs`` (B, num_steps) of each
    transition, and the ``timesteps`` used."""

    images: torch.Tensor
    latents: list[torch.Tensor] = field(default_factory=list)
    log_probs: torch.Tensor | None = None
    timesteps: list[int] = field(default_factory=list)


def sample(
    pipe: T2IPipeline,
    prompts: Sequence[str],
    config: SamplerConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
    cond: torch.Tensor | None = None,
) -> SampleResult:
    """Sample one image per prompt with the DDIM sampler (no gradient)."""
    config = config or SamplerConfig()
    sched = pipe.scheduler
    sched.set_timesteps(config.num_steps, device=pipe.device)
    with torch.no_grad():
        cond = pipe.encode_prompts(prompts) if cond is None else cond
        uncond = pipe.encode_prompts([""] * len(prompts)) if config.guidance_scale != 1.0 else None
        x = randn((len(prompts), *pipe.sample_shape), generator, pipe.device)
        latents, log_probs, steps = [x], [], []
        for t in sched.timesteps:
            eps = pipe.predict_eps(pipe.unet, x, t, cond, uncond, config.guidance_scale)
            step = ddim_step(sched, eps, int(t), x, config.eta, generator=generator)
            x = step.prev_sample
            if keep_trajectory:
                latents.append(x)
                log_probs.append(step.log_prob)
                steps.append(int(t))
        images = pipe.decode(x)
    if not keep_trajectory:
        return SampleResult(images)
    return SampleResult(images, latents, torch.stack(log_probs, dim=1), steps)
