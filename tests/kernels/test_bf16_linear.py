"""bf16_linear (bfloat16 weights, float32 accumulation): every CPU implementation against the reference
within the tolerance its docstring claims.

``cpu_impl`` (conftest.py) runs each test once per implementation this machine has: the plain-torch
reference and the native kernel under each ``LMOPS_CPU_ISA`` (scalar; avx2 and avx512vnni both run the
AVX2 + FMA kernel).

Tolerances (the wrapper's docstring): float32 within ``1e-5 * sum_k |x w|`` of the reference (the same
products, summed in another order); bfloat16/float16 outputs within that plus one rounding step of the
output dtype.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmops_kernels as lk
from kernel_data import random_activations
from lmops_kernels import dispatch
from lmops_kernels import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _native_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("lmops::bf16_linear", "CPU")


@pytest.fixture
def impl(cpu_impl):
    backend, isa = cpu_impl
    if backend == "cpu" and not _native_kernel():
        pytest.skip(dispatch.backends_for("bf16_linear")["cpu"] or "no native bf16_linear kernel")
    assert dispatch.select("bf16_linear", "cpu").backend == backend
    return backend, isa


def random_weight(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16)


def assert_close_to_reference(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias=None) -> None:
    """The docstring's bound, written out: float32 within 1e-5 * sum|x w| (plus the float32 rounding of the
    result and of the bias add); 16-bit outputs one rounding step (relative 2^-8 bfloat16, 2^-11 float16,
    of the exact value) on top."""
    exact = x.double() @ w.double().t()
    if bias is not None:
        exact = exact + bias.double()
    mag = x.double().abs() @ w.double().abs().t()
    bound = 1e-5 * mag + 2.0**-23 * (exact.abs() + (bias.double().abs() if bias is not None else 0)) + 1e-30
    if x.dtype != torch.float32:
        bound = bound + exact.abs() * (2.0**-8 if x.dtype == torch.bfloat16 else 2.0**-11)
        if x.dtype == torch.float16:
            bound = bound + 2.0**-24  # a step among float16's subnormals (below 6.1e-5) is absolute
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], w.shape[0])
    err = (y.double() - exact).abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"
    # and against the reference itself (float32 matmul), the same bound
    r = ref.bf16_linear(x, w, bias)
    assert bool(((y.double() - r.double()).abs() <= 2 * bound).all())


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("k,n", [(1, 1), (7, 3), (8, 17), (16, 5), (33, 31), (2048, 67), (4001, 13)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_within_tolerance(impl, m, k, n, dtype):
    gen = torch.Generator().manual_seed(m * 1000 + k + n)
    x = random_activations((m, k), dtype, gen)
    w = random_weight(n, k, gen)
    assert_close_to_reference(lk.bf16_linear(x, w), x, w)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 6), min_size=0, max_size=2).map(tuple),
    k=st.integers(1, 300),
    n=st.integers(1, 70),
    dtype=st.sampled_from(FLOATS),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_random_shapes(impl, lead, k, n, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = random_activations((*lead, k), dtype, gen)
    w = random_weight(n, k, gen)
    bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
    assert_close_to_reference(lk.bf16_linear(x, w, bias), x, w, bias)


def test_linear_non_contiguous_and_two_threads(impl):
    gen = torch.Generator().manual_seed(3)
    x = random_activations((6, 2 * 130), torch.bfloat16, gen)[::2, ::2]
    w = random_weight(3000, 130, gen)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_close_to_reference(lk.bf16_linear(x, w), x, w)
    finally:
        torch.set_num_threads(before)


def test_linear_exact_on_exact_products(impl):
    """Small integers: every product and partial sum is exact in float32, so every order gives the
    reference's value bit for bit (a wrong index or lane anywhere shows up as a different integer)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-8, 9, (3, 1003), generator=gen).float()
    w = torch.randint(-8, 9, (41, 1003), generator=gen).to(torch.bfloat16)
    assert torch.equal(lk.bf16_linear(x, w), ref.bf16_linear(x, w))


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_linear_empty_leading_dims(impl, lead):
    out = lk.bf16_linear(torch.randn(*lead, 9), torch.randn(4, 9).to(torch.bfloat16))
    assert out.shape == (*lead, 4)


def test_linear_non_finite_propagates(impl):
    x = torch.randn(2, 40)
    x[1, 39] = float("nan")
    y = lk.bf16_linear(x, random_weight(5, 40, torch.Generator().manual_seed(0)))
    assert bool(y[1].isnan().all()) and bool(y[0].isfinite().all())


def test_boundary_errors():
    x, w = torch.randn(2, 33), torch.randn(5, 33).to(torch.bfloat16)
    cases = [
        (("x", w), TypeError, r"^x: expected a torch.Tensor, got str"),
        ((x.double(), w), TypeError, r"^x: expected float32, bfloat16 or float16, got torch.float64"),
        ((torch.randn(2, 0), w[:, :0]), ValueError, r"^x: expected shape \(\.\.\., in_features\) with in_features >= 1"),
        ((x, w.float()), TypeError, r"^weight: expected bfloat16, got torch.float32"),
        ((x, w[:, :32]), ValueError, r"^weight: expected shape \(out_features, 33\)"),
        ((x, w[None]), ValueError, r"^weight: expected shape \(out_features, 33\)"),
        ((x, w, torch.ones(4)), ValueError, r"^bias: expected a floating tensor of shape \(5,\)"),
        ((x, w, torch.ones(5, dtype=torch.int32)), ValueError, r"^bias: expected a floating tensor"),
        ((x, w.to("meta")), ValueError, r"^weight is on meta but x is on cpu"),
        ((x, w, torch.ones(5, device="meta")), ValueError, r"^bias is on meta but x is on cpu"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            lk.bf16_linear(*args)
    with pytest.raises(RuntimeError, match=r"inference-only"):
        lk.bf16_linear(x.clone().requires_grad_(), w)
    with torch.no_grad():
        assert lk.bf16_linear(x.clone().requires_grad_(), w).shape == (2, 5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(use_backend, backend):
    if backend == "cpu" and not _native_kernel():
        pytest.skip("no native bf16_linear kernel")
    use_backend(backend)
    gen = torch.Generator().manual_seed(0)
    for x, bias in [(torch.randn(3, 37, generator=gen), None),
                    (torch.randn(2, 3, 37, generator=gen).bfloat16(), torch.randn(11, generator=gen))]:
        w = torch.randn(11, 37, generator=gen).bfloat16()
        torch.library.opcheck(torch.ops.lmops.bf16_linear.default, (x, w, bias))


def test_compile_fullgraph_equals_eager():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(19, 45, generator=gen).bfloat16()
    x = torch.randn(4, 45, generator=gen)
    fn = torch.compile(lambda a: lk.bf16_linear(a, w) * 2, fullgraph=True, backend="eager")
    assert torch.equal(fn(x), lk.bf16_linear(x, w) * 2)
