"""Reinforced Conditioning: the clipped paired advantage on planted rewards, the REINFORCE term's gradient
direction, and the sentence-BLEU reward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trec_tiny import TRAIN, VOCAB, tiny_model, tiny_schedule

from lmops.methods.trec import (
    TrainConfig,
    Vocab,
    clipped_advantage,
    encode_examples,
    rc_loss,
    reinforce_loss,
    sentence_bleu_reward,
    training_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clipped_advantage_sign_and_clip():
    r_sc = torch.tensor([0.9, 0.2, 0.5, 0.70, 0.1])
    r_hat = torch.tensor([0.1, 0.9, 0.5, 0.45, 0.2])
    adv = clipped_advantage(r_sc, r_hat, eps=0.5)
    # improvement 0.8 clipped to 0.5; regression -0.7 clipped to -0.5; tie 0; small differences kept
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0, 0.25, -0.1]), atol=1e-6)
    with pytest.raises(ValueError, match="eps"):
        clipped_advantage(r_sc, r_hat, eps=0.0)
    with pytest.raises(ValueError, match="r_hat"):
        clipped_advantage(r_sc, r_hat[:2], eps=0.5)


def _logits_for(ids: list[list[int]], vocab_size: int, margin: float = 4.0) -> torch.Tensor:
    # logits whose argmax is ``ids``
    out = torch.zeros(len(ids), len(ids[0]), vocab_size)
    for b, row in enumerate(ids):
        for pos, i in enumerate(row):
            out[b, pos, i] = margin
    return out


def test_rc_loss_planted_rewards():
    vocab = Vocab(["a", "b", "c", "d"])  # ids: a=2 b=3 c=4 d=5
    refs = ["a b c d", "a b c d", "a b c d"]
    sc = [[2, 3, 4, 5], [2, 3, 5, 5], [2, 3, 4, 4]]  # 4/4, 3/4, 3/4 words right
    hat = [[4, 5, 2, 3], [2, 3, 4, 5], [2, 3, 5, 4]]  # 0/4, 4/4, 2/4 words right

    def word_accuracy(hyps, references):  # a planted reward: share of positions right
        return [sum(x == y for x, y in zip(h.split(), r.split())) / len(r.split()) for h, r in zip(hyps, references)]

    logits_sc = _logits_for(sc, len(vocab)).requires_grad_()
    out = rc_loss(logits_sc, _logits_for(hat, len(vocab)), refs, vocab.decode, eps=0.5, reward=word_accuracy)
    # hand computed: 1 - 0 -> clipped 0.5; 0.75 - 1 = -0.25; 0.75 - 0.5 = 0.25
    assert out.reward_sc.tolist() == [1.0, 0.75, 0.75]
    assert out.reward_hat.tolist() == [0.0, 1.0, 0.5]
    assert torch.allclose(out.advantage, torch.tensor([0.5, -0.25, 0.25]))
    logp = F.log_softmax(logits_sc, -1).gather(-1, torch.tensor(sc)[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(out.loss, -(out.advantage * logp).mean())
    out.loss.backward()
    assert logits_sc.grad is not None and logits_sc.grad.abs().sum() > 0


def test_reinforce_gradient_direction():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    actions = torch.randint(0, 7, (3, 5))

    def logp(lg):
        return F.log_softmax(lg, -1).gather(-1, actions[..., None]).squeeze(-1).sum(-1)

    adv = torch.tensor([0.4, -0.4, 0.0])
    x = logits.clone().requires_grad_()
    reinforce_loss(x, actions, adv).backward()
    stepped = logits - 0.5 * x.grad
    before, after = logp(logits), logp(stepped)
    assert after[0] > before[0] + 1e-3  # A > 0: y made more likely
    assert after[1] < before[1] - 1e-3  # A < 0: less likely
    assert torch.equal(x.grad[2], torch.zeros_like(x.grad[2]))  # A = 0: no gradient
    with pytest.raises(ValueError, match="actions"):
        reinforce_loss(x, actions[:, :2], adv)


def test_rc_term_raises_the_self_conditioned_likelihood_through_the_model():
    """A planted reward that always prefers the self-conditioned pass (A = +eps): steps on the RC term alone
    raise log p(y | z0_sc) of the model's own argmax output for a fixed batch."""
    model = tiny_model(seed=0)
    src, _ = encode_examples(TRAIN[:8], VOCAB, 6, 6)
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(8, 6, 8, generator=gen)
    t = torch.full((8,), 40)

    def score():
        memory, mask = model.encode(src)
        with torch.no_grad():
            first = model.denoise(z_t, t, memory, mask, None)
        logits = model.logits(model.denoise(z_t, t, memory, mask, first))
        return logits, model.logits(first)

    with torch.no_grad():
        y = score()[0].argmax(-1)
    before = F.log_softmax(score()[0], -1).gather(-1, y[..., None]).sum().item()
    opt = torch.optim.SGD(model.parameters(), lr=0.002)
    favour_sc = iter([[1.0] * 8, [0.0] * 8] * 10)  # R_sc then R_hat on each call pair
    for _ in range(3):
        logits_sc, logits_hat = score()
        out = rc_loss(logits_sc, logits_hat, ["x"] * 8, VOCAB.decode, eps=0.5,
                      reward=lambda h, r: next(favour_sc))
        assert torch.allclose(out.advantage, torch.full((8,), 0.5))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = F.log_softmax(score()[0], -1).gather(-1, y[..., None]).sum().item()
    assert after > before + 1.0


def test_sentence_bleu_reward_orders_hypotheses():
    refs = ["ant bee cat dog eel fox"] * 3
    r = sentence_bleu_reward(["ant bee cat dog eel fox", "ant bee cat dog hen hen", "hen gnu hen gnu hen gnu"], refs)
    assert r[0] == pytest.approx(1.0)
    assert 0.0 <= r[2] < r[1] < r[0]
    with pytest.raises(ValueError, match="references"):
        sentence_bleu_reward(["a"], [])


def test_training_loss_reports_rc_only_when_self_conditioned():
    schedule = tiny_schedule()
    model = tiny_model()
    src, tgt = encode_examples(TRAIN[:16], VOCAB, 6, 6)
    seen = []
    for sc_prob in (1e-9, 1.0):  # (self_cond_prob 0 with rc_weight > 0 is refused by TrainConfig)
        cfg = TrainConfig(rc_weight=1.0, self_cond_prob=sc_prob)
        out = training_loss(model, schedule, src, tgt, cfg, generator=torch.Generator().manual_seed(1),
                            decode=VOCAB.decode, reward=lambda h, r, p=sc_prob: (seen.append(p), [0.5] * len(h))[1])
        assert out.self_conditioned is (sc_prob == 1.0)
        assert out.advantage == 0.0  # equal planted rewards: A = 0
    assert seen == [1.0, 1.0]  # the reward ran only for the self-conditioned batch (R_sc, R_hat)
    with pytest.raises(ValueError, match="decode"):
        training_loss(model, schedule, src, tgt, TrainConfig(rc_weight=1.0))


def test_rc_needs_self_conditioning():
    with pytest.raises(ValueError, match="self_cond_prob"):
        TrainConfig(rc_weight=0.5, self_cond_prob=0.0)
    src, tgt = encode_examples(TRAIN[:4], VOCAB, 6, 6)
    with pytest.raises(ValueError, match="self_condition"):
        training_loss(tiny_model(self_condition=False), tiny_schedule(), src, tgt, TrainConfig(rc_weight=0.5),
                      decode=VOCAB.decode)
