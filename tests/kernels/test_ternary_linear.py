"""W2A8 ternary matmul and linear: every CPU implementation against the formula, bit for bit.

``cpu_impl`` (conftest.py) runs each test once per implementation this machine has: the plain-torch
reference and the native kernels under each ``LMOPS_CPU_ISA`` (scalar, avx2, avx512vnni).

Tolerances:
- forward (integer product, float32/bfloat16/float16 outputs): exact, ``torch.equal``. The
  expected value is written out here from the formula with the same float32 operations in the
  same order (int32 accumulation is exact, so any order of the sum gives the same integer).
- backward (STE, computed in the input's dtype): against float64, ``rtol = atol_rel = 1e-5`` in
  float32, ``2e-2`` in bfloat16/float16, where ``atol = atol_rel * max |expected|``.
"""

from __future__ import annotations

import functools
import pathlib

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmops_kernels as lk
from kernel_data import random_activations, random_int8, random_ternary
from lmops_kernels import _native, dispatch

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
MS = [1, 2, 3, 5, 8, 17, 65, 130]
KS = [1, 15, 17, 33, 100, 1000, 4000]
NS = [1, 7, 9, 13, 100, 1000]
HYPOTHESIS_FIXTURES = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def spec_linear(x, q, gamma, bias=None):
    """y = (Q(x) @ q^T) * (gamma / s) + bias; Q = per-row absmax int8; float32 epilogue."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    s = x2.abs().amax(-1, keepdim=True).clamp(min=1e-5).reciprocal() * 127  # as torch evaluates 127 / amax
    x_q = (x2 * s).round().clamp(-128, 127)
    acc = (x_q.double() @ q.double().t()).to(torch.int32)  # exact: |acc| <= 128 K < 2^53
    y = acc.float() * (gamma.float().reshape(1, 1) / s)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


@functools.lru_cache(maxsize=64)
def packed_weights(n, k, seed):
    """(q, packed, gamma), cached across the implementations under test (never modified)."""
    gen = torch.Generator().manual_seed(seed)
    q = random_ternary(n, k, gen)
    gamma = torch.rand((), generator=gen) * 0.05 + 0.005
    return q, lk.pack_ternary(q), gamma


def assert_selected(op, backend):
    assert dispatch.select(op, "cpu").backend == backend


# ---------------------------------------------------------------------------------------------
# ternary_matmul_int: exact integer product
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
def test_matmul_int_exact(cpu_impl, k, n):
    backend, isa = cpu_impl
    assert_selected("ternary_matmul_int", backend)
    q, packed, _ = packed_weights(n, k, seed=1000 * k + n)
    gen = torch.Generator().manual_seed(k + n)
    # the reference unpacks the whole matrix per call, the scalar kernel is slow: fewer row counts there
    if backend == "reference":
        ms = [1, 3, 17, 130]
    elif isa == "scalar" and k * n > 1_000_000:
        ms = [1, 2, 3, 5, 17, 130]
    else:
        ms = MS
    xs = [random_int8(m, k, gen) for m in ms]
    want_all = (torch.cat(xs).double() @ q.double().t()).to(torch.int32)
    for x, want in zip(xs, want_all.split(ms)):
        got = lk.ternary_matmul_int(x, packed)
        assert got.dtype == torch.int32 and got.shape == want.shape
        assert torch.equal(got, want), f"M={x.shape[0]} K={k} N={n}: {int((got != want).sum())} entries differ"


@settings(max_examples=30, **HYPOTHESIS_FIXTURES)
@given(m=st.integers(1, 140), k=st.integers(1, 600), n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_matmul_int_exact_random_shapes(cpu_impl, m, k, n, seed):
    q, packed, _ = packed_weights(n, k, seed)
    x = random_int8(m, k, torch.Generator().manual_seed(seed + 1))
    assert torch.equal(lk.ternary_matmul_int(x, packed), (x.double() @ q.double().t()).to(torch.int32))


@pytest.mark.parametrize("xv", [-128, 127])
@pytest.mark.parametrize("qv", [-1, 1])
@pytest.mark.parametrize("m,k", [(5, 4000), (1, 40003), (2, 40003)])
def test_matmul_int_extreme_values(cpu_impl, xv, qv, m, k):
    """Largest partial sums (|x| = 128 against all +-1): no int16 saturation (AVX2) and no int32
    overflow of the decode path's per-bit-pair accumulators (which hold 64 x their share)."""
    n = 19
    x = torch.full((m, k), xv, dtype=torch.int8)
    packed = lk.pack_ternary(torch.full((n, k), qv, dtype=torch.int8))
    got = lk.ternary_matmul_int(x, packed)
    assert torch.equal(got, torch.full((m, n), xv * qv * k, dtype=torch.int32))


def test_matmul_int_non_contiguous_x(cpu_impl):
    q, packed, _ = packed_weights(13, 100, seed=5)
    x = random_int8(100, 9, torch.Generator().manual_seed(6)).t()
    assert not x.is_contiguous()
    assert torch.equal(lk.ternary_matmul_int(x, packed), (x.double() @ q.double().t()).to(torch.int32))


def test_matmul_int_empty_m(cpu_impl):
    _, packed, _ = packed_weights(9, 33, seed=7)
    out = lk.ternary_matmul_int(torch.empty(0, 33, dtype=torch.int8), packed)
    assert out.shape == (0, 9) and out.dtype == torch.int32


# ---------------------------------------------------------------------------------------------
# ternary_linear forward: exact against the formula
# ---------------------------------------------------------------------------------------------

LINEAR_SHAPES = [(1, 1, 1), (2, 15, 7), (3, 17, 9), (5, 33, 13), (8, 100, 100), (17, 1000, 9),
                 (65, 100, 1000), (130, 4000, 13), (1, 4000, 1000), (130, 1000, 100)]


@pytest.mark.parametrize("m,k,n", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_exact(cpu_impl, m, k, n, dtype):
    backend, _ = cpu_impl
    assert_selected("ternary_linear", backend)
    q, packed, gamma = packed_weights(n, k, seed=m * 7919 + k * 31 + n)
    gen = torch.Generator().manual_seed(m + k + n)
    x = random_activations((m, k), dtype, gen)
    bias_same = torch.randn(n, generator=gen).to(dtype)
    bias_f32 = torch.randn(n, generator=gen)
    for bias in (None, bias_same, bias_f32):
        y = lk.ternary_linear(x, packed, gamma, bias)
        assert y.dtype == dtype and y.shape == (m, n)
        want = spec_linear(x, q, gamma, bias)
        assert torch.equal(y, want), f"{dtype} bias={bias is not None}: {int((y != want).sum())} of {y.numel()} differ"


@settings(max_examples=25, **HYPOTHESIS_FIXTURES)
@given(
    lead=st.lists(st.integers(1, 6), min_size=0, max_size=2).map(tuple),
    k=st.integers(1, 400),
    n=st.integers(1, 200),
    dtype=st.sampled_from(FLOATS),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_exact_random_shapes(cpu_impl, lead, k, n, dtype, with_bias, seed):
    q, packed, gamma = packed_weights(n, k, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = random_activations((*lead, k), dtype, gen)
    bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
    y = lk.ternary_linear(x, packed, gamma, bias)
    assert y.shape == (*lead, n)
    assert torch.equal(y, spec_linear(x, q, gamma, bias))


def test_linear_3d_and_non_contiguous(cpu_impl):
    q, packed, gamma = packed_weights(13, 100, seed=11)
    gen = torch.Generator().manual_seed(12)
    x3 = random_activations((3, 5, 100), torch.float32, gen)
    assert torch.equal(lk.ternary_linear(x3, packed, gamma), spec_linear(x3, q, gamma))
    variants = {
        "transposed": random_activations((100, 7), torch.float32, gen).t(),
        "strided rows": random_activations((14, 100), torch.float32, gen)[::2],
        "strided cols": random_activations((6, 200), torch.float32, gen)[:, ::2],
        "permuted 3-D": random_activations((5, 100, 3), torch.float32, gen).permute(0, 2, 1),
        "expanded": random_activations((1, 100), torch.float32, gen).expand(4, 100),
    }
    for name, x in variants.items():
        assert not x.is_contiguous(), name
        y = lk.ternary_linear(x, packed, gamma)
        assert torch.equal(y, lk.ternary_linear(x.contiguous(), packed, gamma)), name
        assert torch.equal(y, spec_linear(x.contiguous(), q, gamma)), name


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_linear_empty_leading_dims(cpu_impl, lead):
    _, packed, gamma = packed_weights(9, 33, seed=13)
    x = torch.randn(*lead, 33)
    y = lk.ternary_linear(x, packed, gamma, torch.randn(9))
    assert y.shape == (*lead, 9) and y.dtype == torch.float32


@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_non_finite_rows(cpu_impl, dtype):
    q, packed, gamma = packed_weights(21, 50, seed=14)
    x = random_activations((4, 50), dtype, torch.Generator().manual_seed(15))
    clean = x.clone()
    x[1, 3] = float("nan")
    x[2, 49] = float("inf")
    y = lk.ternary_linear(x, packed, gamma)
    assert bool(y[1:3].isnan().all())
    assert torch.equal(y[[0, 3]], spec_linear(clean[[0, 3]], q, gamma))


def test_linear_weight_scale_forms(cpu_impl):
    q, packed, gamma = packed_weights(9, 40, seed=16)
    x = random_activations((3, 40), torch.float32, torch.Generator().manual_seed(17))
    want = spec_linear(x, q, gamma)
    for ws in (gamma.reshape(1), gamma.reshape(1, 1), gamma.double()):
        assert torch.equal(lk.ternary_linear(x, packed, ws), want)


# ---------------------------------------------------------------------------------------------
# backward: straight-through estimator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 100), (1, 1000)])
def test_linear_backward_ste(cpu_impl, dtype, tol, shape):
    k, n = shape[-1], 13
    q, packed, gamma = packed_weights(n, k, seed=k + n)
    gen = torch.Generator().manual_seed(sum(shape))
    x = random_activations(shape, dtype, gen).requires_grad_()
    bias = torch.randn(n, generator=gen).to(dtype).requires_grad_()
    y = lk.ternary_linear(x, packed, gamma, bias)
    grad_y = torch.randn(y.shape, generator=gen).to(dtype)
    y.backward(grad_y)

    # STE: dQ(x)/dx := I, so grad_x = grad_y @ (q * gamma); grad_bias = sum of grad_y over tokens
    gy64 = grad_y.double()
    want_x = gy64 @ (q.double() * gamma.double())
    want_b = gy64.reshape(-1, n).sum(0)
    for got, want in ((x.grad, want_x), (bias.grad, want_b)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_linear_backward_without_bias_and_only_bias(cpu_impl):
    q, packed, gamma = packed_weights(9, 20, seed=18)
    x = random_activations((4, 20), torch.float32, torch.Generator().manual_seed(19))
    bias = torch.randn(9, requires_grad=True)
    lk.ternary_linear(x, packed, gamma, bias).sum().backward()  # x needs no grad
    torch.testing.assert_close(bias.grad, torch.full((9,), 4.0))
    x.requires_grad_()
    lk.ternary_linear(x, packed, gamma).sum().backward()
    torch.testing.assert_close(x.grad.double(), (q.double() * gamma.double()).sum(0).expand(4, 20), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck, torch.compile
# ---------------------------------------------------------------------------------------------


def _opcheck_cases():
    gen = torch.Generator().manual_seed(20)
    q = random_ternary(13, 33, gen)
    packed = lk.pack_ternary(q)
    x = random_activations((5, 33), torch.float32, gen)
    return {
        "quantize_weight_absmean": (torch.randn(13, 33, generator=gen),),
        "quantize_activation_absmax": (random_activations((2, 3, 33), torch.bfloat16, gen), 4),
        "pack_ternary": (q,),
        "unpack_ternary": (packed, 13, 33),
        "to_hf_bitnet": (q,),
        "from_hf_bitnet": (lk.to_hf_bitnet(q), 13),
        "ternary_matmul_int": (random_int8(5, 33, gen), packed),
        "ternary_linear": (x.requires_grad_(), packed, torch.tensor(0.02), torch.randn(13, generator=gen).requires_grad_()),
        "convert_layout": (packed, "tiled", "planes"),
        "ternary_linear_backward": (random_activations((5, 13), torch.float32, gen), packed, torch.tensor(0.02), 33, "tiled"),
        "ternary_linear_multi": (random_activations((2, 3, 33), torch.bfloat16, gen), [packed, packed[:5]],
                                 [torch.tensor(0.02), torch.tensor([0.5])], [None, torch.randn(5, generator=gen)], "tiled"),
    }


def test_opcheck_covers_every_op():
    """Every lmops op passes opcheck: the BitNet ops here, any other op in the test file of its op family
    (test_<op>.py, where an op's helper ops ``<op>_weights``/``<op>_backward`` belong to ``<op>``)."""
    from lmops_kernels.ops import SCHEMAS

    assert set(_opcheck_cases()) <= set(SCHEMAS) and set(dispatch.ops()) <= set(SCHEMAS)
    assert all(hasattr(torch.ops.lmops, op) for op in SCHEMAS)
    here = pathlib.Path(__file__).parent
    for op in sorted(set(SCHEMAS) - set(_opcheck_cases())):
        family = op.removesuffix("_weights").removesuffix("_backward")
        own = here / f"test_{family}.py"
        assert own.exists() and "opcheck" in own.read_text(), f"lmops::{op} has no opcheck test"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op", sorted(_opcheck_cases()))
def test_opcheck(use_backend, op, backend):
    if backend == "cpu" and not _native.available():
        pytest.skip(f"native extension missing: {_native.missing_reason()}")
    use_backend(backend)
    torch.library.opcheck(getattr(torch.ops.lmops, op).default, _opcheck_cases()[op])


def test_opcheck_ternary_linear_3d_bf16(native_required):
    q = random_ternary(9, 17, torch.Generator().manual_seed(21))
    x = random_activations((2, 3, 17), torch.bfloat16, torch.Generator().manual_seed(22)).requires_grad_()
    torch.library.opcheck(torch.ops.lmops.ternary_linear.default, (x, lk.pack_ternary(q), torch.tensor(0.1), None))


def test_compile_fullgraph_ops_equal_eager():
    q, packed, gamma = packed_weights(37, 100, seed=23)
    gen = torch.Generator().manual_seed(24)
    x = random_activations((2, 5, 100), torch.float32, gen)
    bias = torch.randn(37, generator=gen)
    w = torch.randn(37, 100, generator=gen)

    def f(x, packed, gamma, bias, w):
        y = lk.ternary_linear(x, packed, gamma, bias)
        y_q, s = lk.quantize_activation_absmax(y, 4)
        w_q, w_scale = lk.quantize_weight_absmean(w)
        acc = lk.ternary_matmul_int(y_q.reshape(-1, 37), lk.pack_ternary(w_q.t().contiguous()))
        return y, y_q, s, w_q, w_scale, acc

    compiled = torch.compile(f, fullgraph=True)
    for got, want in zip(compiled(x, packed, gamma, bias, w), f(x, packed, gamma, bias, w)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_compile_fullgraph_packed_bitlinear_equal_eager():
    from lmops import BitLinear

    torch.manual_seed(25)
    layer = BitLinear(100, 37, bias=True).pack()
    x = random_activations((3, 4, 100), torch.float32, torch.Generator().manual_seed(26))
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


# ---------------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------------


def test_dispatch_forced_backends(use_backend, native_required):
    use_backend("reference")
    for op in dispatch.ops():
        assert dispatch.select(op, "cpu").backend == "reference"
    use_backend("cpu")
    for op in ("ternary_linear", "ternary_matmul_int", "quantize_activation_absmax"):
        assert dispatch.select(op, "cpu").backend == "cpu"
    # ops whose only implementation is the reference keep it whatever is forced
    for op in ("pack_ternary", "unpack_ternary", "quantize_weight_absmean", "to_hf_bitnet", "from_hf_bitnet"):
        assert dispatch.select(op, "cpu").backend == "reference"
    use_backend(None)
    assert dispatch.select("ternary_linear", "cpu").backend == "cpu"  # automatic: cpu before reference
    use_backend("auto")
    assert dispatch.select("ternary_linear", "cpu").backend == "cpu"


@pytest.mark.parametrize("forced", ["cuda", "triton"])
def test_dispatch_unavailable_backend_raises(use_backend, monkeypatch, forced):
    _, packed, gamma = packed_weights(9, 33, seed=27)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # with the interpreter on, Triton really runs on CPU
    use_backend(forced)
    with pytest.raises(RuntimeError, match=f"LMOPS_BACKEND={forced}.*{forced}"):
        lk.ternary_linear(torch.randn(2, 33), packed, gamma)
    with pytest.raises(RuntimeError, match=f"LMOPS_BACKEND={forced}"):
        dispatch.select("ternary_matmul_int", "cpu")


def test_dispatch_unknown_backend_raises():
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'tpu'"):
        dispatch.force("tpu")
    assert dispatch.forced_backend() is None  # nothing changed
    # LMOPS_BACKEND is read once, at import: a wrong name fails there, naming the variable
    env = dict(os.environ, LMOPS_BACKEND="tpu")
    proc = subprocess.run([sys.executable, "-c", "import lmops_kernels"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "LMOPS_BACKEND: expected one of" in proc.stderr and "'tpu'" in proc.stderr


def test_native_isa_errors(native_required):
    # a bad ISA is refused when it is set, and the kernels keep the one they had
    before = _native.cpu_isa()
    with pytest.raises(ValueError, match=r"isa: expected one of auto, scalar, avx2, avx512vnni"):
        _native.set_cpu_isa("sse9")
    assert _native.cpu_isa() == before
    if not _native.cpu_features()["avx512vnni"]:
        with pytest.raises(ValueError, match=r"'avx512vnni' is not supported by this CPU"):
            _native.set_cpu_isa("avx512vnni")
    # LMOPS_CPU_ISA is read at import: a bad name fails there, naming the ISA
    env = dict(os.environ, LMOPS_CPU_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "import lmops_kernels"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "isa: expected one of" in proc.stderr


# ---------------------------------------------------------------------------------------------
# errors at the op boundary
# ---------------------------------------------------------------------------------------------


def test_linear_boundary_errors():
    _, packed, gamma = packed_weights(9, 33, seed=30)
    x = torch.randn(2, 33)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 or float16, got torch.float64"):
        lk.ternary_linear(x.double(), packed, gamma)
    with pytest.raises(TypeError, match=r"^x: expected float32.*torch.int8"):
        lk.ternary_linear(x.to(torch.int8), packed, gamma)
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor"):
        lk.ternary_linear(x.tolist(), packed, gamma)
    with pytest.raises(ValueError, match=r"^x: expected shape \(\.\.\., in_features\)"):
        lk.ternary_linear(torch.randn(2, 0), packed, gamma)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(9, 12\) .*in_features=33.*got \(9, 8\)"):
        lk.ternary_linear(x, packed[:, :8].contiguous(), gamma)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(9, 4\) .*in_features=16"):
        lk.ternary_linear(torch.randn(2, 16), packed, gamma)
    with pytest.raises(TypeError, match=r"^packed: expected uint8"):
        lk.ternary_linear(x, packed.to(torch.int8), gamma)
    with pytest.raises(ValueError, match=r"^weight_scale: expected a one-element floating tensor.*\(2,\)"):
        lk.ternary_linear(x, packed, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"^weight_scale: expected a one-element floating tensor.*int64"):
        lk.ternary_linear(x, packed, torch.tensor(1))
    with pytest.raises(ValueError, match=r"^bias: expected a floating tensor of shape \(9,\).*\(8,\)"):
        lk.ternary_linear(x, packed, gamma, torch.randn(8))
    with pytest.raises(ValueError, match=r"^bias: expected a floating tensor of shape \(9,\).*\(1, 9\)"):
        lk.ternary_linear(x, packed, gamma, torch.randn(1, 9))
    with pytest.raises(ValueError, match=r"^bias: expected a floating tensor.*int32"):
        lk.ternary_linear(x, packed, gamma, torch.ones(9, dtype=torch.int32))


def test_linear_device_mismatch():
    """A meta tensor stands in for a second device: the mismatch is named, nothing is moved."""
    _, packed, gamma = packed_weights(9, 33, seed=31)
    x = torch.randn(2, 33)
    with pytest.raises(ValueError, match=r"^packed is on meta but x is on cpu"):
        lk.ternary_linear(x, packed.to("meta"), gamma)
    with pytest.raises(ValueError, match=r"^bias is on meta but x is on cpu"):
        lk.ternary_linear(x, packed, gamma, torch.randn(9, device="meta"))
    with pytest.raises(ValueError, match=r"^packed is on meta but x_q is on cpu"):
        lk.ternary_matmul_int(random_int8(2, 33, torch.Generator().manual_seed(0)), packed.to("meta"))


def test_matmul_int_boundary_errors():
    _, packed, _ = packed_weights(9, 33, seed=32)
    with pytest.raises(TypeError, match=r"^x_q: expected a 2-D int8 tensor.*torch.float32"):
        lk.ternary_matmul_int(torch.randn(2, 33), packed)
    with pytest.raises(TypeError, match=r"^x_q: expected a 2-D int8 tensor.*\(1, 2, 33\)"):
        lk.ternary_matmul_int(torch.ones(1, 2, 33, dtype=torch.int8), packed)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(9, 4\)"):
        lk.ternary_matmul_int(torch.ones(2, 16, dtype=torch.int8), packed)


# ---------------------------------------------------------------------------------------------
# ternary_linear_multi: several matrices over one x, equal to one ternary_linear each
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 5, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_multi_equals_one_call_each(cpu_impl, m, dtype):
    gen = torch.Generator().manual_seed(m)
    k = 100 + m  # odd widths: a partial k-block
    ns = (33, 8, 1, 64, 517)  # partial n-blocks, a single column, sizes far apart
    qs = [torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen) for n in ns]
    packed = [lk.pack_ternary(q) for q in qs]
    scales = [torch.rand(1, generator=gen) + 0.1 for _ in ns]
    biases = [None, torch.randn(8, generator=gen), None, torch.randn(64, generator=gen).to(dtype), None]
    x = random_activations((m, k), dtype, gen)
    with torch.no_grad():
        ys = lk.ternary_linear_multi(x, packed, scales, biases)
        assert len(ys) == len(ns)
        for y, p, s, b in zip(ys, packed, scales, biases):
            assert torch.equal(y, lk.ternary_linear(x, p, s, b))
        # no bias list; 3-D x; two threads
        x3 = random_activations((2, m, k), dtype, gen)
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            ys = lk.ternary_linear_multi(x3, packed[:3], scales[:3])
        finally:
            torch.set_num_threads(before)
        for y, p, s in zip(ys, packed, scales):
            assert y.shape == (2, m, p.shape[0]) and torch.equal(y, lk.ternary_linear(x3, p, s))


def test_linear_multi_errors():
    x = torch.randn(2, 33)
    p = lk.pack_ternary(torch.ones(5, 33, dtype=torch.int8))
    s = torch.ones(1)
    cases = [
        ((x, p, [s]), TypeError, r"^packed, weight_scale: expected lists of tensors"),
        ((x, [p], [s], p), TypeError, r"^bias: expected None or a list"),
        ((x, [], []), ValueError, r"^packed, weight_scale, bias: expected equal, non-zero lengths, got 0, 0"),
        ((x, [p, p], [s]), ValueError, r"expected equal, non-zero lengths, got 2, 1"),
        ((x, [p], [s], [None, None]), ValueError, r"expected equal, non-zero lengths, got 1, 1, 2"),
        ((x, [p, p[:, :4]], [s, s]), ValueError, r"^packed: expected shape"),
        ((x, [p], [torch.ones(2)]), ValueError, r"^weight_scale: expected a one-element floating tensor"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            lk.ternary_linear_multi(*args)
    with pytest.raises(RuntimeError, match=r"inference-only"):
        lk.ternary_linear_multi(x.clone().requires_grad_(), [p], [s])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_linear_multi_opcheck(use_backend, native_required, backend):
    use_backend(backend)
    gen = torch.Generator().manual_seed(0)
    packed = [lk.pack_ternary(torch.randint(-1, 2, (n, 37), dtype=torch.int8, generator=gen)) for n in (9, 16)]
    scales = [torch.rand(1, generator=gen) + 0.1 for _ in packed]
    x = torch.randn(2, 3, 37, generator=gen).bfloat16()
    torch.library.opcheck(torch.ops.lmops.ternary_linear_multi.default, (x, packed, scales, [None, torch.randn(16)]))


def test_linear_multi_compile_fullgraph_equals_eager():
    gen = torch.Generator().manual_seed(2)
    packed = [lk.pack_ternary(torch.randint(-1, 2, (n, 45), dtype=torch.int8, generator=gen)) for n in (19, 7)]
    scales = [torch.rand(1, generator=gen) + 0.1 for _ in packed]
    x = torch.randn(3, 45, generator=gen)

    def fn(a):
        y0, y1 = lk.ternary_linear_multi(a, packed, scales)
        return y0.sum(-1) + y1.sum(-1)

    with torch.no_grad():
        assert torch.equal(torch.compile(fn, fullgraph=True, backend="eager")(x), fn(x))
