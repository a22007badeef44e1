"""The denoiser: shapes, source padding, self-conditioning input, config checks, and lmops layer swaps
(BitLinear at construction or by lmops.bitnet.convert; ResLoRA adapters on the denoiser's linears)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trec_tiny import TRAIN, VOCAB, params, tiny_config, tiny_model, tiny_schedule

from lmops import BitLinear, ResLoRALinear
from lmops.bitnet import convert
from lmops.methods.trec import ModelConfig, TrainConfig, TRECModel, encode_examples, train, training_loss
from lmops.reslora import apply_reslora

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 4):
    return encode_examples(TRAIN[:n], VOCAB, 6, 6)


def test_shapes_and_tied_logits():
    model = tiny_model()
    src, tgt = _batch()
    z = torch.randn(4, 6, 8)
    x0 = model(z, torch.tensor([0, 5, 50, 99]), src)
    assert x0.shape == (4, 6, 8) and x0.dtype == torch.float32
    logits = model.logits(x0)
    assert logits.shape == (4, 6, len(VOCAB))
    assert torch.allclose(logits, x0 @ model.embed.weight.t())
    # a latent equal to a token's embedding rounds to that token when embeddings are well separated
    with torch.no_grad():
        model.embed.weight.mul_(10)
    assert torch.equal(model.logits(model.embed_tokens(tgt)).argmax(-1), tgt)


def test_source_padding_is_masked_and_self_conditioning_is_an_input():
    model = tiny_model(max_source_len=8)
    model.eval()
    src, _ = _batch()
    longer = torch.cat([src, torch.zeros(4, 2, dtype=torch.long)], dim=1)  # two more pads
    z, t = torch.randn(4, 6, 8), torch.tensor([3, 30, 60, 90])
    with torch.no_grad():
        assert torch.allclose(model(z, t, src), model(z, t, longer), atol=1e-6)
        changed = src.clone()
        changed[:, 0] = (changed[:, 0] % (len(VOCAB) - 2)) + 2 + (changed[:, 0] == 2).long()
        assert not torch.allclose(model(z, t, src), model(z, t, changed))
        plain = model(z, t, src)
        assert torch.equal(plain, model(z, t, src, torch.zeros_like(z)))  # None means zeros
        assert not torch.allclose(plain, model(z, t, src, torch.randn_like(z)))
    no_sc = tiny_model(self_condition=False)
    with pytest.raises(ValueError, match="x0_prev"):
        no_sc(z, t, src, torch.zeros_like(z))


def test_config_validation():
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(vocab_size=10, hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="pad_id"):
        ModelConfig(vocab_size=10, pad_id=10)
    with pytest.raises(ValueError, match="linear"):
        ModelConfig(vocab_size=10, linear="conv")
    with pytest.raises(ValueError, match="rc_clip"):
        TrainConfig(rc_clip=0)
    with pytest.raises(ValueError, match="tavs_gamma"):
        TrainConfig(tavs_gamma=-1)
    with pytest.raises(ValueError, match="rc_action"):
        TrainConfig(rc_action="beam")
    with pytest.raises(TypeError, match="config"):
        TRECModel({"vocab_size": 10})
    with pytest.raises(ValueError, match="z_t"):
        tiny_model()(torch.randn(2, 6, 5), torch.tensor([1, 2]), _batch(2)[0])


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


CFG = TrainConfig(steps=2, batch_size=8, warmup_steps=0, rc_weight=0.5, self_cond_prob=1.0)


def test_bitlinear_at_construction_trains():
    model = tiny_model(linear="bitlinear")
    linears = _linears(model)
    assert linears and all(type(m) is BitLinear for m in linears.values())
    before = params(model)
    train(model, tiny_schedule(), VOCAB, TRAIN, CFG, progress=False)
    after = params(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("q_proj.weight" in k for k in changed) and all(torch.isfinite(v).all() for v in after.values())


def test_bitnet_convert_after_construction_trains():
    model = convert(tiny_model())
    linears = _linears(model)
    assert len(linears) == len(_linears(tiny_model())) and all(type(m) is BitLinear for m in linears.values())
    src, tgt = _batch(8)
    loss = training_loss(model, tiny_schedule(), src, tgt, CFG, generator=torch.Generator().manual_seed(0),
                         decode=VOCAB.decode)
    loss.total.backward()
    assert model.denoiser.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_reslora_adapters_attach_to_the_denoiser_and_train():
    model = apply_reslora(tiny_model(denoiser_layers=2), target_modules=("q_proj", "v_proj"), r=2)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ResLoRALinear)}
    denoiser = sorted(n for n in layers if n.startswith("denoiser."))
    assert denoiser == sorted(f"denoiser.layers.{i}.{a}.{p}" for i in (0, 1) for a in ("self_attn", "cross_attn")
                              for p in ("q_proj", "v_proj"))
    assert layers["denoiser.layers.1.self_attn.q_proj"].previous() == [layers["denoiser.layers.0.self_attn.q_proj"]]
    before = params(model)
    train(model, tiny_schedule(), VOCAB, TRAIN, CFG, progress=False)
    after = params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # only the adapters train
    assert any(k.startswith("denoiser.") and "lora_B" in k for k in changed)


def test_linear_cls_factory_is_used():
    made = []

    def factory(i, o, bias=True):
        made.append((i, o))
        return nn.Linear(i, o, bias=bias)

    TRECModel(tiny_config(), linear_cls=factory)
    assert len(made) == len(_linears(tiny_model())) and (16, 32) in made  # in_proj: [z_t ; x0_prev] -> H
