"""int8_linear (W8A8, per-output-channel weight scales) and quantize_weight_int8: every CPU
implementation against the formula, bit for bit.

``cpu_impl`` (conftest.py) runs each test once per implementation this machine has: the plain-torch
reference and the native kernel under each ``LMOPS_CPU_ISA`` (scalar, avx2, avx512vnni).

Tolerances (those the wrapper's docstring claims):
- the integer product: exact (checked through outputs whose float32 rescale is exactly 1);
- the float output, float32/bfloat16/float16: ``torch.equal`` with the formula written out here with
  the same float32 operations in the same order;
- against ``F.linear`` on the float weights: within the rounding bound of the docstring.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmops_kernels as lk
from kernel_data import random_activations
from lmops_kernels import dispatch
from lmops_kernels.int8 import MAX_IN_FEATURES

pytestmark = pytest.mark.usefixtures("one_thread")

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
HYPOTHESIS_FIXTURES = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _native_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("lmops::int8_linear", "CPU")


@pytest.fixture
def impl(cpu_impl):
    """``cpu_impl``, skipping the native cases where the loaded library predates int8_linear."""
    backend, isa = cpu_impl
    if backend == "cpu" and not _native_kernel():
        pytest.skip(dispatch.backends_for("int8_linear")["cpu"] or "no native int8_linear kernel")
    assert dispatch.select("int8_linear", "cpu").backend == backend
    return backend, isa


def random_int8_weight(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) int8 over the full range -128..127, both ends present."""
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    if n * k >= 2:
        w.view(-1)[:2] = torch.tensor([-128, 127], dtype=torch.int8)
    return w


def spec(x, w, w_scale, bias=None):
    """y = (Q(x) @ w^T) * (w_scale / s) + bias; Q = per-row absmax int8; float32 epilogue."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    s = x2.abs().amax(-1, keepdim=True).clamp(min=1e-5).reciprocal() * 127  # as torch evaluates 127 / amax
    x_q = (x2 * s).round().clamp(-128, 127)
    acc = (x_q.double() @ w.double().t()).to(torch.int32)  # exact: |acc| <= 128 * 128 * K < 2^53
    y = acc.float() * (w_scale.reshape(1, -1) / s)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def case(m, k, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = random_activations((m, k), dtype, gen)
    w = random_int8_weight(n, k, gen)
    w_scale = torch.rand(n, generator=gen) * 0.01 + 1e-4
    return x, w, w_scale, gen


# ---------------------------------------------------------------------------------------------
# forward: exact against the formula
# ---------------------------------------------------------------------------------------------

# K never a multiple of 64 but one (the SIMD tails), N odd, M in {1, 3, 17} (decode and small batches)
SHAPES = [(m, k, n) for m in (1, 3, 17) for k, n in ((1, 1), (63, 7), (65, 33), (200, 101), (2047, 13), (128, 5))]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_exact(impl, m, k, n, dtype):
    x, w, w_scale, gen = case(m, k, n, dtype, seed=m * 7919 + k * 31 + n)
    for bias in (None, torch.randn(n, generator=gen).to(dtype), torch.randn(n, generator=gen)):
        y = lk.int8_linear(x, w, w_scale, bias)
        want = spec(x, w, w_scale, bias)
        assert y.dtype == dtype and y.shape == (m, n)
        assert torch.equal(y, want), f"{dtype} bias={bias is not None}: {int((y != want).sum())} of {y.numel()} differ"


@settings(max_examples=25, **HYPOTHESIS_FIXTURES)
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2).map(tuple),
    k=st.integers(1, 700),
    n=st.integers(1, 150),
    dtype=st.sampled_from(FLOATS[:2]),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_exact_random_shapes(impl, lead, k, n, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = random_activations((*lead, k), dtype, gen)
    w = random_int8_weight(n, k, gen)
    w_scale = torch.rand(n, generator=gen) + 1e-3
    bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
    y = lk.int8_linear(x, w, w_scale, bias)
    assert y.shape == (*lead, n)
    assert torch.equal(y, spec(x, w, w_scale, bias))


def _unit_rescale_case(m, k, n, gen, *, extreme=False):
    """x whose every row has max |x| = 1 (so s = 127 exactly) and weight_scale = 127: the float32 rescale
    is exactly 1 and the output is the integer product itself (exact in float32 below 2^24)."""
    if extreme:  # |x_q| = 127 everywhere against weights at -128 / 127: the largest sums, both signs
        x = torch.where(torch.rand(m, k, generator=gen) < 0.5, -1.0, 1.0)
        x[0] = -1.0
        w = torch.full((n, k), -128, dtype=torch.int8)
        w[1::2] = 127
    else:
        x = torch.rand(m, k, generator=gen) * 2 - 1
        x[torch.arange(m), torch.randint(0, k, (m,), generator=gen)] = 1.0
        w = random_int8_weight(n, k, gen)
    x_q = (x * 127).round()
    return x, w, torch.full((n,), 127.0), (x_q.double() @ w.double().t()).to(torch.int64)


@pytest.mark.parametrize("m,k,n", [(1, 1031, 9), (3, 65, 7), (17, 200, 33)])
@pytest.mark.parametrize("extreme", [False, True])
def test_integer_product_exact(impl, m, k, n, extreme):
    """The int32 accumulation itself, read back through a rescale of exactly 1 (K = 1031: |sum| up to
    127 * 128 * 1031 < 2^24, so float32 holds it): no int16 saturation (AVX2), no lost offset (VNNI)."""
    x, w, w_scale, want = _unit_rescale_case(m, k, n, torch.Generator().manual_seed(m + k + n), extreme=extreme)
    y = lk.int8_linear(x, w, w_scale)
    assert torch.equal(y, y.round()) and y.abs().max() < 2**24
    got = y.to(torch.int64)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {got.numel()} integer sums differ"
    if extreme:
        assert int(want.abs().max()) == 127 * 128 * k


def test_largest_in_features(impl):
    """K = 65536 (the limit): the largest integer sums stay inside int32 on every path."""
    gen = torch.Generator().manual_seed(3)
    k = MAX_IN_FEATURES
    x = torch.where(torch.rand(2, k, generator=gen) < 0.9, 1.0, -1.0)
    w = torch.full((3, k), -128, dtype=torch.int8)
    w[1] = 127
    w[2, ::3] = 5
    w_scale = torch.tensor([1e-3, 2e-3, 3e-3])
    assert torch.equal(lk.int8_linear(x, w, w_scale), spec(x, w, w_scale))


def test_linear_two_threads(impl):
    """Weight rows split between two threads (M = 1, the decode GEMV, and M = 5): the same bits."""
    torch.set_num_threads(2)  # the one_thread fixture restores the count
    for m in (1, 5):
        x, w, w_scale, gen = case(m, 1000, 1001, torch.bfloat16, seed=m)
        bias = torch.randn(1001, generator=gen)
        assert torch.equal(lk.int8_linear(x, w, w_scale, bias), spec(x, w, w_scale, bias))


def test_linear_layouts_of_x(impl):
    x, w, w_scale, gen = case(4, 100, 13, torch.float32, seed=11)
    x3 = random_activations((3, 5, 100), torch.bfloat16, gen)
    assert torch.equal(lk.int8_linear(x3, w, w_scale), spec(x3, w, w_scale))
    variants = {
        "transposed": random_activations((100, 7), torch.float32, gen).t(),
        "strided cols": random_activations((6, 200), torch.float32, gen)[:, ::2],
        "expanded": random_activations((1, 100), torch.float32, gen).expand(4, 100),
    }
    for name, v in variants.items():
        assert not v.is_contiguous(), name
        assert torch.equal(lk.int8_linear(v, w, w_scale), spec(v.contiguous(), w, w_scale)), name
    w_t = random_int8_weight(100, 13, gen).t()  # a non-contiguous weight is accepted (copied)
    assert torch.equal(lk.int8_linear(x, w_t, w_scale), spec(x, w_t, w_scale))


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_linear_empty_leading_dims(impl, lead):
    _, w, w_scale, _ = case(1, 33, 9, torch.float32, seed=13)
    y = lk.int8_linear(torch.randn(*lead, 33), w, w_scale, torch.randn(9))
    assert y.shape == (*lead, 9) and y.dtype == torch.float32


@pytest.mark.parametrize("dtype", FLOATS[:2])
def test_linear_non_finite_rows(impl, dtype):
    x, w, w_scale, _ = case(4, 70, 21, dtype, seed=14)
    clean = x.clone()
    x[1, 3] = float("nan")
    x[2, 69] = float("inf")
    y = lk.int8_linear(x, w, w_scale)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.equal(y[[0, 3]], spec(clean[[0, 3]], w, w_scale))


# ---------------------------------------------------------------------------------------------
# the weight quantizer, and the error against the float linear
# ---------------------------------------------------------------------------------------------


def test_quantize_weight_int8_formula():
    gen = torch.Generator().manual_seed(15)
    w = torch.randn(37, 129, generator=gen) * torch.rand(37, 1, generator=gen)
    w[3] = 0.0  # an all-zero row gets a tiny scale and zeros, not NaN
    q, scale = lk.quantize_weight_int8(w.to(torch.bfloat16))
    w32 = w.to(torch.bfloat16).float()
    want_scale = w32.abs().amax(1).clamp(min=1e-12) / 127
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (37,)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q, (w32 / want_scale[:, None]).round().clamp(-127, 127).to(torch.int8))
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127 and not bool(q[3].any())
    assert bool(((q.float() * scale[:, None] - w32).abs() <= scale[:, None] / 2 * (1 + 4e-5)).all())  # q * scale rounds in float32


def test_error_against_float_linear_within_bound(impl):
    """int8_linear(x, quantize_weight_int8(W)) against F.linear(x, W): within the docstring's bound,
    and that bound is not vacuous (weights off by one row break it)."""
    gen = torch.Generator().manual_seed(16)
    w = torch.randn(301, 257, generator=gen) * 0.05
    x = random_activations((5, 257), torch.float32, gen)
    q, scale = lk.quantize_weight_int8(w)
    y = lk.int8_linear(x, q, scale)
    want = F.linear(x.double(), w.double())
    dx = x.abs().amax(1, keepdim=True).double() / 254  # activation rounding, per row
    dw = scale.double()[None, :] / 2  # weight rounding, per output channel
    bound = dw * x.abs().sum(1, keepdim=True).double() + dx * w.abs().sum(1)[None, :].double() + dw * dx * 257
    err = (y.double() - want).abs()
    assert bool((err <= bound * (1 + 1e-4) + 1e-6).all()), float((err / bound).max())
    wrong = lk.int8_linear(x, q.roll(1, 0), scale.roll(1, 0))
    assert not bool(((wrong.double() - want).abs() <= bound).all())


# ---------------------------------------------------------------------------------------------
# bad inputs, opcheck, compile
# ---------------------------------------------------------------------------------------------


def test_boundary_errors():
    w = torch.zeros(5, 33, dtype=torch.int8)
    w[0, 0] = 1
    s = torch.ones(5)
    x = torch.randn(2, 33)
    cases = [
        ((x.double(), w, s), TypeError, r"^x: expected float32, bfloat16 or float16, got torch.float64"),
        ((x.to(torch.int32), w, s), TypeError, r"^x: expected float32"),
        (([[1.0] * 33], w, s), TypeError, r"^x: expected a torch.Tensor, got list"),
        ((torch.randn(2, 0), w[:, :0], s), ValueError, r"^x: expected shape \(\.\.\., in_features\) with 1 <= "),
        ((x, w.float(), s), TypeError, r"^weight: expected int8 \(from quantize_weight_int8\), got torch.float32"),
        ((x, w.to(torch.uint8), s), TypeError, r"^weight: expected int8"),
        ((x, w[:, :32], s), ValueError, r"^weight: expected shape \(out_features, 33\)"),
        ((x, w[None], s), ValueError, r"^weight: expected shape \(out_features, 33\)"),
        ((x, w, s.double()), ValueError, r"^weight_scale: expected float32 of shape \(5,\), got torch.float64"),
        ((x, w, s[:4]), ValueError, r"^weight_scale: expected float32 of shape \(5,\)"),
        ((x, w, s[None]), ValueError, r"^weight_scale: expected float32 of shape \(5,\)"),
        ((x, w, s, torch.ones(4)), ValueError, r"^bias: expected a floating tensor of shape \(5,\)"),
        ((x, w, s, torch.ones(5, dtype=torch.int32)), ValueError, r"^bias: expected a floating tensor"),
        ((x, w.to("meta"), s), ValueError, r"^weight is on meta but x is on cpu"),
        ((x, w, s.to("meta")), ValueError, r"^weight_scale is on meta but x is on cpu"),
        ((x, w, s, torch.ones(5, device="meta")), ValueError, r"^bias is on meta but x is on cpu"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            lk.int8_linear(*args)
    big = MAX_IN_FEATURES + 1
    with pytest.raises(ValueError, match=rf"1 <= in_features <= {MAX_IN_FEATURES}"):
        lk.int8_linear(torch.randn(1, big), torch.zeros(1, big, dtype=torch.int8), torch.ones(1))
    with pytest.raises(RuntimeError, match=r"inference-only"):
        lk.int8_linear(x.requires_grad_(), w, s)
    with torch.no_grad():
        assert lk.int8_linear(x, w, s).shape == (2, 5)


def test_quantize_weight_int8_errors():
    for bad, exc, pattern in [
        (torch.ones(3, 4, dtype=torch.int32), TypeError, r"^w: expected a floating-point tensor, got torch.int32"),
        (torch.ones(3), ValueError, r"^w: expected a non-empty \(out_features, in_features\) matrix"),
        (torch.ones(0, 4), ValueError, r"^w: expected a non-empty"),
        (torch.tensor([[1.0, float("nan")]]), ValueError, r"^w: expected finite values"),
        ("w", TypeError, r"^w: expected a torch.Tensor, got str"),
    ]:
        with pytest.raises(exc, match=pattern):
            lk.quantize_weight_int8(bad)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(use_backend, backend):
    if backend == "cpu" and not _native_kernel():
        pytest.skip(dispatch.backends_for("int8_linear")["cpu"] or "no native int8_linear kernel")
    use_backend(backend)
    gen = torch.Generator().manual_seed(20)
    for x, with_bias in ((random_activations((5, 33), torch.float32, gen), True),
                         (random_activations((2, 3, 70), torch.bfloat16, gen), False)):
        w = random_int8_weight(11, x.shape[-1], gen)
        bias = torch.randn(11, generator=gen) if with_bias else None
        torch.library.opcheck(torch.ops.lmops.int8_linear.default, (x, w, torch.rand(11, generator=gen), bias))


def test_compile_fullgraph_equals_eager():
    gen = torch.Generator().manual_seed(21)
    x, w, w_scale = random_activations((3, 40), torch.float32, gen), random_int8_weight(9, 40, gen), torch.rand(9)
    fn = torch.compile(lambda a: lk.int8_linear(a, w, w_scale) * 2, fullgraph=True, backend="eager")
    assert torch.equal(fn(x), lk.int8_linear(x, w, w_scale) * 2)
