"""mole_gate: every backend against the materializing reference (lmops_kernels/reference/mole.py).

Backends: ``reference``, ``cpu`` (native) and ``triton`` under its interpreter. Triton must see
``TRITON_INTERPRET=1`` before it is imported, so when this process did not start with it (another
test module may have imported triton already), ``test_triton_backend_in_subprocess`` reruns this
file's triton cases in a fresh interpreter with ``TRITON_INTERPRET=1``.

Tolerances (the expected values are the reference in float64 on the same, already rounded, inputs):
- float32 x: ``y`` within ``1e-5 * max|y|`` (+ ``1e-4`` relative), gates within ``2e-6``; gradients
  within ``1e-4 * max|grad|`` (+ ``1e-4`` relative).
- bfloat16/float16 x: ``y`` within one rounding of its dtype, ``2^-7`` / ``2^-10`` of ``max|y|``; gates ``2e-6``.
The hand-derived rank-space backward is also gradchecked in float64 (numerical Jacobians).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch

import lmops_kernels as lk
from lmops_kernels import _native, dispatch, mole_rank
from lmops_kernels.reference.mole import mole_gate as ref_mole_gate

NORMS = ("layernorm", "rmsnorm", "l2")
# (T, K, O, N, r): odd sizes, none a multiple of 16
SHAPES = [
    (1, 7, 5, 1, 1),
    (3, 33, 19, 2, 3),
    (17, 45, 31, 3, 8),
    (3, 20, 13, 5, 1),
    (17, 9, 50, 5, 3),
    (1, 100, 37, 3, 8),
]
# the triton interpreter is slow: its forward runs on these shapes only (its backward is shared code)
TRITON_SHAPES = (SHAPES[1], SHAPES[2], SHAPES[4])
TRITON_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1"


def _backend_params():
    params = [pytest.param("reference", id="reference")]
    cpu_skip = None if _native.available() else f"native extension missing: {_native.missing_reason()}"
    params.append(pytest.param("cpu", id="cpu", marks=[pytest.mark.skip(reason=cpu_skip)] if cpu_skip else []))
    tri_skip = None
    if not TRITON_IN_PROCESS:
        tri_skip = "runs in test_triton_backend_in_subprocess (TRITON_INTERPRET=1 must precede the triton import)"
    else:
        from lmops_kernels.backends import triton as lk_triton

        tri_skip = lk_triton.unavailable("cpu")
    params.append(pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=tri_skip)] if tri_skip else []))
    return params


@pytest.fixture(params=_backend_params())
def backend(request, monkeypatch):
    dispatch.force(request.param)
    assert dispatch.select("mole_gate", "cpu").backend == request.param
    return request.param


def make_inputs(t, k, o, n, r, *, affine=2, masked=False, seed=0, dtype=torch.float32):
    """Random MoLE inputs; ``affine``: 0 no norm affine, 1 weight only, 2 weight and bias.

    Scales keep every expert's output O(1) and the logits O(1), so the gates are far from one-hot.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype)
    lora_A = (torch.randn(n, r, k, generator=g) / k**0.5).to(dtype)
    lora_B = (torch.randn(n, o, r, generator=g) / r**0.5).to(dtype)
    scaling = torch.rand(n, generator=g) + 0.5
    gate_weight = torch.randn(n, n * o, generator=g) * (2.0 / (n * o) ** 0.5)
    norm_weight = 1.0 + 0.3 * torch.randn(n * o, generator=g) if affine >= 1 else None
    norm_bias = 0.1 * torch.randn(n * o, generator=g) if affine >= 2 else None
    temperature = torch.rand((), generator=g) * 1.5 + 0.5
    mask = None
    if masked:
        mask = torch.rand(n, generator=g) < 0.5
        mask[int(torch.randint(0, n, (), generator=g))] = True
    return [x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, mask]


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % 100_000


def ref64(inputs, norm, eps=1e-5):
    args = [None if a is None else (a if a.dtype == torch.bool else a.double()) for a in inputs]
    return ref_mole_gate(*args, norm=norm, eps=eps)


def assert_close_rel(got, want, rel, name, rtol=1e-4, floor=1e-30):
    """``|got - want| <= rel * max(max|want|, floor) + rtol * |want|``."""
    got, want = got.double(), want.double()
    atol = rel * max(want.abs().max().item() if want.numel() else 0.0, floor)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _cases():
    for i, shape in enumerate(SHAPES):
        for norm in NORMS:
            for masked in (False, True):
                yield pytest.param(shape, norm, masked, i % 3, id=f"{'x'.join(map(str, shape))}-{norm}-{'mask' if masked else 'all'}")


# ---------------------------------------------------------------------------------------------
# forward: y and gates against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,norm,masked,affine", list(_cases()))
def test_forward_matches_reference(backend, shape, norm, masked, affine):
    if backend == "triton" and shape not in TRITON_SHAPES:
        pytest.skip("triton interpreter: a subset of the shapes keeps the run short")
    inputs = make_inputs(*shape, affine=affine, masked=masked, seed=_seed(shape, norm, masked))
    y, gates = lk.mole_gate(*inputs, norm=norm)
    y64, g64 = ref64(inputs, norm)
    assert y.dtype == torch.float32 and gates.dtype == torch.float32
    assert y.shape == (shape[0], shape[2]) and gates.shape == (shape[0], shape[3])
    assert_close_rel(y, y64, 1e-5, "y")
    torch.testing.assert_close(gates.double(), g64, rtol=0, atol=2e-6)
    if masked:
        assert (gates[:, ~inputs[-1]] == 0).all()


@pytest.mark.parametrize("t", [1, 5, 7])
def test_forward_decode_sizes(backend, t):
    """Large K and O with few tokens: the native kernel's multi-threaded matrix-vector path (T <= 6)
    splits both weight matrices over the threads; T = 7 takes the GEMM path."""
    if backend == "triton":
        pytest.skip("triton interpreter: large shapes are slow; the cpu decode path is what this checks")
    inputs = make_inputs(t, 3001, 1499, 3, 8, masked=True, seed=_seed("decode", t))
    y, gates = lk.mole_gate(*inputs, norm="rmsnorm")
    y64, g64 = ref64(inputs, "rmsnorm")
    assert_close_rel(y, y64, 1e-5, "y")
    torch.testing.assert_close(gates.double(), g64, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_half_dtypes(backend, dtype):
    inputs = make_inputs(17, 45, 31, 3, 8, dtype=dtype, seed=5)
    inputs[4] = inputs[4].to(dtype)  # gate weight in the same dtype too
    for norm in NORMS:
        y, gates = lk.mole_gate(*inputs, norm=norm)
        y64, g64 = ref64(inputs, norm)
        assert y.dtype == dtype and gates.dtype == torch.float32
        assert_close_rel(y, y64, 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10, f"y {norm}", rtol=0)
        torch.testing.assert_close(gates.double(), g64, rtol=0, atol=2e-6)


def test_leading_dims_and_empty(backend):
    inputs = make_inputs(6, 21, 11, 3, 3, seed=6)
    x = inputs[0]
    y, gates = lk.mole_gate(x.reshape(2, 3, 21), *inputs[1:])
    y2, g2 = lk.mole_gate(*inputs)
    assert y.shape == (2, 3, 11) and gates.shape == (2, 3, 3)
    torch.testing.assert_close(y.reshape(6, 11), y2, rtol=0, atol=0)
    torch.testing.assert_close(gates.reshape(6, 3), g2, rtol=0, atol=0)
    y0, g0 = lk.mole_gate(x[:0], *inputs[1:])
    assert y0.shape == (0, 11) and g0.shape == (0, 3)


@pytest.mark.parametrize("norm", NORMS)
def test_one_hot_mask_gives_that_expert(backend, norm):
    n = 5
    inputs = make_inputs(17, 33, 19, n, 3, seed=7)
    x, lora_A, lora_B, scaling = inputs[:4]
    for keep in (0, 3):
        inputs[-1] = torch.arange(n) == keep
        y, gates = lk.mole_gate(*inputs, norm=norm)
        expert = scaling[keep].double() * ((x.double() @ lora_A[keep].double().T) @ lora_B[keep].double().T)
        assert torch.equal(gates, (torch.arange(n) == keep).float().expand(17, n))
        assert_close_rel(y, expert, 1e-5, "y")


def test_weight_cache_sees_in_place_updates(backend):
    inputs = make_inputs(3, 33, 19, 3, 8, seed=8)
    y1, g1 = lk.mole_gate(*inputs)
    with torch.no_grad():
        inputs[4].mul_(-2.0)  # gate weight, as an optimizer step would
        inputs[2][1].mul_(3.0)  # an expert's B
    y2, g2 = lk.mole_gate(*inputs)
    y64, g64 = ref64(inputs, "layernorm")
    assert not torch.allclose(g1, g2)
    assert_close_rel(y2, y64, 1e-5, "y")
    torch.testing.assert_close(g2.double(), g64, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------

_GRAD_NAMES = ("x", "gate_weight", "norm_weight", "norm_bias", "temperature")
_GRAD_INDEX = (0, 4, 5, 6, 7)


def _grads(fn, inputs, gy, gg):
    leaves = [inputs[i] for i in _GRAD_INDEX]
    for t in leaves:
        if t is not None:
            t.requires_grad_(True)
    y, gates = fn(inputs)
    present = [t for t in leaves if t is not None]
    out = torch.autograd.grad((y.double() * gy).sum() + (gates.double() * gg).sum(), present)
    it = iter(out)
    return [None if t is None else next(it) for t in leaves]


@pytest.mark.parametrize("shape,norm,masked,affine", [c for i, c in enumerate(_cases()) if i % 5 == 0 or i % 7 == 3])
def test_backward_matches_reference_autograd(backend, shape, norm, masked, affine):
    if backend == "triton" and shape not in TRITON_SHAPES:
        pytest.skip("triton interpreter: a subset of the shapes keeps the run short")
    inputs = make_inputs(*shape, affine=affine, masked=masked, seed=_seed(shape, norm, masked, 1))
    g = torch.Generator().manual_seed(9)
    gy = torch.randn(shape[0], shape[2], generator=g, dtype=torch.float64)
    gg = torch.randn(shape[0], shape[3], generator=g, dtype=torch.float64)
    want = _grads(lambda a: ref64(a, norm), [None if t is None else t.clone() for t in inputs], gy, gg)
    got = _grads(lambda a: lk.mole_gate(*a, norm=norm), inputs, gy, gg)
    for name, w, h in zip(_GRAD_NAMES, want, got):
        if w is None:
            assert h is None
            continue
        assert h.dtype == torch.float32 and h.shape == w.shape, name
        # floor: a gradient that is exactly zero (one kept expert: constant gates) comes out as float32 noise
        assert_close_rel(h, w, 1e-4, f"grad {name}", floor=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_input_edge(backend, norm):
    """x = 0: every feature is 0 (l2 takes its eps branch, which passes no gradient through the norm)."""
    inputs = make_inputs(3, 9, 7, 3, 2, seed=15)
    inputs[0] = torch.zeros_like(inputs[0])
    g = torch.Generator().manual_seed(16)
    gy = torch.randn(3, 7, generator=g, dtype=torch.float64)
    gg = torch.randn(3, 3, generator=g, dtype=torch.float64)
    want = _grads(lambda a: ref64(a, norm), [None if t is None else t.clone() for t in inputs], gy, gg)
    got = _grads(lambda a: lk.mole_gate(*a, norm=norm), inputs, gy, gg)
    for name, w, h in zip(_GRAD_NAMES, want, got):
        assert torch.isfinite(h).all(), name
        assert_close_rel(h, w, 1e-4, f"grad {name}", floor=1e-5)


class _RankSpaceFn(torch.autograd.Function):
    """The rank-space forward with the hand-derived backward, for float64 gradcheck."""

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, mask, norm):
        y, gates = mole_rank.forward(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, mask, norm)
        ctx.save_for_backward(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, mask, gates)
        ctx.norm = norm
        return y, gates

    @staticmethod
    def backward(ctx, gy, gg):
        x, a, b, s, gw, nw, nb, tau, mask, gates = ctx.saved_tensors
        n = ctx.needs_input_grad
        gx, gw_, gnw, gnb, gtau = mole_rank.backward(
            gy, gg, gates, x, a, b, s, gw, nw, nb, tau, mask, ctx.norm, 1e-5, (n[0], n[4], n[5], n[6], n[7])
        )
        return gx, None, None, None, gw_, gnw, gnb, gtau, None, None


@pytest.mark.parametrize("norm,masked", [("layernorm", True), ("rmsnorm", False), ("l2", True)])
def test_rank_space_backward_gradcheck_float64(norm, masked):
    inputs = make_inputs(3, 7, 5, 3, 2, masked=masked, seed=10)
    args = [None if t is None else (t if t.dtype == torch.bool else t.double()) for t in inputs]
    for i in _GRAD_INDEX:
        args[i].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: _RankSpaceFn.apply(*a, norm), args, atol=1e-7, rtol=1e-5, fast_mode=True)
    # and the rank-space forward is the reference's function
    for got, want in zip(mole_rank.forward(*args, norm=norm), ref_mole_gate(*args, norm=norm)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_frozen_experts_and_unused_outputs():
    inputs = make_inputs(3, 9, 7, 2, 3, seed=11)
    inputs[1].requires_grad_(True)
    with pytest.raises(ValueError, match=r"^lora_A: requires grad, but mole_gate treats the LoRA experts as frozen"):
        lk.mole_gate(*inputs)
    with torch.no_grad():
        lk.mole_gate(*inputs)  # fine without grad
    inputs[1].requires_grad_(False)
    inputs[0].requires_grad_(True)
    y, _ = lk.mole_gate(*inputs)
    (gx,) = torch.autograd.grad(y.sum(), [inputs[0]])  # gates unused
    assert gx.shape == inputs[0].shape and torch.isfinite(gx).all()


# ---------------------------------------------------------------------------------------------
# opcheck, torch.compile, dispatcher
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked,affine,norm", [(False, 2, "layernorm"), (True, 0, "l2"), (True, 1, "rmsnorm")])
def test_opcheck(backend, masked, affine, norm):
    if backend == "triton" or (backend == "reference" and masked):
        pytest.skip("opcheck: the schema, fake and backward are shared; one reference case and the cpu cases cover them")
    inputs = make_inputs(5, 21, 11, 3, 3, affine=affine, masked=masked, seed=12)
    for i in _GRAD_INDEX:
        if inputs[i] is not None:
            inputs[i].requires_grad_(True)
    torch.library.opcheck(torch.ops.lmops.mole_gate.default, (*inputs, norm, 1e-5))


@pytest.mark.parametrize("affine", [0, 2])
def test_opcheck_weight_cache_and_backward_ops(native_required, affine):
    """The two ops behind mole_gate: the cached weight-only tensors (equal to mole_rank's plain-torch
    definition) and the rank-space backward (equal to autograd through the reference)."""
    x, a, b, s, gw, nw, nb, tau, mask = make_inputs(5, 21, 11, 3, 3, affine=affine, masked=True, seed=14)
    torch.library.opcheck(torch.ops.lmops.mole_gate_weights.default, (a, b, gw, nw, nb))
    got = torch.ops.lmops.mole_gate_weights(a, b, gw, nw, nb)
    ex, gt = mole_rank.expert_tensors(a, b), mole_rank.gate_tensors(b, gw, nw, nb)
    for g, w in zip(got, (ex.wy, ex.b1, ex.gram, gt.p, gt.c, gt.d)):
        torch.testing.assert_close(g, w)
    y, gates = ref_mole_gate(x, a, b, s, gw, nw, nb, tau, mask, norm="layernorm")
    gy, gg = torch.randn_like(y), torch.randn_like(gates)
    args = (gy, gg, gates, x, a, b, s, gw, nw, nb, tau, mask, "layernorm", 1e-5, [True, True, affine > 0, affine > 1, True])
    torch.library.opcheck(torch.ops.lmops.mole_gate_backward.default, args)
    leaves = [t.detach().requires_grad_() for t in (x, gw, tau)]
    y2, g2 = ref_mole_gate(leaves[0], a, b, s, leaves[1], nw, nb, leaves[2], mask, norm="layernorm")
    want = torch.autograd.grad((y2 * gy).sum() + (g2 * gg).sum(), leaves)
    gx, gwg, _, _, gtau = torch.ops.lmops.mole_gate_backward(*args)
    for g, w in zip((gx, gwg, gtau), want):
        torch.testing.assert_close(g, w.reshape(g.shape), rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_forward_backward(monkeypatch):
    dispatch.force(None)
    inputs = make_inputs(4, 21, 11, 3, 3, masked=True, seed=13)

    def f(x, a, b, s, gw, nw, nb, tau, mask):
        y, gates = lk.mole_gate(x.reshape(2, 2, -1), a, b, s, gw, nw, nb, tau, mask, norm="rmsnorm")
        return (y * y).sum() + (gates * torch.arange(3.0)).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [inputs[i] for i in _GRAD_INDEX]
    for t in leaves:
        t.requires_grad_(True)
    want = f(*inputs)
    want_g = torch.autograd.grad(want, leaves)
    got = compiled(*inputs)
    got_g = torch.autograd.grad(got, leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b)


def test_dispatch(monkeypatch):
    dispatch.force(None)
    want = "cpu" if _native.available() else "reference"
    assert dispatch.select("mole_gate", "cpu").backend == want
    from lmops_kernels.backends import triton as lk_triton

    if not TRITON_IN_PROCESS:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        assert "TRITON_INTERPRET=1" in lk_triton.unavailable("cpu")
        dispatch.force("triton")
        with pytest.raises(RuntimeError, match=r"LMOPS_BACKEND=triton: the triton backend of 'mole_gate' is unavailable"):
            lk.mole_gate(*make_inputs(2, 5, 3, 2, 1))


@pytest.mark.skipif(TRITON_IN_PROCESS, reason="this process runs the triton cases itself")
def test_triton_backend_in_subprocess():
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    # the subprocess imports the same lmops_kernels as this one, installed or not (pytest's cwd is here)
    root = os.path.dirname(os.path.dirname(os.path.abspath(lk.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", LMOPS_BACKEND="triton", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", "triton", "-W", "ignore"],
        env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__),
    )
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail


# ---------------------------------------------------------------------------------------------
# errors at the op boundary
# ---------------------------------------------------------------------------------------------


def test_boundary_errors():
    x, a, b, s, gw, nw, nb, tau, _ = make_inputs(3, 9, 7, 2, 3, seed=14)

    def call(**kw):
        args = dict(x=x, lora_A=a, lora_B=b, scaling=s, gate_weight=gw, norm_weight=nw, norm_bias=nb, temperature=tau)
        opts = {k: kw.pop(k) for k in ("norm", "eps") if k in kw}
        args.update(kw)
        return lk.mole_gate(**args, **opts)

    with pytest.raises(ValueError, match=r"^expert_mask: expected at least one kept expert"):
        call(expert_mask=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^expert_mask: expected a bool tensor of shape \(2,\).*int64"):
        call(expert_mask=torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^expert_mask: expected a bool tensor of shape \(2,\).*\(3,\)"):
        call(expert_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^lora_A: expected shape \(N, r, in_features=9\).*got \(2, 3, 8\)"):
        call(lora_A=a[:, :, :8])
    with pytest.raises(ValueError, match=r"^lora_B: expected shape \(N=2, out_features, r=3\).*got \(3, 7, 3\)"):
        call(lora_B=torch.randn(3, 7, 3))
    with pytest.raises(ValueError, match=r"^lora_B: expected shape \(N=2, out_features, r=3\).*got \(2, 7, 4\)"):
        call(lora_B=torch.randn(2, 7, 4))
    with pytest.raises(ValueError, match=r"^scaling: expected a floating tensor of shape \(2,\)"):
        call(scaling=torch.ones(3))
    with pytest.raises(ValueError, match=r"^gate_weight: expected shape \(2, 14\), got \(2, 13\)"):
        call(gate_weight=gw[:, :13])
    with pytest.raises(ValueError, match=r"^norm_weight: expected shape \(14,\), got \(7,\)"):
        call(norm_weight=nw[:7])
    with pytest.raises(ValueError, match=r"^norm_bias: expected shape \(14,\), got \(1, 14\)"):
        call(norm_bias=nb[None])
    with pytest.raises(ValueError, match=r"^temperature: expected a floating tensor of shape \(\) or \(1,\).*\(2,\)"):
        call(temperature=torch.ones(2))
    with pytest.raises(ValueError, match=r"^temperature: expected > 0, got 0.0"):
        call(temperature=torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"^temperature: expected > 0, got -1.0"):
        call(temperature=torch.tensor([-1.0]))
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 or float16, got torch.float64"):
        call(x=x.double())
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor"):
        call(x=x.tolist())
    with pytest.raises(ValueError, match=r"^x: expected shape \(\.\.\., in_features\)"):
        call(x=torch.randn(3, 0))
    with pytest.raises(TypeError, match=r"^gate_weight: expected float32, bfloat16 or float16, got torch.int64"):
        call(gate_weight=gw.long())
    with pytest.raises(ValueError, match=r"^norm: expected one of"):
        call(norm="batchnorm")
    with pytest.raises(ValueError, match=r"^eps: expected a positive finite float, got 0"):
        call(eps=0)
    assert call(norm_weight=None, norm_bias=None, temperature=torch.tensor([2.0]))[0].shape == (3, 7)
