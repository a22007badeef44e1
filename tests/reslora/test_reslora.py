"""``ResLoRALinear``: the is/bs/ms paths against an independent float64 reference, the merges against
the paper's formulas computed here from the recorded norms / merged weights, exact unmerge, and the
BitLinear bases.

A chain is driven by calling its layers in order with the inputs ``xs[0..n-1]`` (what the decoder blocks
of one forward do). Tolerances: float64 ``1e-12`` relative (``atol = 1e-12 * max|ref|``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmops import BitLinear
from lmops.bitnet.layer import PackedTernaryWeight
from lmops.reslora import ESTIMATORS, STRUCTURES, ResLoRALinear

F64 = torch.float64
IN, OUT, R = 13, 7, 3  # odd shapes


def close(got, want, rel=1e-12):
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * max(want.abs().max().item(), 1e-30))


def make_chain(structure, n=4, pre_num=2, *, dtype=F64, base="linear", window=100, seed=0, in_f=IN, out_f=OUT, r=R):
    torch.manual_seed(seed)
    layers, prev = [], None
    for _ in range(n):
        if base == "linear":
            lin = nn.Linear(in_f, out_f, bias=True, dtype=dtype)
        else:
            lin = BitLinear(in_f, out_f, bias=True, dtype=dtype)
            if base == "packed":
                lin.pack()
        lin.requires_grad_(False)
        layer = ResLoRALinear(lin, r=r, alpha=5, structure=structure, pre_num=pre_num, window=window)
        with torch.no_grad():
            layer.lora_B.weight.normal_(0, 0.5)  # B = 0 at init would hide every path
        layer.link(prev)
        layers.append(layer)
        prev = layer
    return layers


def inputs(n, batch=(2, 5), seed=1, dtype=F64, in_f=IN):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*batch, in_f, generator=g, dtype=dtype) for _ in range(n)]


def run(layers, xs):
    return [layer(x) for layer, x in zip(layers, xs)]


def reference(layers, xs, structure, pre_num):
    """The paper's formulas, from the layers' tensors (float64, autograd through the same params)."""
    outs = []
    for n, (layer, x) in enumerate(zip(layers, xs)):
        base = layer.base_layer(x)
        A = [lay.lora_A.weight for lay in layers]
        B = [lay.lora_B.weight for lay in layers]
        s = layer.scaling
        m = n if pre_num is None else min(pre_num, n)
        if structure == "none":
            lora = s * x @ A[n].T @ B[n].T
        elif structure == "is":
            xp = xs[n - 1] if n > 0 else x
            lora = s * (x + xp) @ A[n].T @ B[n].T
        elif structure == "bs":
            lora = sum(s * x @ A[n - k].T @ B[n - k].T for k in range(m + 1))
        else:  # ms
            lora = s * sum(xs[n - k] @ A[n - k].T for k in range(m + 1)) @ B[n].T
        outs.append(base + lora)
    return outs


def lora_params(layers):
    return [p for lay in layers for p in (lay.lora_A.weight, lay.lora_B.weight)]


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("pre_num", [0, 1, 2, None])
def test_forward_and_grads_match_reference(structure, pre_num):
    layers = make_chain(structure, n=4, pre_num=pre_num)
    xs = [x.requires_grad_(True) for x in inputs(4)]
    got, want = run(layers, xs), reference(layers, xs, structure, pre_num)
    for g, w in zip(got, want):
        close(g, w)
    params = lora_params(layers) + xs
    g_got = torch.autograd.grad(sum((o * o.cos()).sum() for o in got), params, allow_unused=True)
    g_want = torch.autograd.grad(sum((o * o.cos()).sum() for o in want), params, allow_unused=True)
    for a, b in zip(g_got, g_want):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            close(a, b)


def test_bs_earlier_adapters_get_gradient_from_later_layers():
    layers = make_chain("bs", n=3, pre_num=2)
    xs = inputs(3)
    layers[0](xs[0])
    layers[1](xs[1])
    out = layers[2](xs[2])
    grads = torch.autograd.grad(out.sum(), [lay.lora_A.weight for lay in layers])
    assert all(g.abs().sum() > 0 for g in grads)


def test_caches_are_per_forward_and_dropped_after_the_tail():
    layers = make_chain("ms", n=3)
    run(layers, inputs(3))
    assert all(lay._cache is None for lay in layers)  # the tail freed them
    layers[0](inputs(1)[0])
    assert layers[0]._cache is not None
    with pytest.raises(RuntimeError, match="same tokens"):
        layers[1](torch.randn(2, 4, IN, dtype=F64))  # a different token count than layer 0 saw
    fresh = make_chain("is", n=2)
    with pytest.raises(RuntimeError, match="did not run"):
        fresh[1](inputs(1)[0])


def test_predecessor_is_not_a_submodule():
    layers = make_chain("bs", n=3)
    keys = set(layers[2].state_dict())
    assert keys == {"base_layer.weight", "base_layer.bias", "lora_A.weight", "lora_B.weight"}
    assert len(list(layers[2].parameters())) == 4
    assert "chain_position=2" in repr(layers[2])


def test_batched_equals_per_sample():
    for structure in ("is", "ms", "bs"):
        layers = make_chain(structure, n=3)
        xs = inputs(3, batch=(3, 4))
        full = run(layers, xs)
        for b in range(3):
            one = run(layers, [x[b : b + 1] for x in xs])
            for f, o in zip(full, one):
                close(o, f[b : b + 1])


# ------------------------------------------------------------------------------------------------
# merges
# ------------------------------------------------------------------------------------------------
def train_forwards(layers, steps=5, seed=10):
    """Training-mode forwards (what records the norms); returns the inputs used per step."""
    for lay in layers:
        lay.train()
    history = []
    for t in range(steps):
        lay0 = layers[0]
        xs = inputs(len(layers), seed=seed + t, dtype=lay0.lora_A.weight.dtype, in_f=lay0.in_features)
        history.append(xs)
        with torch.no_grad():
            run(layers, xs)
    for lay in layers:
        lay.eval()
    return history


@pytest.mark.parametrize("structure", ["bs", "none"])
def test_exact_merges_equal_unmerged_forward(structure):
    layers = make_chain(structure, n=4, pre_num=2)
    xs = inputs(4)
    with torch.no_grad():
        unmerged = run(layers, xs)
        for lay in layers:
            lay.merge()
        merged = run(layers, xs)
    for a, b in zip(merged, unmerged):
        close(a, b)


def _bi_expected(layers, history, structure, pre_num):
    """W*_n = W_n + (1 + alpha*) s B_n A_n, alpha* from window means of |x| (is) or |A x| (ms)."""
    f = []
    for n, lay in enumerate(layers):
        if structure == "is":
            norms = [h[n].norm() for h in history]
        else:
            norms = [(h[n] @ lay.lora_A.weight.T).norm() for h in history]
        f.append(torch.stack(norms).float().mean().item())
    out = []
    for n, lay in enumerate(layers):
        if structure == "is":
            alpha = 1.0 if n == 0 else f[n - 1] / f[n]
        else:
            m = n if pre_num is None else min(pre_num, n)
            alpha = sum(f[n - k] / f[n] for k in range(1, m + 1))
        ba = lay.lora_B.weight @ lay.lora_A.weight
        out.append(lay.base_layer.weight + (1 + alpha) * lay.scaling * ba)
    return out


def _bw_expected(layers, structure, pre_num):
    """alpha* (is) = f*_{n-2} / f*_{n-1}; ms: A*_n = A_n + sum_k r_k A_{n-k}, r_k = f*_{max(n-k-1,0)} / f*_{n-1};
    f*_j = |W*_j|_F, computed head first; layer 1 (no f*_{-1}) uses 1; the is head is exact (2 s B A)."""
    fstar, out = [], []
    for n, lay in enumerate(layers):
        A, B, s, W = lay.lora_A.weight, lay.lora_B.weight, lay.scaling, lay.base_layer.weight
        if structure == "is":
            alpha = 1.0 if n < 2 else fstar[n - 2] / fstar[n - 1]
            w_star = W + (1 + alpha) * s * B @ A
        else:
            m = n if pre_num is None else min(pre_num, n)
            a_star = A.clone()
            for k in range(1, m + 1):
                a_star = a_star + fstar[max(n - k - 1, 0)] / fstar[n - 1] * layers[n - k].lora_A.weight
            w_star = W + s * B @ a_star
        fstar.append(w_star.norm().item())
        out.append(w_star)
    return out


@pytest.mark.parametrize("structure", ["is", "ms"])
@pytest.mark.parametrize("pre_num", [1, 2, None])
def test_bi_merge_is_the_paper_formula(structure, pre_num):
    layers = make_chain(structure, n=4, pre_num=pre_num, window=3)
    history = train_forwards(layers, steps=5)
    assert all(len(lay._norms) == 3 for lay in layers)  # sliding window: the last 3 forwards
    want = _bi_expected(layers, history[-3:], structure, pre_num)
    for lay in layers:
        lay.merge("bi")
    for lay, w in zip(layers, want):
        close(lay.base_layer.weight, w.detach(), rel=1e-6)  # norms are averaged in float32


@pytest.mark.parametrize("structure", ["is", "ms"])
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_bw_merge_is_the_paper_formula_in_any_order(structure, order):
    layers = make_chain(structure, n=5, pre_num=2)
    with torch.no_grad():
        want = _bw_expected(layers, structure, 2)
    for lay in layers if order == "forward" else layers[::-1]:
        lay.merge("bw")
    for lay, w in zip(layers, want):
        close(lay.base_layer.weight, w, rel=1e-6)  # f* ratios are float32


def test_bi_needs_recorded_norms_bw_does_not():
    layers = make_chain("is", n=2)
    with pytest.raises(ValueError, match="no norms recorded"):
        layers[1].merge("bi")
    layers[0].get_delta_weight("bi")  # the head is exact: nothing to estimate
    layers[1].merge("bw")
    with pytest.raises(ValueError, match="estimator"):
        layers[0].merge("xx")


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_unmerge_restores_the_base_weight_bit_identically(structure):
    layers = make_chain(structure, n=3, dtype=torch.float32)
    train_forwards(layers)
    originals = [lay.base_layer.weight for lay in layers]
    copies = [w.detach().clone() for w in originals]
    xs = inputs(3, dtype=torch.float32)
    with torch.no_grad():
        before = run(layers, xs)
        for lay in layers:
            lay.merge()
        assert all(not torch.equal(lay.base_layer.weight, c) for lay, c in zip(layers, copies))
        for lay in layers:
            lay.unmerge()
        after = run(layers, xs)
    for lay, orig, c in zip(layers, originals, copies):
        assert lay.base_layer.weight is orig and torch.equal(orig, c) and not lay.merged
    for a, b in zip(after, before):
        assert torch.equal(a, b)


def test_training_and_eval_never_touch_the_base_weight():
    for structure in sorted(STRUCTURES):
        layers = make_chain(structure, n=3, dtype=torch.float32)
        snap = [(lay.base_layer.weight, lay.base_layer.weight.detach().clone(), lay.base_layer.weight._version)
                for lay in layers]
        opt = torch.optim.SGD(lora_params(layers), lr=0.1)
        for step in range(3):
            for lay in layers:
                lay.train(step < 2)
            out = run(layers, inputs(3, seed=step, dtype=torch.float32))
            if step < 2:
                opt.zero_grad()
                sum(o.square().mean() for o in out).backward()
                opt.step()
        for lay, (w, c, v) in zip(layers, snap):
            assert lay.base_layer.weight is w and torch.equal(w, c) and w._version == v


def test_merge_quality_follows_the_paper_assumption():
    """With correlated inputs (x_n ~= c_n x_{n-1}, the paper's premise) the alpha* merges of is (bi, bw)
    and ms (bw) are closer to the unmerged output than dropping the shortcuts (alpha* = 0)."""
    g = torch.Generator().manual_seed(3)
    for structure, estimators in (("is", ("bi", "bw")), ("ms", ("bw",))):
        layers = make_chain(structure, n=4, pre_num=2)
        for lay in layers:
            lay.train()
        x0 = torch.randn(4, 6, IN, generator=g, dtype=F64)
        xs = [x0 * (1 + 0.1 * k) + 0.05 * torch.randn(x0.shape, generator=g, dtype=F64) for k in range(4)]
        with torch.no_grad():
            run(layers, xs)
            for lay in layers:
                lay.eval()
            want = run(layers, xs)
            plain = [lay.base_layer(x) + lay.scaling * x @ (lay.lora_B.weight @ lay.lora_A.weight).T
                     for lay, x in zip(layers, xs)]
            for est in estimators:
                got = [lay.base_layer(x) + x @ lay.get_delta_weight(est).T for lay, x in zip(layers, xs)]
                for n in range(1, 4):
                    assert (got[n] - want[n]).norm() < 0.5 * (plain[n] - want[n]).norm(), (structure, est, n)


# ------------------------------------------------------------------------------------------------
# BitLinear bases
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["is", "bs", "ms"])
def test_packed_bitlinear_base_trains_but_cannot_merge(structure):
    layers = make_chain(structure, n=3, dtype=torch.float32, base="packed", in_f=64, out_f=32)
    assert all(lay.is_packed_base for lay in layers)
    xs = [x.requires_grad_(True) for x in inputs(3, dtype=torch.float32, in_f=64)]
    for lay in layers:
        lay.train()
    out = run(layers, xs)
    sum(o.square().mean() for o in out).backward()
    for p in lora_params(layers) + xs:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert layers[1].get_delta_weight("bw").shape == (32, 64)
    with pytest.raises(RuntimeError, match="packed BitLinear"):
        layers[0].merge()
    assert not layers[0].merged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_over_a_packed_base_is_its_read_only_view(dtype):
    base = BitLinear(64, 32, bias=True, dtype=dtype).pack()
    layer = ResLoRALinear(base, r=4, structure="none")
    w = layer.weight  # raised AttributeError before packed layers kept a .weight
    assert isinstance(w, PackedTernaryWeight) and w.packed is base.weight_packed and w.scale is base.weight_scale
    assert tuple(w.shape) == (32, 64) and w.dtype == dtype
    q, gamma = base.ternary_weight()
    assert torch.equal(w.dequantize(torch.float32), q.float() * gamma)
    assert layer.bias is base.bias
    # adapters over a packed base: float32 on the base's device, whatever dtype its weight reports
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(5, 64, dtype=dtype)
    want = base(x) + (layer.scaling * x.float() @ (layer.lora_B.weight @ layer.lora_A.weight).T).to(dtype)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_unpacked_bitlinear_merges_into_the_latent_weight():
    layers = make_chain("bs", n=2, dtype=torch.float32, base="bitlinear", in_f=64, out_f=32)
    x = inputs(1, dtype=torch.float32, in_f=64)[0]
    latent = layers[1].base_layer.weight
    delta = layers[1].get_delta_weight()
    layers[1].merge()
    torch.testing.assert_close(layers[1].base_layer.weight, latent + delta)
    ref = BitLinear(64, 32, dtype=torch.float32)
    with torch.no_grad():
        ref.weight.copy_(latent + delta)
        ref.bias.copy_(layers[1].base_layer.bias)
    layers[0](x)
    torch.testing.assert_close(layers[1](x), ref(x))  # merged = BitLinear of W + dW (re-quantized)
    layers[1].unmerge()
    assert layers[1].base_layer.weight is latent


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r": 0}, "r: expected a positive int"),
        ({"r": -2}, "r: expected a positive int"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"structure": "xs"}, "structure"),
        ({"pre_num": -1}, "pre_num"),
        ({"merge_estimator": "b"}, "merge_estimator"),
        ({"window": 0}, "window"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResLoRALinear(nn.Linear(4, 4), **kwargs)


def test_bad_base_and_bad_links():
    with pytest.raises(TypeError, match="base_layer"):
        ResLoRALinear(nn.Conv1d(4, 4, 1))
    a = ResLoRALinear(nn.Linear(8, 4), structure="is")
    with pytest.raises(ValueError, match="must match"):
        ResLoRALinear(nn.Linear(8, 5), structure="is").link(a)
    with pytest.raises(ValueError, match="must match"):
        ResLoRALinear(nn.Linear(8, 4), structure="ms").link(a)
    b = ResLoRALinear(nn.Linear(8, 4), structure="is")
    b.link(a)
    with pytest.raises(ValueError, match="cycle"):
        a.link(b)


def test_init_dtype_and_scaling_like_peft():
    base = nn.Linear(40, 24, dtype=torch.bfloat16)
    layer = ResLoRALinear(base, r=4, alpha=12, structure="none")
    assert layer.lora_A.weight.dtype == torch.bfloat16 and layer.scaling == 3.0
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    bound = math.sqrt(6 / ((1 + 5) * 40))  # kaiming_uniform(a=sqrt(5)) on fan_in=40
    assert layer.lora_A.weight.abs().max().item() <= bound + 1e-3
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    assert torch.equal(layer(x), base(x))  # B = 0: the adapter starts as the identity
    assert set(ESTIMATORS) == {"bi", "bw"} and set(STRUCTURES) == {"none", "is", "bs", "ms"}
