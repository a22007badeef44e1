"""Noise schedules, q(z_t | x0) and Time-Aware Variance Scaling."""

from __future__ import annotations

import math

import pytest
import torch

from lmops.methods.trec import NoiseSchedule, TimeAwareVarianceScaling, alpha_bar_schedule


@pytest.mark.parametrize("name", ["sqrt", "cosine", "linear"])
@pytest.mark.parametrize("T", [10, 2000])
def test_alpha_bar_strictly_decreasing_in_unit_interval(name, T):
    ab = alpha_bar_schedule(name, T)
    assert ab.shape == (T,) and ab.dtype == torch.float64
    assert bool((ab > 0).all()) and bool((ab < 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert ab[-1] < 0.05  # almost pure noise at t = T-1
    if T == 2000:
        assert ab[0] > 0.95  # barely noised at t = 0


def test_sqrt_schedule_closed_form():
    # cumprod of alpha_bar(u_{i+1}) / alpha_bar(u_i) telescopes to alpha_bar((t+1)/T) / alpha_bar(0)
    T = 200
    ab = alpha_bar_schedule("sqrt", T)
    t = torch.arange(T - 1, dtype=torch.float64)  # the last beta is clipped at 0.999
    expected = (1 - torch.sqrt((t + 1) / T + 1e-4)) / (1 - math.sqrt(1e-4))
    assert torch.allclose(ab[:-1], expected, rtol=1e-9, atol=1e-12)


def test_linear_schedule_first_beta():
    ab = alpha_bar_schedule("linear", 1000)
    assert ab[0].item() == pytest.approx(1 - 1e-4)
    assert (ab[1] / ab[0]).item() == pytest.approx(1 - (1e-4 + (0.02 - 1e-4) / 999))


def test_schedule_validation():
    with pytest.raises(ValueError, match="schedule"):
        alpha_bar_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule("sqrt", 1)


def test_q_sample_matches_formula_and_checks_shapes():
    s = NoiseSchedule("cosine", 50)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    t = torch.tensor([0, 25, 49])
    z = s.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = s.alpha_bar[ti].item()
        assert torch.allclose(z[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        s.q_sample(x0, t, noise[:, :2])
    with pytest.raises(ValueError, match="t:"):
        s.q_sample(x0, t[:2], noise)


def test_tavs_scale_values_and_pluggable_shape():
    T = 100
    t = torch.tensor([0, 50, 100])
    assert torch.allclose(TimeAwareVarianceScaling(0.5).scale(t, T), torch.tensor([1.0, 1.25, 1.5]))
    flat = TimeAwareVarianceScaling(0.2, f=lambda u: torch.ones_like(u))
    assert torch.allclose(flat.scale(t, T), torch.full((3,), 1.2))
    s = NoiseSchedule("sqrt", T)
    x0 = torch.randn(3, 2, 4)
    std = s.noise_std(torch.tensor([0, 50, 99]), x0, TimeAwareVarianceScaling(1.0))
    plain = s.noise_std(torch.tensor([0, 50, 99]), x0)
    assert torch.allclose(std.flatten() / plain.flatten(), torch.tensor([1.0, 1.5, 1.99]))
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="gamma"):
            TimeAwareVarianceScaling(bad)
    with pytest.raises(TypeError, match="f"):
        TimeAwareVarianceScaling(0.1, f=3)
