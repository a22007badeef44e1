"""Sampling: DDIM step skipping, the full-step equivalences (eta 0: DDIM; eta 1: DDPM ancestral), clamping
and self-conditioning across steps."""

from __future__ import annotations

import pytest
import torch
from trec_tiny import TEST, VOCAB, tiny_model, tiny_schedule

from lmops.methods.trec import SampleConfig, ddim_timesteps, encode_examples, generate, sample

pytestmark = pytest.mark.usefixtures("one_thread")

T = 30


def test_ddim_timesteps():
    assert ddim_timesteps(T, T) == list(range(T - 1, -1, -1))
    assert ddim_timesteps(T, 10 * T) == list(range(T - 1, -1, -1))
    ts = ddim_timesteps(2000, 20)
    assert len(ts) == 20 and ts[0] == 1999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(2000, 1) == [1999]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(10, 0)


def _reference(model, schedule, src, eta: float, seed: int):
    """Every timestep, written out: eta 0 = DDIM's deterministic update, eta 1 = DDPM's posterior sampling."""
    gen = torch.Generator().manual_seed(seed)
    ab = schedule.alpha_bar
    B, L, d = src.shape[0], model.config.target_len, model.config.embed_dim
    memory, mask = model.encode(src)
    z = torch.randn(B, L, d, generator=gen) * (1 - ab[T - 1]).sqrt().float()
    prev = None
    for t in range(T - 1, -1, -1):
        x0 = model.denoise(z, torch.full((B,), t), memory, mask, prev)
        prev = x0
        if t == 0:
            break
        a_t, a_prev = ab[t].item(), ab[t - 1].item()
        if eta == 0:
            eps = (z - a_t**0.5 * x0) / (1 - a_t) ** 0.5
            z = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        else:
            beta = 1 - a_t / a_prev
            mean = beta * a_prev**0.5 / (1 - a_t) * x0 + (1 - a_prev) * (1 - beta) ** 0.5 / (1 - a_t) * z
            var = beta * (1 - a_prev) / (1 - a_t)
            z = mean + var**0.5 * torch.randn(B, L, d, generator=gen)
    return x0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_all_steps_equal_the_full_sampler(eta):
    model, schedule = tiny_model(seed=3), tiny_schedule(T)
    model.eval()
    src, _ = encode_examples(TEST[:5], VOCAB, 6, 6)
    ids, x0 = sample(model, schedule, src, SampleConfig(steps=T, eta=eta, seed=7), return_latents=True)
    with torch.no_grad():
        ref = _reference(model, schedule, src, eta, seed=7)
    assert torch.allclose(x0, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(ids, model.logits(ref).argmax(-1))
    # skipping really skips: another step count gives another result
    _, skipped = sample(model, schedule, src, SampleConfig(steps=5, eta=eta, seed=7), return_latents=True)
    assert not torch.allclose(skipped, ref, atol=1e-3)


def test_skipping_calls_the_denoiser_once_per_step():
    model, schedule = tiny_model(), tiny_schedule(T)
    calls = []
    model.denoiser.out_proj.register_forward_hook(lambda *a: calls.append(1))
    src, _ = encode_examples(TEST[:3], VOCAB, 6, 6)
    for steps in (1, 4, 7, T):
        calls.clear()
        ids = sample(model, schedule, src, SampleConfig(steps=steps))
        assert len(calls) == steps
        assert ids.shape == (3, 6) and ids.dtype == torch.long


def test_seeded_clamped_and_self_conditioned():
    model, schedule = tiny_model(seed=1), tiny_schedule(T)
    src, _ = encode_examples(TEST[:4], VOCAB, 6, 6)
    a = sample(model, schedule, src, SampleConfig(steps=6, seed=2), return_latents=True)[1]
    b = sample(model, schedule, src, SampleConfig(steps=6, seed=2), return_latents=True)[1]
    c = sample(model, schedule, src, SampleConfig(steps=6, seed=3), return_latents=True)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    no_sc = sample(model, schedule, src, SampleConfig(steps=6, seed=2, self_condition=False), return_latents=True)[1]
    assert not torch.allclose(a, no_sc)
    ids, clamped = sample(model, schedule, src, SampleConfig(steps=6, clamp=True), return_latents=True)
    w = model.embed.weight
    assert torch.equal(clamped, w[ids])  # every final latent is a token embedding, and rounds to that token


def test_generate_batches_and_checks_input():
    model, schedule = tiny_model(), tiny_schedule(T)
    sources = [e.source for e in TEST[:5]]
    whole = generate(model, schedule, VOCAB, sources, SampleConfig(steps=3, batch_size=8))
    assert len(whole) == 5 and all(isinstance(s, str) for s in whole)
    assert all(w in VOCAB.itos[1:] for s in whole for w in s.split())  # pads removed
    assert len(generate(model, schedule, VOCAB, sources, SampleConfig(steps=3, batch_size=2))) == 5
    with pytest.raises(TypeError, match="sources"):
        generate(model, schedule, VOCAB, "ant bee", SampleConfig(steps=2))
    with pytest.raises(ValueError, match="longer"):
        generate(model, schedule, VOCAB, ["ant " * 9], SampleConfig(steps=2))
