"""ResLoRA on tiny random transformers models (nothing downloaded): apply, train, generate, merge,
unload, save/load, errors; plain LoRA (``structure="none"``) against peft's LoRA with the same weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tiny_models import random_ids, tiny_model

from lmops.reslora import ResLoRALinear
from lmops.reslora import (
    apply_reslora,
    load_adapter,
    merge_and_unload,
    print_trainable_parameters,
    reslora_layers,
    save_adapter,
    trainable_parameters,
    unload,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]  # two shapes of chain (hidden->hidden, intermediate->hidden)
STRUCTURES = ["none", "is", "bs", "ms"]


pytestmark = pytest.mark.usefixtures("one_thread")


def pattern_batch(batch=4, seq=16, seed=0):
    """Arithmetic token sequences: learnable, so a few steps lower the loss."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(3, 128, (batch, 1), generator=g)
    step = torch.randint(1, 4, (batch, 1), generator=g)
    return (start + step * torch.arange(seq)) % 125 + 3


def train(model, steps=6, lr=1e-2, seed=0):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = pattern_batch(seed=seed)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def frozen_snapshot(model):
    return {n: (p, p.detach().clone(), p._version) for n, p in model.named_parameters() if not p.requires_grad}


@pytest.fixture(scope="module")
def trained():
    """One trained model per structure (3 blocks, q/v/down_proj, pre_num=2), shared by several tests."""
    out = {}
    for structure in STRUCTURES:
        model = tiny_model("llama", num_hidden_layers=3)
        original = copy.deepcopy(model)
        apply_reslora(model, TARGETS, structure=structure, r=4, alpha=8, pre_num=2)
        snap = frozen_snapshot(model)
        losses = train(model)
        out[structure] = (model, original, snap, losses)
    return out


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
def test_end_to_end(trained, structure):
    model, original, snap, losses = trained[structure]
    assert losses[-1] < losses[0]
    for n, (p, c, v) in snap.items():  # the frozen base is untouched by training (and by eval below)
        assert p is dict(model.named_parameters())[n] and torch.equal(p, c) and p._version == v, n

    layers = reslora_layers(model)
    assert len(layers) == 9 and all(isinstance(m, ResLoRALinear) for m in layers.values())
    chain = [n for n in layers if n.endswith("q_proj")]
    assert chain == [f"model.layers.{i}.self_attn.q_proj" for i in range(3)]
    assert [lay._prev for lay in layers.values()][:3] == [None, layers[chain[0]], layers[chain[1]]]

    x = random_ids(2, 10, seed=5)
    with torch.no_grad():
        unmerged = model(x).logits
        adapters_dropped = original(x).logits
        one = torch.cat([model(x[i : i + 1]).logits for i in range(2)])
    torch.testing.assert_close(one, unmerged, rtol=1e-5, atol=1e-5)  # batching

    # generate with the KV cache (one token per layer per step) = without it
    cached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

    merged_model = merge_and_unload(copy.deepcopy(model))
    assert not any(isinstance(m, ResLoRALinear) for m in merged_model.modules())
    for name in layers:
        m = merged_model.get_submodule(name)
        assert type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
    assert list(merged_model.state_dict()) == list(original.state_dict())
    assert sum(p.numel() for p in merged_model.parameters()) == sum(p.numel() for p in original.parameters())
    assert not hasattr(merged_model, "_lmops_reslora")
    with torch.no_grad():
        merged = merged_model(x).logits
    if structure in ("none", "bs"):  # exact merges
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4 * unmerged.abs().max().item())
    else:  # approximate by design: closer than not having the adapters at all
        assert rel(merged, unmerged) < rel(adapters_dropped, unmerged)
    out = merged_model.generate(x, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 14)


def test_print_trainable_parameters_like_peft(trained, capsys):
    model, original, _, _ = trained["is"]
    total_base = sum(p.numel() for p in original.parameters())
    lora = 3 * (4 * (64 + 64) + 4 * (64 + 32) + 4 * (96 + 64))  # q: 64->64, v: 64->32 (2 kv heads), down: 96->64
    assert trainable_parameters(model) == (lora, total_base + lora)
    print_trainable_parameters(model)
    line = capsys.readouterr().out.strip()
    assert line == (
        f"trainable params: {lora:,d} || all params: {total_base + lora:,d} || "
        f"trainable%: {100 * lora / (total_base + lora):.4f}"
    )


def test_plain_lora_equals_peft():
    peft = pytest.importorskip("peft")
    ours, theirs = tiny_model("llama", num_hidden_layers=3), tiny_model("llama", num_hidden_layers=3)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    theirs = peft.get_peft_model(theirs, cfg)
    apply_reslora(ours, ["q_proj", "v_proj"], structure="none", r=4, alpha=12)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, layer in reslora_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            b = peft_layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g))
            layer.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
            layer.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
    assert trainable_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    x = random_ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, rtol=1e-5, atol=1e-5)
        merged_theirs = theirs.merge_and_unload()(x).logits
        torch.testing.assert_close(merge_and_unload(ours)(x).logits, merged_theirs, rtol=1e-5, atol=1e-5)


def test_unload_gives_back_the_original_model():
    model = tiny_model("llama", num_hidden_layers=3)
    model.model.norm.weight.requires_grad_(False)  # flags are restored, not reset
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    apply_reslora(model, TARGETS, structure="ms")
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    train(model, steps=2)
    for layer in list(reslora_layers(model).values())[:2]:
        layer.merge()  # unload unmerges first
    unload(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    got = model.state_dict()
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("structure", ["is", "ms"])
def test_save_load_round_trip(tmp_path, structure):
    model = tiny_model("llama", num_hidden_layers=3)
    apply_reslora(model, TARGETS, structure=structure, r=4, alpha=8, pre_num=None, window=7)
    train(model, steps=3)
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["config"]["structure"] == structure and meta["config"]["pre_num"] is None

    fresh = load_adapter(tiny_model("llama", num_hidden_layers=3), tmp_path)  # applies the saved config
    x = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, model(x).logits, rtol=0, atol=0)
    for a, b in zip(reslora_layers(model).values(), reslora_layers(fresh).values()):
        assert torch.equal(a.norm_window(), b.norm_window()) and len(a.norm_window()) == 3
    with torch.no_grad():
        torch.testing.assert_close(merge_and_unload(fresh)(x).logits, merge_and_unload(model)(x).logits, rtol=0, atol=0)


def test_load_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama", num_hidden_layers=2)
    apply_reslora(model, ["q_proj"], structure="bs", r=4)
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="r of the saved adapter is 4"):
        load_adapter(apply_reslora(tiny_model("llama", num_hidden_layers=2), ["q_proj"], structure="bs", r=8), tmp_path)
    with pytest.raises(ValueError, match="structure"):
        load_adapter(apply_reslora(tiny_model("llama", num_hidden_layers=2), ["q_proj"], structure="is", r=4), tmp_path)
    with pytest.raises(ValueError, match="chains"):
        load_adapter(tiny_model("llama", num_hidden_layers=3), tmp_path)
    with pytest.raises(ValueError, match="expected a directory"):
        load_adapter(tiny_model("llama", num_hidden_layers=2), tmp_path / "nowhere")
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = "model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key] = torch.zeros(64, 5)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    target = apply_reslora(tiny_model("llama", num_hidden_layers=2), ["q_proj"], structure="bs", r=4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{key}: expected shape \(64, 4\), got \(64, 5\)"):
        load_adapter(target, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded
    del tensors[key]
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        load_adapter(target, tmp_path)


def test_apply_errors():
    model = tiny_model("llama", num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"'qq_proj' matches no .*available linear names: .*'q_proj'"):
        apply_reslora(model, ["qq_proj"])
    with pytest.raises(ValueError, match="r: expected a positive int"):
        apply_reslora(model, ["q_proj"], r=0)
    with pytest.raises(ValueError, match="pre_num"):
        apply_reslora(model, ["q_proj"], structure="bs", pre_num=-1)
    with pytest.raises(ValueError, match="structure"):
        apply_reslora(model, ["q_proj"], structure="xx")
    assert not any(isinstance(m, ResLoRALinear) for m in model.modules())  # failed calls changed nothing
    apply_reslora(model, "self_attn.q_proj")
    with pytest.raises(ValueError, match="already applied"):
        apply_reslora(model, ["v_proj"])
    with pytest.raises(ValueError, match="no ResLoRA adapters"):
        merge_and_unload(tiny_model("llama", num_hidden_layers=2))
    ckpt = tiny_model("llama", num_hidden_layers=2)
    enable = getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable
    enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        apply_reslora(ckpt, ["q_proj"], structure="is")
    merged = tiny_model("llama", num_hidden_layers=2)
    apply_reslora(merged, ["q_proj"], structure="is")
    with pytest.raises(ValueError, match="no norms recorded"):  # bi needs training forwards; nothing changed
        merge_and_unload(merged, "bi")
    assert not any(lay.merged for lay in reslora_layers(merged).values())
    merge_and_unload(merged, "bw")


def test_packed_bitnet_model_trains_adapters_but_refuses_to_merge():
    from lmops import bitnet

    model = bitnet.pack(bitnet.convert(tiny_model("llama", num_hidden_layers=2)))
    apply_reslora(model, ["q_proj", "v_proj"], structure="ms", r=4)
    trainable, total = trainable_parameters(model)
    assert trainable == 2 * 4 * (64 + 64) + 2 * 4 * (64 + 32) and total > trainable
    layers = reslora_layers(model)
    before = {n: lay.lora_B.weight.clone() for n, lay in layers.items()}
    losses = train(model, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(lay.lora_B.weight, before[n]) for n, lay in layers.items())
    with pytest.raises(RuntimeError, match="packed BitLinear"):
        merge_and_unload(model)
    assert all(not lay.merged for lay in layers.values())
    out = model.generate(random_ids(1, 5), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)
