"""Aligning a generator: Diffusion-DPO's loss by hand, DDPO's transition log-probability against
torch.distributions.Normal, the PPO objective, ReFL raising a differentiable reward, and each trainer on a
tiny diffusers UNet built from a config (skipped without diffusers)."""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from lmops.methods.visionprefer import (  # noqa: E402
    DPOConfig,
    ImageEntry,
    PPOConfig,
    PreferencePair,
    ReFLConfig,
    SamplerConfig,
    T2IPipeline,
    advantages,
    color_reward,
    ddim_step,
    diffusion_dpo_loss,
    mean_reward,
    ppo_clip_loss,
    refl_loss,
    sample,
    tiny_pipeline,
    train_dpo,
    train_ppo,
    train_refl,
)
from lmops.methods.visionprefer.synthetic import COLORS, Drawing, draw  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def test_diffusion_dpo_loss_by_hand_and_its_gradient_sign():
    mw, ml = torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.20])
    rw, rl = torch.tensor([0.35, 0.45]), torch.tensor([0.35, 0.25])
    beta = 10.0
    loss, stats = diffusion_dpo_loss(mw, ml, rw, rl, beta)
    # pair 0: (0.30 - 0.40) - (0.35 - 0.35) = -0.10 -> inside 0.5; pair 1: 0.30 - 0.20 = 0.10 -> inside -0.5
    want = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6) and stats["implicit_acc"] == 0.5
    w = torch.tensor([0.30], requires_grad=True)
    l_ = torch.tensor([0.40], requires_grad=True)
    diffusion_dpo_loss(w, l_, torch.tensor([0.35]), torch.tensor([0.35]), beta)[0].backward()
    assert float(w.grad) > 0 and float(l_.grad) < 0  # descent lowers the error on the preferred image, raises the other
    with pytest.raises(ValueError, match="shape"):
        diffusion_dpo_loss(mw, ml[:1], rw, rl, beta)


def test_ddim_transition_log_prob_matches_normal():
    pipe = tiny_pipeline()
    sched = pipe.scheduler
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    t = int(sched.timesteps[1])
    step = ddim_step(sched, eps, t, x_t, eta=1.0, generator=g)
    assert float(step.std) > 0
    want = torch.distributions.Normal(step.mean, step.std).log_prob(step.prev_sample).mean(dim=(1, 2, 3))
    assert torch.allclose(step.log_prob, want, atol=1e-5)
    # the mean is diffusers' own DDIM step without noise (eta = 0), and scoring a given sample reuses it
    det = ddim_step(sched, eps, t, x_t, eta=0.0)
    ref = sched.step(eps, t, x_t, eta=0.0).prev_sample
    assert torch.allclose(det.prev_sample, ref, atol=1e-5)
    again = ddim_step(sched, eps, t, x_t, eta=1.0, prev_sample=step.prev_sample)
    assert torch.allclose(again.log_prob, step.log_prob)


def test_ppo_clip_loss_and_advantages_by_hand():
    old = torch.tensor([0.0, 0.0, 0.0])
    new = torch.tensor([math.log(1.5), math.log(0.5), 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, stats = ppo_clip_loss(new, old, adv, clip_range=0.2)
    # max(-A r, -A clip(r)): pair 0 -> max(-1.5, -1.2) = -1.2; pair 1 -> max(0.5, 0.8) = 0.8; pair 2 -> -2
    assert float(loss.detach()) == pytest.approx((-1.2 + 0.8 - 2.0) / 3, rel=1e-6) and stats[
        "clipfrac"
    ] == pytest.approx(2 / 3)
    loss.backward()
    assert new.grad.tolist()[:2] == [0.0, 0.0] and new.grad[2] < 0  # clipped pairs give no gradient
    r = torch.tensor([1.0, 2.0, 3.0, 10.0])
    a = advantages(r)
    assert float(a.mean()) == pytest.approx(0, abs=1e-6) and float(a.std(unbiased=False)) == pytest.approx(1, rel=1e-4)
    per = advantages(r, ["x", "x", "y", "y"], mode="prompt", min_count=2)
    assert per.tolist() == pytest.approx([-1, 1, -1, 1], abs=1e-4)
    assert float(advantages(r, clip=0.5).max()) == 0.5


def test_refl_step_raises_a_toy_differentiable_reward():
    pipe = tiny_pipeline(seed=1)
    cfg = ReFLConfig(steps=1, batch_size=4, lr=1e-2, grad_steps=2, sampler=SamplerConfig(num_steps=4, eta=0.0))
    opt = torch.optim.SGD(pipe.unet.parameters(), lr=0.0)
    import random

    def reward_at(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return float(refl_loss(pipe, PROMPTS, color_reward, cfg, generator=g, rng=random.Random(seed))[1].mean())

    before = reward_at(7)
    loss, _ = refl_loss(
        pipe, PROMPTS, color_reward, cfg, generator=torch.Generator().manual_seed(7), rng=random.Random(7)
    )
    loss.backward()
    grads = [p.grad for p in pipe.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    with torch.no_grad():  # one small gradient step on the same noise and step draw
        for p in pipe.unet.parameters():
            if p.grad is not None:
                p.sub_(1e-2 * p.grad / (p.grad.norm() + 1e-12))
    del opt
    assert reward_at(7) > before


def _unet_state(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def _changed(pipe, before):
    return sum(not torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())


def _pairs(tmp_path, n=4):
    pairs = []
    for i in range(n):
        color = list(COLORS)[i % 4]
        good, bad = tmp_path / f"g{i}.png", tmp_path / f"b{i}.png"
        draw(Drawing(color, "circle", size=14)).save(good)
        draw(Drawing("blue" if color != "blue" else "red", "square", dx=5, noise=30), seed=i).save(bad)
        pairs.append(
            PreferencePair(
                f"p{i}", f"a {color} circle", ImageEntry("g", str(good)), ImageEntry("b", str(bad)), "aggregate", 2.0
            )
        )
    return pairs


def test_each_trainer_runs_and_changes_the_unet(tmp_path):
    s = SamplerConfig(num_steps=3, eta=1.0)
    for name, run in [
        (
            "refl",
            lambda p: train_refl(
                p,
                PROMPTS,
                color_reward,
                ReFLConfig(steps=2, batch_size=2, lr=1e-3, grad_steps=1, sampler=SamplerConfig(num_steps=3, eta=0.0)),
            ),
        ),
        ("ppo", lambda p: train_ppo(p, PROMPTS, color_reward, PPOConfig(epochs=2, batch_size=2, lr=1e-3, sampler=s))),
        ("dpo", lambda p: train_dpo(p, _pairs(tmp_path), DPOConfig(steps=2, batch_size=2, lr=1e-3, beta=100.0))),
    ]:
        pipe = tiny_pipeline(seed=2)
        before = _unet_state(pipe)
        text_before = {n: p.clone() for n, p in pipe.text_encoder.named_parameters()}
        report = run(pipe)
        assert _changed(pipe, before) > 0, name
        assert all(torch.equal(p, text_before[n]) for n, p in pipe.text_encoder.named_parameters()), name
        values = report.losses
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name


def test_ppo_first_ratio_is_one_and_trajectories_are_consistent():
    pipe = tiny_pipeline(seed=3)
    s = SamplerConfig(num_steps=4, eta=1.0)
    out = sample(pipe, PROMPTS[:2], s, generator=torch.Generator().manual_seed(0), keep_trajectory=True)
    assert len(out.latents) == 5 and out.log_probs.shape == (2, 4) and out.images.shape == (2, 3, 16, 16)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    cond = pipe.encode_prompts(PROMPTS[:2])
    pipe.scheduler.set_timesteps(4)
    for j, t in enumerate(out.timesteps):
        eps = pipe.predict_eps(pipe.unet, out.latents[j], t, cond)
        step = ddim_step(pipe.scheduler, eps, t, out.latents[j], 1.0, prev_sample=out.latents[j + 1])
        assert torch.allclose(step.log_prob, out.log_probs[:, j], atol=1e-5)  # ratio exp(0) = 1 before any update


def test_dpo_raises_the_implicit_preference_on_its_pairs(tmp_path):
    pipe = tiny_pipeline(seed=4)
    report = train_dpo(pipe, _pairs(tmp_path, 4), DPOConfig(steps=25, batch_size=4, lr=2e-3, beta=2000.0))
    first, last = sum(report.losses[:5]) / 5, sum(report.losses[-5:]) / 5
    assert last < first and sum(report.implicit_acc[-5:]) / 5 > 0.5


def test_alignment_raises_the_mean_reward_of_samples():
    """ReFL on the planted colour reward: the mean reward of fixed-seed samples goes up."""
    pipe = tiny_pipeline(seed=0)
    s = SamplerConfig(num_steps=6, eta=0.0)
    before = mean_reward(pipe, PROMPTS * 2, color_reward, s, seed=99)
    train_refl(pipe, PROMPTS, color_reward, ReFLConfig(steps=20, batch_size=8, lr=1e-2, grad_steps=2, sampler=s))
    after = mean_reward(pipe, PROMPTS * 2, color_reward, s, seed=99)
    assert after > before + 0.02


@pytest.mark.slow
def test_ppo_raises_the_mean_reward_of_samples():
    pipe = tiny_pipeline(seed=0)
    s = SamplerConfig(num_steps=6, eta=1.0)
    before = mean_reward(pipe, PROMPTS * 2, color_reward, s, seed=99)
    report = train_ppo(
        pipe, PROMPTS, color_reward, PPOConfig(epochs=30, batch_size=8, lr=3e-3, clip_range=0.2, sampler=s)
    )
    after = mean_reward(pipe, PROMPTS * 2, color_reward, s, seed=99)
    assert after > before and sum(report.rewards[-5:]) > sum(report.rewards[:5])


def test_pipeline_save_and_load_and_a_latent_vae_path(tmp_path):
    pipe = tiny_pipeline(seed=5)
    pipe.save_pretrained(tmp_path / "gen")
    back = T2IPipeline.from_pretrained(tmp_path / "gen")
    assert back.vae is None and back.sample_shape == (3, 16, 16)
    s = SamplerConfig(num_steps=3, eta=0.0)
    a = sample(pipe, PROMPTS[:2], s, generator=torch.Generator().manual_seed(1)).images
    b = sample(back, PROMPTS[:2], s, generator=torch.Generator().manual_seed(1)).images
    assert torch.allclose(a, b, atol=1e-5)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=16
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    latent = T2IPipeline(unet, pipe.scheduler, pipe.text_encoder, pipe.tokenizer, vae)
    images = sample(latent, PROMPTS[:2], s).images
    assert images.shape == (2, 3, 16, 16)
    before = _unet_state(latent)
    train_dpo(latent, _pairs(tmp_path, 2), DPOConfig(steps=1, batch_size=2, lr=1e-3, beta=100.0))
    assert _changed(latent, before) > 0


def test_refl_with_the_pretraining_regularizer(tmp_path):
    pipe = tiny_pipeline(seed=6)
    before = _unet_state(pipe)
    images = torch.rand(3, 3, 32, 32)
    cfg = ReFLConfig(
        steps=2, batch_size=2, lr=1e-3, grad_steps=1, pretrain_weight=0.5, sampler=SamplerConfig(num_steps=3, eta=0.0)
    )
    report = train_refl(pipe, PROMPTS, color_reward, cfg, pretrain_images=images, pretrain_prompts=PROMPTS[:3])
    assert _changed(pipe, before) > 0 and len(report.losses) == 2
    with pytest.raises(ValueError, match="pretrain_images"):
        train_refl(pipe, PROMPTS, color_reward, cfg)
