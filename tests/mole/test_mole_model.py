"""MoLE on a tiny random Llama (hidden 64, 2 layers, vocab 128): apply_mole at every granularity with
both gate inputs, gate training with the balancing loss, masking, generate with a KV cache against a
no-cache greedy recomputation, unload, peft adapters (equivalence with peft's own output for each
adapter under a one-hot gate), the arithmetic-merge baseline against peft's add_weighted_adapter,
and the errors of bad configurations."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from tiny_models import random_ids, tiny_model

import lmops_kernels as lk
from lmops.mole import (
    apply_mole,
    balancing_loss,
    gate_parameters,
    mask_experts,
    merge_adapters_arithmetic,
    mole_from_peft,
    mole_layers,
    unload_mole,
)

peft = pytest.importorskip("peft")


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_op():
    spec = importlib.util.spec_from_file_location(
        "_mole_layer_tests", Path(__file__).resolve().parents[1] / "layers" / "test_mole.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_mole_gate


@pytest.fixture(autouse=True)
def mole_gate_op(monkeypatch):
    """lmops_kernels.mole_gate, or the layer tests' reference where the package does not have it yet."""
    if not hasattr(lk, "mole_gate"):
        monkeypatch.setattr(lk, "mole_gate", _reference_op(), raising=False)


GRANULARITY_GROUPS = {"matrix": 14, "layer": 4, "block": 2, "network": 1}
PAD = 0


def random_experts(model, n=3, rank=4, seed=0, modules=None):
    mods = dict(model.named_modules())
    names = modules or [n for n in mods if n.endswith("_proj")]  # nn.Linear or BitLinear
    g = torch.Generator().manual_seed(seed)
    return {
        f"e{j}": {
            m: (torch.randn(rank, mods[m].in_features, generator=g) * 0.2,
                torch.randn(mods[m].out_features, rank, generator=g) * 0.2, 4.0 / rank)
            for m in names
        }
        for j in range(n)
    }


def left_padded():
    ids = random_ids(2, 7, seed=5)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = PAD, 0  # prompt 0 has 4 tokens, prompt 1 has 7
    return ids, mask


def greedy_no_cache(model, ids, mask, steps):
    """Recompute the whole sequence at every step (no KV cache), positions as generate sets them."""
    logits = []
    for _ in range(steps):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        logits.append(out)
        ids = torch.cat([ids, out.argmax(-1, keepdim=True)], -1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
    return ids, torch.stack(logits, 1)


def check_generate_matches_no_cache(model, steps=8):
    ids, mask = left_padded()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            use_cache=True, pad_token_id=PAD, output_logits=True, return_dict_in_generate=True,
        )
        want_ids, want_logits = greedy_no_cache(model, ids, mask, steps)
    assert out.sequences.shape == (2, 7 + steps)
    torch.testing.assert_close(torch.stack(out.logits, 1), want_logits, atol=2e-4, rtol=1e-4)
    assert torch.equal(out.sequences, want_ids)


@pytest.mark.parametrize("gate_input", ["experts", "hidden"])
@pytest.mark.parametrize("granularity", list(GRANULARITY_GROUPS))
def test_granularities(granularity, gate_input):
    model = tiny_model("llama")
    apply_mole(model, random_experts(model), granularity=granularity, gate_input=gate_input)
    layers = mole_layers(model)
    leaders = [m for m in layers if m.is_leader]
    assert len(layers) == 14 and len(leaders) == GRANULARITY_GROUPS[granularity]
    if granularity == "layer":
        assert {m.gate_group.key for m in leaders} == {f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn", "mlp")}
    if granularity == "block":
        assert [m.gate_group.key for m in leaders] == ["model.layers.0", "model.layers.1"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".gate." in n for n in trainable)
    assert {id(p) for p in gate_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    assert any("temperature" in n for n in trainable)

    ids = random_ids(2, 9)
    model(ids)
    for m in leaders:
        g = m.last_gates
        assert g.shape == (2, 9, 3)
        torch.testing.assert_close(g.sum(-1), torch.ones(2, 9))
    loss = balancing_loss(model)
    loss.backward()
    for m in leaders:
        assert m.gate.weight.grad is not None and m.gate.weight.grad.abs().sum() > 0
        assert m.gate.log_temperature.grad is not None

    check_generate_matches_no_cache(model)


def test_train_gates_with_balancing_loss():
    torch.manual_seed(0)
    model = tiny_model("llama")
    apply_mole(model, random_experts(model))
    model.train()
    params = gate_parameters(model)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=3e-2)
    ids = random_ids(4, 12, seed=2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss + 0.5 * balancing_loss(model)
        loss.backward()
        assert all(p.grad is not None for p in params)
        assert sum(float(p.grad.abs().sum()) for p in params) > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
    assert all(p.grad is None for n, p in model.named_parameters() if "base_layer" in n)


def test_mask_experts_one_hot_equals_single_expert_model():
    base = tiny_model("llama")
    experts = random_experts(base)
    model = apply_mole(tiny_model("llama"), experts, gate_input="hidden")
    single = apply_mole(tiny_model("llama"), {"e1": experts["e1"]})
    ids = random_ids(2, 10)
    with torch.no_grad():
        mixed = model(ids).logits
        mask_experts(model, keep=["e1"])
        torch.testing.assert_close(model(ids).logits, single(ids).logits, atol=1e-5, rtol=1e-5)
        for m in mole_layers(model):
            if m.is_leader:
                assert torch.equal(m.last_gates[..., [0, 2]], torch.zeros(2, 10, 2))
        check_generate_matches_no_cache(model, steps=4)
        mask_experts(model, None)
        torch.testing.assert_close(model(ids).logits, mixed)


def test_unload_restores_model():
    model = tiny_model("llama")
    ids = random_ids(1, 6)
    with torch.no_grad():
        want = model(ids).logits
    apply_mole(model, random_experts(model), granularity="layer")
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)
    unload_mole(model)
    assert not mole_layers(model) and all(p.requires_grad for p in model.parameters())
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want)
    apply_mole(model, list(random_experts(model, n=2).values()))  # again, experts given as a list
    assert mole_layers(model)[0].expert_names == ("expert_0", "expert_1")
    clone = copy.deepcopy(model)  # groups stay shared within the copy, the reset hook comes along
    with torch.no_grad():
        torch.testing.assert_close(clone(ids).logits, model(ids).logits)
        assert clone.model.layers[0].mlp.up_proj.gate_group is clone.model.layers[0].self_attn.q_proj.gate_group


def test_packed_bitlinear_model_generates():
    from lmops import bitnet

    model = bitnet.pack(bitnet.convert(tiny_model("llama")))
    apply_mole(model, random_experts(model))
    model(random_ids(2, 5)).logits.sum().backward()
    assert all(p.grad is not None for p in gate_parameters(model))
    check_generate_matches_no_cache(model, steps=4)


def test_bad_configurations():
    model = tiny_model("llama")
    experts = random_experts(model, n=2)
    with pytest.raises(ValueError, match="unknown target module 'model.layers.7.self_attn.q_proj'"):
        apply_mole(tiny_model("llama"), {"e0": {"model.layers.7.self_attn.q_proj": experts["e0"]["model.layers.0.self_attn.q_proj"]}})
    bad = {**experts["e1"]}
    bad["model.layers.1.mlp.down_proj"] = (torch.randn(4, 64), torch.randn(64, 4), 1.0)  # in_features is 96
    with pytest.raises(ValueError, match=r"expert 'e1', module 'model.layers.1.mlp.down_proj'.*\(4, 64\)"):
        apply_mole(tiny_model("llama"), {"e0": experts["e0"], "e1": bad})
    zero = {**experts["e1"], "model.layers.0.mlp.up_proj": (torch.zeros(0, 64), torch.zeros(96, 0), 1.0)}
    with pytest.raises(ValueError, match="rank 0"):
        apply_mole(tiny_model("llama"), {"e0": experts["e0"], "e1": zero})
    with pytest.raises(ValueError, match="granularity"):
        apply_mole(tiny_model("llama"), experts, granularity="head")
    with pytest.raises(ValueError, match="target_modules"):
        apply_mole(tiny_model("llama"), experts, target_modules=["c_attn"])
    apply_mole(model, experts, target_modules=["q_proj", "v_proj"])
    assert len(mole_layers(model)) == 4
    with pytest.raises(ValueError, match="already"):
        apply_mole(model, experts)
    with pytest.raises(ValueError, match=r"keep at least one of \['e0', 'e1'\]"):
        mask_experts(model, keep=[])
    with pytest.raises(ValueError, match=r"unknown experts \['e7'\]; the model's experts are \['e0', 'e1'\]"):
        mask_experts(model, keep=["e0", "e7"])
    with pytest.raises(RuntimeError, match="run a forward"):
        balancing_loss(model)


# ----------------------------------------------------------------------------------------------
# peft interop
# ----------------------------------------------------------------------------------------------


def save_peft_adapter(path, seed, **config):
    """A peft LoRA adapter with random (non-zero) A and B, saved by save_pretrained."""
    torch.manual_seed(seed)
    pm = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    pm.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    return {
        # different ranks, target modules, alpha/rank patterns and rsLoRA
        "a1": save_peft_adapter(root / "a1", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3}),
        "a2": save_peft_adapter(root / "a2", 2, r=8, lora_alpha=16, use_rslora=True,
                                target_modules=["o_proj", "up_proj", "down_proj", "q_proj"]),
        "a3": save_peft_adapter(root / "a3", 3, r=8, lora_alpha=4, target_modules=["o_proj", "up_proj", "down_proj", "q_proj"]),
    }


@pytest.mark.parametrize("granularity,gate_input", [("block", "experts"), ("matrix", "hidden"), ("network", "experts")])
def test_one_hot_gate_equals_peft(adapters, granularity, gate_input):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(tiny_model("llama"), adapters["a1"], adapter_name="a1")
    pm.load_adapter(adapters["a2"], adapter_name="a2")
    model = mole_from_peft(tiny_model("llama"), {"a1": adapters["a1"], "a2": adapters["a2"]},
                           granularity=granularity, gate_input=gate_input)
    layer = model.get_submodule("model.layers.0.mlp.up_proj")
    assert [n for n, r in zip(layer.expert_names, layer.expert_ranks) if r] == ["a2"]
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert q.expert("a1")[0].shape == (4, 64) and q.expert("a2")[0].shape == (8, 64)
    ids = random_ids(2, 8)
    with torch.no_grad():
        base = tiny_model("llama")(ids).logits
        for name in ("a1", "a2"):
            pm.set_adapter(name)
            want = pm(ids).logits
            assert (want - base).abs().max() > 1e-3  # the adapter does something
            mask_experts(model, keep=[name])
            torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_peft_scalings(adapters):
    from lmops.mole import read_peft_lora

    a1 = read_peft_lora(adapters["a1"])
    assert a1["model.layers.0.self_attn.q_proj"][2] == pytest.approx(8 / 4)
    assert a1["model.layers.0.self_attn.v_proj"][0].shape == (2, 64) and a1["model.layers.0.self_attn.v_proj"][2] == pytest.approx(4)
    assert a1["model.layers.1.self_attn.q_proj"][2] == pytest.approx(3 / 4)
    a2 = read_peft_lora(adapters["a2"])
    assert a2["model.layers.0.mlp.up_proj"][2] == pytest.approx(16 / 8**0.5)


def test_peft_rank_and_alpha_patterns_are_read_with_peft_rule(tmp_path):
    # rank_pattern / alpha_pattern keys are peft's file format: regular expressions matched at the end of
    # the name (peft.utils.other.get_pattern_key), not lmops' converter rule (whole dotted components):
    # read with lmops' rule, these keys would match nothing and the ranks would not fit the tensors
    from lmops.mole import read_peft_lora

    path = save_peft_adapter(tmp_path / "regex", 4, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             rank_pattern={r"layers\.1\.self_attn\.(q|v)_proj": 2}, alpha_pattern={r"v_pr.j": 6})
    got = read_peft_lora(path)
    pm = peft.PeftModel.from_pretrained(tiny_model("llama"), path)
    for layer in (0, 1):
        for proj in ("q_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}"
            a, _, scaling = got[name]
            theirs = pm.base_model.model.get_submodule(name)
            assert a.shape[0] == theirs.r["default"] == (2 if layer == 1 else 4)
            alpha = 6 if proj == "v_proj" else 8
            assert scaling == pytest.approx(theirs.scaling["default"]) and scaling == pytest.approx(alpha / a.shape[0])


def test_peft_errors(adapters, tmp_path):
    wide = tmp_path / "wide"
    torch.manual_seed(0)
    pm = peft.get_peft_model(tiny_model("llama", intermediate_size=80), peft.LoraConfig(r=2, target_modules=["up_proj"]))
    pm.save_pretrained(str(wide))
    with pytest.raises(ValueError, match=r"expert 'wide', module 'model.layers.\d.mlp.up_proj'.*lora_B \(80, 2\).*\(96, r\)"):
        mole_from_peft(tiny_model("llama"), {"a1": adapters["a1"], "wide": str(wide)})
    deep = tmp_path / "deep"
    pm = peft.get_peft_model(tiny_model("llama", num_hidden_layers=3), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    pm.save_pretrained(str(deep))
    with pytest.raises(ValueError, match="unknown target module 'model.layers.2.self_attn.q_proj'"):
        mole_from_peft(tiny_model("llama"), {"deep": str(deep)})
    dora = tmp_path / "dora"
    peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(str(dora))
    with pytest.raises(ValueError, match="DoRA"):
        mole_from_peft(tiny_model("llama"), {"dora": str(dora)})
    with pytest.raises(ValueError, match="adapter_config.json"):
        mole_from_peft(tiny_model("llama"), {"missing": str(tmp_path / "nothing")})


@pytest.mark.parametrize("combination", ["cat", "linear"])
def test_merge_baseline_matches_peft(adapters, combination):
    from peft import PeftModel

    # a3 (plain LoRA) first: peft's merged adapter copies the first source's config, and with an rsLoRA
    # source first (a2) its merged scaling is sqrt(new_rank) instead of 1 (peft 0.21.2; cf. PR #3449)
    pm = PeftModel.from_pretrained(tiny_model("llama"), adapters["a3"], adapter_name="a3")
    pm.load_adapter(adapters["a2"], adapter_name="a2")
    pm.add_weighted_adapter(["a3", "a2"], [-0.4, 0.7], "merged", combination_type=combination)
    pm.set_adapter("merged")
    model = merge_adapters_arithmetic(tiny_model("llama"), {"a2": adapters["a2"], "a3": adapters["a3"]}, [0.7, -0.4], combination)
    assert not gate_parameters(model)
    ids = random_ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, pm(ids).logits, atol=1e-5, rtol=1e-5)
    if combination == "cat":  # exact: the weighted sum of the deltas
        layer = model.get_submodule("model.layers.1.mlp.down_proj")
        from lmops.mole import read_peft_lora

        want = sum(w * s * b @ a for w, (a, b, s) in zip(
            [0.7, -0.4], [read_peft_lora(adapters[n])["model.layers.1.mlp.down_proj"] for n in ("a2", "a3")]))
        torch.testing.assert_close(layer.get_delta_weight(), want, atol=1e-6, rtol=1e-5)
    else:
        with pytest.raises(ValueError, match="different ranks"):
            merge_adapters_arithmetic(tiny_model("llama"), {"a1": adapters["a1"], "a2": adapters["a2"]}, [1, 1])
