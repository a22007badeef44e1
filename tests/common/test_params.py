"""``lmops.common.params``: the one freeze / restore of ``requires_grad`` behind every adapter method's
apply and unload (ResLoRA, MoLE), checked directly and through both methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_models import tiny_model

from lmops.common.params import freeze, restore_requires_grad


def _flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _mixed() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)  # a flag that must come back False, not be reset to True
    return model


def test_freeze_returns_the_flags_and_freezes_all():
    model = _mixed()
    saved = freeze(model)
    assert saved == {"0.weight": True, "0.bias": True, "1.weight": False, "1.bias": True, "2.weight": True,
                     "2.bias": True}
    assert not any(p.requires_grad for p in model.parameters())


def test_keep_leaves_those_parameters_as_they_are():
    model = _mixed()
    saved = freeze(model, keep=[model[2].weight, model[1].weight])
    assert saved["2.weight"] is True and saved["1.weight"] is False
    assert _flags(model) == {"0.weight": False, "0.bias": False, "1.weight": False, "1.bias": False,
                             "2.weight": True, "2.bias": False}


def test_restore_gives_back_exactly_the_saved_flags():
    model = _mixed()
    before = _flags(model)
    saved = freeze(model)
    model[0].weight.requires_grad_(True)  # changed meanwhile: restored anyway
    restore_requires_grad(model, saved)
    assert _flags(model) == before


def test_restore_by_name_reaches_replaced_parameters_and_skips_new_ones():
    model = _mixed()
    saved = freeze(model)
    model[0].weight = nn.Parameter(torch.zeros(3, 4), requires_grad=False)  # a merge writing a new weight
    model.append(nn.Linear(2, 2))  # an adapter's parameters, not in saved
    model[3].weight.requires_grad_(False)
    restore_requires_grad(model, {**saved, "gone.weight": True})  # a name the model lost is ignored
    assert model[0].weight.requires_grad is True and model[1].weight.requires_grad is False
    assert model[3].weight.requires_grad is False and model[3].bias.requires_grad is True


def test_tied_parameters_are_saved_once():
    model = tiny_model("llama")  # lm_head.weight is model.embed_tokens.weight
    saved = freeze(model)
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved
    assert not model.lm_head.weight.requires_grad
    restore_requires_grad(model, saved)
    assert model.lm_head.weight.requires_grad


def test_bad_arguments():
    with pytest.raises(TypeError, match="model: expected an nn.Module, got dict"):
        freeze({})
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        restore_requires_grad([], {})
    with pytest.raises(TypeError, match="saved: expected the .* mapping freeze\\(\\) returned, got list"):
        restore_requires_grad(_mixed(), [("0.weight", True)])


@pytest.mark.parametrize("method", ["reslora", "mole"])
def test_methods_restore_mixed_flags_on_unload(method):
    model = tiny_model("llama")
    model.model.norm.weight.requires_grad_(False)
    model.model.layers[1].mlp.up_proj.weight.requires_grad_(False)
    before = _flags(model)
    if method == "reslora":
        from lmops.reslora import apply_reslora, unload

        apply_reslora(model, ["q_proj", "up_proj"], structure="bs", r=2)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_" in n for n in trainable)
        unload(model)
    else:
        from lmops.mole import apply_mole, gate_parameters, unload_mole

        g = torch.Generator().manual_seed(0)
        up = model.model.layers[0].mlp.up_proj
        experts = {e: {"model.layers.0.mlp.up_proj": (torch.randn(2, up.in_features, generator=g),
                                                      torch.randn(up.out_features, 2, generator=g), 1.0)}
                   for e in ("a", "b")}
        apply_mole(model, experts, granularity="matrix")
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in gate_parameters(model)} and trainable
        unload_mole(model)
    assert _flags(model) == before
