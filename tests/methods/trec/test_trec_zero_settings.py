"""The zero settings: RC weight 0 is plain self-conditioning and TAVS gamma 0 is the plain schedule, bitwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trec_tiny import TRAIN, VOCAB, bitwise_equal, params, tiny_model, tiny_schedule

from lmops.methods.trec import (
    TimeAwareVarianceScaling,
    TrainConfig,
    encode_examples,
    train,
    training_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
BASE = dict(steps=STEPS, batch_size=16, lr=5e-3, warmup_steps=0, grad_clip=0.0, seed=3, self_cond_prob=0.5)


def _plain_self_conditioning(model, schedule, steps: int, seed: int) -> None:
    """Analog Bits' self-conditioning written out from the model's parts: a coin per batch; on heads a
    no-grad first pass with zeros, then the trained pass conditioned on it (the draw order of ``train``)."""
    src_all, tgt_all = encode_examples(TRAIN, VOCAB, model.config.max_source_len, model.config.target_len)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=BASE["lr"], weight_decay=0.0)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            for g in opt.param_groups:
                g["lr"] = BASE["lr"] * 1.0
            idx = torch.randint(0, len(TRAIN), (BASE["batch_size"],), generator=gen)
            src, tgt = src_all[idx], tgt_all[idx]
            memory, mask = model.encode(src)
            x0_mean = model.embed_tokens(tgt)
            x0 = x0_mean + schedule.sqrt_one_minus_alpha_bar[0].item() * torch.randn(x0_mean.shape, generator=gen)
            t = torch.randint(0, schedule.T, (src.shape[0],), generator=gen)
            z_t = schedule.signal(t, x0) * x0 + schedule.noise_std(t, x0) * torch.randn(x0.shape, generator=gen)
            prev = None
            if bool(torch.rand((), generator=gen) < 0.5):
                with torch.no_grad():
                    prev = model.denoise(z_t, t, memory, mask, None)
            x0_hat = model.denoise(z_t, t, memory, mask, prev)
            dims = (1, 2)
            mse = torch.where(t == 0, ((x0_mean - x0_hat) ** 2).mean(dims), ((x0 - x0_hat) ** 2).mean(dims))
            tT = ((schedule.signal(torch.full_like(t, schedule.T - 1), x0) * x0) ** 2).mean(dims)
            rounding = F.cross_entropy(model.logits(x0).transpose(1, 2), tgt, reduction="none").mean(-1)
            anchor = F.cross_entropy(model.logits(x0_hat).transpose(1, 2), tgt, reduction="none").mean(-1)
            loss = (mse + tT + 1.0 * rounding + 1.0 * anchor).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def test_rc_weight_zero_is_plain_self_conditioning_bitwise():
    schedule = tiny_schedule()
    reference = tiny_model(seed=1)
    _plain_self_conditioning(reference, schedule, STEPS, seed=BASE["seed"])

    def no_reward(hyps, refs):
        raise AssertionError("RC computed a reward with rc_weight=0")

    model = tiny_model(seed=1)
    train(model, schedule, VOCAB, TRAIN, TrainConfig(**BASE, rc_weight=0.0), progress=False, reward=no_reward)
    assert bitwise_equal(params(model), params(reference))

    # the comparison can fail: a tiny RC weight moves the parameters
    rc = tiny_model(seed=1)
    train(rc, schedule, VOCAB, TRAIN, TrainConfig(**{**BASE, "self_cond_prob": 1.0}, rc_weight=1e-3), progress=False)
    again = tiny_model(seed=1)
    train(again, schedule, VOCAB, TRAIN, TrainConfig(**{**BASE, "self_cond_prob": 1.0}, rc_weight=0.0), progress=False)
    assert not bitwise_equal(params(rc), params(again))


def test_rc_sample_action_consumes_no_randomness_at_weight_zero():
    schedule = tiny_schedule()
    a, b = tiny_model(seed=2), tiny_model(seed=2)
    train(a, schedule, VOCAB, TRAIN, TrainConfig(**BASE, rc_weight=0.0, rc_action="sample"), progress=False)
    train(b, schedule, VOCAB, TRAIN, TrainConfig(**BASE, rc_weight=0.0, rc_action="argmax"), progress=False)
    assert bitwise_equal(params(a), params(b))


def test_tavs_gamma_zero_is_the_plain_schedule_bitwise():
    schedule = tiny_schedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 6, 8, generator=gen)
    noise = torch.randn(8, 6, 8, generator=gen)
    t = torch.tensor([0, 1, 10, 33, 50, 70, 98, 99])
    plain = schedule.q_sample(x0, t, noise)
    zero = schedule.q_sample(x0, t, noise, TimeAwareVarianceScaling(0.0))
    assert torch.equal(plain, zero)
    scaled = schedule.q_sample(x0, t, noise, TimeAwareVarianceScaling(0.5))
    assert torch.equal(scaled[0], plain[0])  # s(0) = 1
    assert not torch.equal(scaled[1:], plain[1:])

    # the loss of a batch, and the parameters after seeded steps
    src, tgt = encode_examples(TRAIN[:16], VOCAB, 6, 6)
    model = tiny_model()
    cfg = TrainConfig(**BASE)
    losses = [training_loss(model, schedule, src, tgt, cfg, generator=torch.Generator().manual_seed(5),
                            noise_scaling=s).total for s in (None, TimeAwareVarianceScaling(0.0))]
    assert torch.equal(losses[0], losses[1])
    m1, m2, m3 = tiny_model(seed=4), tiny_model(seed=4), tiny_model(seed=4)
    train(m1, schedule, VOCAB, TRAIN, TrainConfig(**BASE, tavs_gamma=0.0), progress=False)
    train(m2, schedule, VOCAB, TRAIN, TrainConfig(**BASE), progress=False,
          noise_scaling=TimeAwareVarianceScaling(0.0))
    train(m3, schedule, VOCAB, TRAIN, TrainConfig(**BASE, tavs_gamma=0.3), progress=False)
    assert bitwise_equal(params(m1), params(m2))
    assert not bitwise_equal(params(m1), params(m3))
