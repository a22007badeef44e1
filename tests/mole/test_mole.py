"""MoLELinear (lmops/mole/layer.py): outputs and gradients against a plain-torch MoLE written from the
paper's equations, on nn.Linear and BitLinear (packed and not) bases, odd shapes, every norm and both
gate inputs; masking, shared gates, state_dict keys and errors.

``reference_mole_gate`` below is this test's own reading of the ``lmops_kernels.mole_gate`` contract
(materializing every expert output); where the package's op is missing it stands in for it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lmops_kernels as lk
from lmops.bitnet import BitLinear
from lmops.bitnet.layer import PackedTernaryWeight, PackedWeightError
from lmops.mole import GATE_INPUTS, NORMS, MoLELinear
from lmops.mole.layer import GateGroup


def reference_mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
                        expert_mask=None, *, norm="layernorm", eps=1e-5):
    """The op's contract, literally: E_i, concat, normalize, project, softmax(/tau), mask, mix."""
    E = torch.stack([scaling[i].to(x.dtype) * (x @ lora_A[i].T) @ lora_B[i].T for i in range(lora_A.shape[0])], -2)
    C = E.flatten(-2)
    if norm == "layernorm":
        h = (C - C.mean(-1, keepdim=True)) / torch.sqrt(C.var(-1, unbiased=False, keepdim=True) + eps)
    elif norm == "rmsnorm":
        h = C / torch.sqrt(C.pow(2).mean(-1, keepdim=True) + eps)
    else:
        h = C / C.norm(dim=-1, keepdim=True).clamp_min(eps)
    if norm_weight is not None:
        h = h * norm_weight
    if norm_bias is not None:
        h = h + norm_bias
    gates = torch.softmax((h @ gate_weight.T).float() / temperature.float(), -1)
    if expert_mask is not None:
        gates = gates * expert_mask / (gates * expert_mask).sum(-1, keepdim=True)
    return (gates.to(x.dtype).unsqueeze(-1) * E).sum(-2), gates


@pytest.fixture(autouse=True)
def mole_gate_op(monkeypatch):
    """lmops_kernels.mole_gate, or this file's reference where the package does not have it yet."""
    if not hasattr(lk, "mole_gate"):
        monkeypatch.setattr(lk, "mole_gate", reference_mole_gate, raising=False)
    return lk.mole_gate


def make_experts(k, o, ranks, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        f"e{i}": (torch.randn(r, k, generator=g).to(dtype) * 0.3, torch.randn(o, r, generator=g).to(dtype) * 0.3, 2.0 / r)
        for i, r in enumerate(ranks)
    }


def expected(layer, experts, x, mask=None):
    """base(x) + sum_i g_i E_i, written per expert from the paper (gate from the layer's own parameters)."""
    E = torch.stack([s * (x @ a.T) @ b.T for a, b, s in experts.values()], -2)
    gate = layer.gate
    z = E.flatten(-2) if layer.gate_input.name == "experts" else x
    h = NORMS[gate.norm.name](z, gate.norm_weight, gate.norm_bias, gate.eps)
    g = torch.softmax((h @ gate.weight.T) / gate.temperature, -1)
    if mask is not None:
        g = g * mask / (g * mask).sum(-1, keepdim=True)
    return layer.base_layer(x) + (g.unsqueeze(-1) * E).sum(-2), g


SHAPES = [(37, 23, (3, 5, 2)), (16, 40, (4, 4))]


@pytest.mark.parametrize("gate_input", sorted(GATE_INPUTS))
@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("k,o,ranks", SHAPES)
def test_linear_base_matches_paper(gate_input, norm, k, o, ranks):
    torch.manual_seed(0)
    base = nn.Linear(k, o)
    experts = make_experts(k, o, ranks)
    layer = MoLELinear(base, experts, gate_input=gate_input, norm=norm, temperature_init=0.7)
    with torch.no_grad():  # move the gate away from its init so that the test sees it
        layer.gate.weight.normal_(std=0.5)
        if layer.gate.norm_weight is not None:
            layer.gate.norm_weight.uniform_(0.5, 1.5)
        if layer.gate.norm_bias is not None:
            layer.gate.norm_bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 5, k, requires_grad=True)
    y = layer(x)
    want, g = expected(layer, experts, x)
    assert y.shape == (2, 5, o)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.last_gates, g, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.last_gates.sum(-1), torch.ones(2, 5))

    # gradients: input and every gate parameter, against autograd through the paper's formula
    gy = torch.randn_like(y)
    params = [x] + [p for p in layer.gate.parameters()]
    got = torch.autograd.grad(y, params, gy)
    ref = torch.autograd.grad(want, params, gy)
    for name, a, b in zip(["x"] + [n for n, _ in layer.gate.named_parameters()], got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")
        assert a.abs().sum() > 0, name
    assert not any(t.requires_grad for t in (layer.lora_A, layer.lora_B, layer.lora_scaling))


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "latent"])
@pytest.mark.parametrize("gate_input", sorted(GATE_INPUTS))
def test_bitlinear_base(packed, gate_input):
    torch.manual_seed(1)
    base = BitLinear(48, 33, bias=True)
    if packed:
        base.pack()
    experts = make_experts(48, 33, (4, 2, 6))
    layer = MoLELinear(base, experts, gate_input=gate_input)
    x = torch.randn(3, 48, requires_grad=True)
    y = layer(x)
    want, _ = expected(layer, experts, x)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.gate.weight.grad.abs().sum() > 0
    assert layer.lora_A.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_over_a_packed_base_is_its_read_only_view(dtype):
    torch.manual_seed(2)
    base = BitLinear(48, 33, bias=True, dtype=dtype).pack()
    experts = make_experts(48, 33, (4, 2))
    layer = MoLELinear(base, experts)
    w = layer.weight  # raised AttributeError before packed layers kept a .weight
    assert isinstance(w, PackedTernaryWeight) and w.packed is base.weight_packed and w.scale is base.weight_scale
    assert tuple(w.shape) == (33, 48) and w.dtype == dtype
    q, gamma = base.ternary_weight()
    assert torch.equal(w.dequantize(torch.float32), q.float() * gamma)
    assert layer.bias is base.bias
    # experts over a packed base keep their own dtype (float32 here), whatever dtype its weight reports
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    with pytest.raises(PackedWeightError, match="A LoRA cannot be merged into a packed BitLinear"):
        layer.weight.data += layer.get_delta_weight().to(dtype)


def test_gates_start_near_uniform_and_temperature_positive():
    torch.manual_seed(2)
    for gi in GATE_INPUTS:
        for norm in NORMS:
            layer = MoLELinear(nn.Linear(64, 64), make_experts(64, 64, (8,) * 4), gate_input=gi, norm=norm)
            layer(torch.randn(50, 64) * 3)
            assert (layer.last_gates - 0.25).abs().max() < 0.1, (gi, norm)
    opt = torch.optim.SGD([layer.gate.log_temperature], lr=1.0)
    layer.gate.log_temperature.grad = torch.tensor(40.0)  # a huge step towards tau = 0
    opt.step()
    assert 0 < layer.gate.temperature < 1e-15
    layer(torch.randn(4, 64))
    assert torch.isfinite(layer.last_gates).all()
    with pytest.raises(ValueError, match="temperature_init"):
        MoLELinear(nn.Linear(8, 8), make_experts(8, 8, (2, 2)), temperature_init=0.0)


def test_mask_renormalizes_without_retraining():
    torch.manual_seed(3)
    experts = make_experts(20, 12, (2, 3, 4))
    layer = MoLELinear(nn.Linear(20, 12), experts, gate_input="experts")
    x = torch.randn(7, 20)
    with torch.no_grad():
        layer(x)
        g_all = layer.last_gates.clone()
        layer.set_expert_mask({"e0", "e2"})
        y = layer(x)
        g = layer.last_gates
        m = torch.tensor([1.0, 0.0, 1.0])
        torch.testing.assert_close(g, g_all * m / (g_all * m).sum(-1, keepdim=True))
        want, _ = expected(layer, experts, x, mask=m)
        torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
        layer.set_expert_mask({"e1"})  # one kept: exactly base + E_1
        a, b, s = experts["e1"]
        torch.testing.assert_close(layer(x), layer.base_layer(x) + s * (x @ a.T) @ b.T, atol=1e-5, rtol=1e-5)
        layer.set_expert_mask(None)
        torch.testing.assert_close(layer(x), expected(layer, experts, x)[0], atol=1e-5, rtol=1e-5)


def test_shared_gate_group_reuses_leader_gates():
    torch.manual_seed(4)
    group = GateGroup("block0", ["e0", "e1", "e2"], granularity="block")
    lead = MoLELinear(nn.Linear(16, 24), make_experts(16, 24, (2, 3, 4)), gate_group=group)
    e_f = {k: v for k, v in make_experts(24, 16, (3, 3, 3), seed=9).items() if k != "e1"}  # e1 absent here
    follow = MoLELinear(nn.Linear(24, 16), e_f, gate_group=group)
    assert lead.is_leader and not follow.is_leader and follow.gate is None
    assert lead.expert_names == ("e0", "e1", "e2") and follow.expert_names == ("e0", "e2")
    x = torch.randn(2, 3, 16)
    h = lead(x)
    g = group.gates
    y = follow(h)
    E = torch.stack([s * (h @ a.T) @ b.T for a, b, s in e_f.values()], -2)
    torch.testing.assert_close(y, follow.base_layer(h) + (g[..., [0, 2]].unsqueeze(-1) * E).sum(-2), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="tokens"):
        follow(torch.randn(5, 24))
    group.reset()
    with pytest.raises(RuntimeError, match="leader"):
        follow(h)


def test_single_expert_has_no_gate():
    experts = make_experts(10, 6, (3,))
    layer = MoLELinear(nn.Linear(10, 6), experts)
    assert layer.gate is None
    x = torch.randn(4, 10)
    a, b, s = experts["e0"]
    torch.testing.assert_close(layer(x), layer.base_layer(x) + s * (x @ a.T) @ b.T)
    torch.testing.assert_close(layer.get_delta_weight(), s * b @ a)


def test_state_dict_keys_repr_and_helpers():
    layer = MoLELinear(nn.Linear(12, 8), make_experts(12, 8, (2, 4)), gate_input="experts", norm="layernorm")
    assert set(layer.state_dict()) == {
        "base_layer.weight", "base_layer.bias", "lora_A", "lora_B", "lora_scaling",
        "gate.weight", "gate.norm_weight", "gate.norm_bias", "gate.log_temperature",
    }
    assert layer.lora_A.shape == (2, 4, 12) and layer.lora_B.shape == (2, 8, 4) and layer.gate.weight.shape == (2, 16)
    rms = MoLELinear(nn.Linear(12, 8), make_experts(12, 8, (2, 4)), gate_input="hidden", norm="l2")
    assert rms.gate.weight.shape == (2, 12) and rms.gate.norm_weight is None
    text = repr(layer)
    for part in ("experts=['e0', 'e1']", "ranks={'e0': 2, 'e1': 4}", "gate_input='experts'", "granularity='matrix'"):
        assert part in text
    a, b, s = layer.expert("e0")
    assert a.shape == (2, 12) and b.shape == (8, 2) and s == pytest.approx(1.0)
    gates = torch.tensor([0.25, 0.75])
    w = layer.get_delta_weight(gates)
    x = torch.randn(3, 12)
    torch.testing.assert_close(x @ w.T, layer.mix(x, gates.expand(3, 2)), atol=1e-5, rtol=1e-5)
    clone = copy.deepcopy(layer)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone(x), layer(x))


def test_errors():
    base = nn.Linear(8, 6)
    good = make_experts(8, 6, (2, 2))
    with pytest.raises(ValueError, match="rank 0"):
        MoLELinear(base, {"a": (torch.zeros(0, 8), torch.zeros(6, 0), 1.0), **good})
    with pytest.raises(ValueError, match=r"expert 'bad'.*\(2, 7\)"):
        MoLELinear(base, {"bad": (torch.zeros(2, 7), torch.zeros(6, 2), 1.0)})
    with pytest.raises(ValueError, match="gate_input"):
        MoLELinear(base, good, gate_input="tokens")
    with pytest.raises(ValueError, match="norm"):
        MoLELinear(base, good, norm="batchnorm")
    with pytest.raises(ValueError, match="experts"):
        MoLELinear(base, {})
    with pytest.raises(TypeError, match="base_layer"):
        MoLELinear(nn.ReLU(), good)
    with pytest.raises(TypeError, match="dtype"):
        MoLELinear(base, good)(torch.randn(2, 8, dtype=torch.float64))


def test_op_matches_contract():
    """Whatever implements lmops_kernels.mole_gate agrees with this file's reading of the contract."""
    torch.manual_seed(5)
    n, r, k, o = 3, 4, 19, 11
    args = (torch.randn(6, k), torch.randn(n, r, k), torch.randn(n, o, r), torch.rand(n) + 0.5,
            torch.randn(n, n * o) * 0.1, torch.rand(n * o) + 0.5, torch.randn(n * o) * 0.1, torch.tensor(0.8))
    for norm in NORMS:
        for mask in (None, torch.tensor([True, False, True])):
            nw, nb = (args[5], args[6]) if norm == "layernorm" else (None, None)
            y, g = lk.mole_gate(*args[:5], nw, nb, args[7], mask, norm=norm)
            y0, g0 = reference_mole_gate(*args[:5], nw, nb, args[7], mask, norm=norm)
            torch.testing.assert_close(y, y0, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4)
            assert math.isclose(float(g.sum(-1).mean()), 1.0, rel_tol=1e-5)
