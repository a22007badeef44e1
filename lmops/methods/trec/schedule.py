"""The forward process: noise schedules (sqrt, cosine, linear), ``q(z_t | x0)``, and Time-Aware Variance
Scaling as a pluggable noise-scaling strategy.

``alpha_bar[t]`` for ``t = 0 .. T-1`` is the signal share of ``z_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps``. The schedules are built as DiffuSeq/improved-DDPM do: betas from an ``alpha_bar(u)`` function,
clipped at 0.999, then ``alpha_bar = cumprod(1 - beta)``, computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

import torch

from .config import SCHEDULES

__all__ = ["NoiseSchedule", "NoiseScaling", "TimeAwareVarianceScaling", "alpha_bar_schedule"]


def _betas_for_alpha_bar(T: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> list[float]:
    return [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]


def alpha_bar_schedule(name: str, T: int) -> torch.Tensor:
    """``alpha_bar`` of schedule ``name`` over ``T`` steps: float64 ``(T,)``, strictly decreasing in (0, 1).

    - ``"sqrt"``: Diffusion-LM's ``alpha_bar(u) = 1 - sqrt(u + 1e-4)`` (DiffuSeq's default): noise rises fast
      at first, which suits embeddings that are easy to round when barely noised.
    - ``"cosine"``: Nichol & Dhariwal's ``cos((u + 0.008) / 1.008 * pi / 2) ** 2``.
    - ``"linear"``: DDPM's betas from 1e-4 to 0.02, rescaled by ``1000 / T``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {name!r}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"num_timesteps: expected an int >= 2, got {T!r}")
    if name == "sqrt":
        betas = _betas_for_alpha_bar(T, lambda u: 1 - math.sqrt(u + 1e-4))
    elif name == "cosine":
        betas = _betas_for_alpha_bar(T, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2)
    else:
        scale = 1000 / T
        betas = torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=torch.float64).tolist()
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)


@runtime_checkable
class NoiseScaling(Protocol):
    """A training-time factor on the noise of ``q(z_t | x0)``: ``scale(t, T)`` maps timesteps (int64
    ``(B,)``) to a float ``(B,)`` multiplier of the noise's standard deviation ``sqrt(1 - alpha_bar_t)``."""

    def scale(self, t: torch.Tensor, T: int) -> torch.Tensor: ...


class TimeAwareVarianceScaling:
    """Time-Aware Variance Scaling (TAVS), a choice: the paper's formula is unconfirmed.

    What is known: TAVS scales the noise as a function of the timestep *during training* so that the model
    sees, and learns to correct, states off the exact forward marginals, as the states sampling reaches are
    (errors of earlier x0 estimates accumulate along the reverse process). Implemented here as a factor on
    the noise's standard deviation::

        z_t = sqrt(alpha_bar_t) x0 + s(t) sqrt(1 - alpha_bar_t) eps,   s(t) = 1 + gamma * f(t / T)

    with ``f(u) = u`` by default (more extra noise at noisier steps, none at t = 0); ``f`` is pluggable.
    ``gamma = 0`` gives ``s(t) = 1.0`` and so exactly the plain schedule (``x * 1.0 == x`` in floating
    point). Sampling keeps the plain schedule unless a sampler is handed this object too.
    """

    def __init__(self, gamma: float, f: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0 or gamma == math.inf:
            raise ValueError(f"gamma: expected a finite number >= 0, got {gamma!r}")
        if f is not None and not callable(f):
            raise TypeError(f"f: expected a callable on a float tensor of t / T, got {type(f).__name__}")
        self.gamma = float(gamma)
        self.f = f

    def scale(self, t: torch.Tensor, T: int) -> torch.Tensor:
        u = t.to(torch.float32) / T
        shape = u if self.f is None else self.f(u)
        return 1.0 + self.gamma * shape

    def __repr__(self) -> str:
        return f"TimeAwareVarianceScaling(gamma={self.gamma}{'' if self.f is None else ', f=' + repr(self.f)})"


class NoiseSchedule:
    """``alpha_bar`` and ``q(z_t | x0)`` for one schedule.

    Attributes:
        T: the number of timesteps.
        alpha_bar: float64 ``(T,)``.
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar: float32 ``(T,)`` (CPU; indexed then moved to the data).
    """

    def __init__(self, name: str = "sqrt", num_timesteps: int = 2000) -> None:
        self.name = name
        self.T = num_timesteps
        self.alpha_bar = alpha_bar_schedule(name, num_timesteps)
        self.sqrt_alpha_bar = self.alpha_bar.sqrt().float()
        self.sqrt_one_minus_alpha_bar = (1 - self.alpha_bar).sqrt().float()

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # (B,) -> (B, 1, 1): broadcasts over the (B, L, d) latents
        return table.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def signal(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``sqrt(alpha_bar_t)`` shaped to broadcast against ``like`` (``(B, ...)``)."""
        return self._at(self.sqrt_alpha_bar, t, like)

    def noise_std(self, t: torch.Tensor, like: torch.Tensor, scaling: NoiseScaling | None = None) -> torch.Tensor:
        """``sqrt(1 - alpha_bar_t)``, times ``scaling.scale(t, T)`` when given, shaped like :meth:`signal`."""
        std = self._at(self.sqrt_one_minus_alpha_bar, t, like)
        if scaling is not None:
            s = scaling.scale(t.to(like.device), self.T).to(like.dtype)
            std = std * s.view_as(std)
        return std

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, scaling: NoiseScaling | None = None
    ) -> torch.Tensor:
        """``z_t = sqrt(alpha_bar_t) x0 + std_t noise``: ``x0``, ``noise`` float ``(B, L, d)``, ``t`` int64 ``(B,)``."""
        if x0.shape != noise.shape:
            raise ValueError(f"noise: expected the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        if t.dim() != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t: expected shape ({x0.shape[0]},), got {tuple(t.shape)}")
        return self.signal(t, x0) * x0 + self.noise_std(t, x0, scaling) * noise
