"""BitNet b1.58 quantizers: absmean ternary weights and per-token absmax activations.

Tolerances:
- native cpu vs reference: bit-identical (``torch.equal``), every dtype and bit width.
- vs the formula written out here: bit-identical (same float32 operations).
- vs transformers: lmops evaluates the scale as ``amax.reciprocal() * Qp``, which is how PyTorch
  evaluates transformers' ``127 / amax``, so scales and codes agree; the comparison still allows 1 ulp
  on the scale (``rtol=2**-23``) and code differences within a few ulps of a rounding tie, because
  transformers' compiled and eager paths themselves differ by an ulp.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmops_kernels as lk
from lmops_kernels import _native
from kernel_data import random_activations
from lmops_kernels import dispatch
from lmops_kernels import reference as ref

hf_bitnet = pytest.importorskip("transformers.integrations.bitnet")

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
ONE_ULP = 2.0**-23


def eager(fn):
    """The plain Python function under a transformers ``@torch.compile`` (same numbers, no compile)."""
    return getattr(fn, "_torchdynamo_orig_callable", fn)


def near_tie(v: torch.Tensor) -> torch.Tensor:
    """Elements whose value is within a few float32 ulps of a .5 rounding tie."""
    frac = (v - v.floor() - 0.5).abs()
    return frac <= 8 * ONE_ULP * v.abs().clamp(min=1.0)


def assert_codes_equal_except_ties(ours: torch.Tensor, theirs: torch.Tensor, prescaled: torch.Tensor) -> None:
    diff = ours.to(torch.int32) != theirs.to(torch.int32)
    assert bool((~diff | near_tie(prescaled)).all()), f"{int(diff.sum())} codes differ away from a rounding tie"
    assert int((ours.to(torch.int32) - theirs.to(torch.int32)).abs().max()) <= 1


# ---------------------------------------------------------------------------------------------
# weights: absmean ternary
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple),
    dtype=st.sampled_from(FLOATS + [torch.float64]),
    log_scale=st.floats(-8, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_weight_absmean_matches_formula(shape, dtype, log_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=gen) * 10**log_scale).to(dtype)
    q, gamma = lk.quantize_weight_absmean(w)

    # the formula (BitNet b1.58, eq. 1-3), in float32
    w32 = w.float()
    gamma_want = w32.abs().mean().clamp(min=1e-5)
    q_want = (w32 / gamma_want).round().clamp(-1, 1).to(torch.int8)

    assert q.dtype == torch.int8 and q.shape == w.shape
    assert gamma.dtype == torch.float32 and gamma.shape == ()
    assert torch.equal(gamma, gamma_want)
    assert torch.equal(q, q_want)
    assert set(q.unique().tolist()) <= {-1, 0, 1}
    # gamma is the mean |w| (summed in float32: relative error well below 1e-5), floored at 1e-5
    mean64 = w.double().abs().mean().item()
    assert math.isclose(gamma.item(), max(mean64, 1e-5), rel_tol=1e-5)


def test_weight_absmean_floor_for_tiny_weights():
    w = torch.randn(33, 17, generator=torch.Generator().manual_seed(0)) * 1e-7
    q, gamma = lk.quantize_weight_absmean(w)
    assert gamma.item() == pytest.approx(1e-5, rel=1e-7)
    assert torch.equal(q, (w / gamma).round().clamp(-1, 1).to(torch.int8))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_weight_absmean_matches_transformers_weightquant(n, k, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02
    q, gamma = lk.quantize_weight_absmean(w)
    theirs = eager(hf_bitnet.WeightQuant.forward)(None, w)  # q / (1 / gamma), in w's dtype
    # transformers multiplies by 1/gamma where lmops divides by gamma: the codes agree away from ties
    their_q = (theirs * (w.abs().mean().reciprocal())).round()
    assert_codes_equal_except_ties(q, their_q, w / gamma)
    torch.testing.assert_close(q.float() * gamma, theirs, rtol=2 * ONE_ULP, atol=0)


def test_weight_absmean_errors():
    with pytest.raises(TypeError, match=r"^w: expected a floating-point tensor, got torch.int8"):
        lk.quantize_weight_absmean(torch.ones(3, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"^w: expected a non-empty tensor"):
        lk.quantize_weight_absmean(torch.empty(0, 4))


# ---------------------------------------------------------------------------------------------
# activations: per-token absmax
# ---------------------------------------------------------------------------------------------


def spec_quantize_activation(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula, for finite rows: s = Qp / max(max|x|, 1e-5) evaluated as reciprocal-then-multiply
    (as torch evaluates transformers' ``127 / amax``); q = clamp(round(x s), Qn, Qp)."""
    qp, qn = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    x32 = x.float()
    s = x32.abs().amax(-1, keepdim=True).clamp(min=1e-5).reciprocal() * qp
    return (x32 * s).round().clamp(qn, qp).to(torch.int8), s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 9), min_size=0, max_size=2).map(tuple),
    k=st.integers(1, 700),
    dtype=st.sampled_from(FLOATS),
    bits=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**31 - 1),
)
def test_activation_absmax_native_equals_reference(use_backend, native_required, lead, k, dtype, bits, seed):
    x = random_activations((*lead, k), dtype, torch.Generator().manual_seed(seed))
    use_backend("cpu")
    assert dispatch.select("quantize_activation_absmax", "cpu").backend == "cpu"
    q, s = lk.quantize_activation_absmax(x, bits)
    q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (*lead, 1)
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)
    q_spec, s_spec = spec_quantize_activation(x, bits)
    assert torch.equal(q_ref, q_spec) and torch.equal(s_ref, s_spec)


@pytest.mark.parametrize("m,k", [(1, 1), (3, 5), (17, 4000), (130, 33)])
def test_activation_absmax_non_contiguous(use_backend, native_required, m, k):
    x = random_activations((k, m), torch.float32, torch.Generator().manual_seed(m + k)).t()
    use_backend("cpu")
    q, s = lk.quantize_activation_absmax(x)
    q_ref, s_ref = ref.quantize_activation_absmax(x.contiguous())
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_activation_rounds_half_to_even(use_backend, backend):
    if backend == "cpu":
        if not _native.available():
            pytest.skip(f"native extension missing: {_native.missing_reason()}")
    use_backend(backend)
    # amax = 127 makes s exactly 1, so x * s is exactly the tie
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5]])
    q, s = lk.quantize_activation_absmax(x)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, -126]]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_activation_tiny_rows_use_floor(use_backend, backend, dtype):
    if backend == "cpu":
        if not _native.available():
            pytest.skip(f"native extension missing: {_native.missing_reason()}")
    use_backend(backend)
    x = (torch.rand(4, 37, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 5e-6
    x = x.to(dtype)
    q, s = lk.quantize_activation_absmax(x)
    assert torch.equal(s, torch.full_like(s, 127.0) / 1e-5)
    assert torch.equal(q, spec_quantize_activation(x, 8)[0])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_activation_non_finite_rows(use_backend, backend, dtype, bad):
    if backend == "cpu":
        if not _native.available():
            pytest.skip(f"native extension missing: {_native.missing_reason()}")
    use_backend(backend)
    gen = torch.Generator().manual_seed(2)
    x = random_activations((6, 45), dtype, gen)
    clean = x.clone()
    x[1, 7] = bad
    x[4, 0] = bad
    x[4, 44] = float("nan")
    q, s = lk.quantize_activation_absmax(x)
    bad_rows = torch.tensor([False, True, False, False, True, False])
    assert bool(s[bad_rows].isnan().all())
    assert bool((q[bad_rows] == 0).all())
    q_clean, s_clean = ref.quantize_activation_absmax(clean[~bad_rows])
    assert torch.equal(q[~bad_rows], q_clean) and torch.equal(s[~bad_rows], s_clean)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 500),
    bits=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**31 - 1),
)
def test_activation_absmax_matches_transformers(m, k, bits, seed):
    """Against transformers' own activation quantizers on float32 inputs."""
    x = random_activations((m, k), torch.float32, torch.Generator().manual_seed(seed))
    q, s = lk.quantize_activation_absmax(x, bits)
    # BitLinear.activation_quant returns the int8 codes and the scale
    their_q, their_s = eager(hf_bitnet.BitLinear.activation_quant)(None, x, num_bits=bits)
    torch.testing.assert_close(s, their_s, rtol=ONE_ULP, atol=0)
    assert_codes_equal_except_ties(q, their_q, x * s)
    if bits == 8:
        # ActQuant (AutoBitLinear's quantizer) returns the dequantized activations q / s
        theirs = eager(hf_bitnet.ActQuant.forward)(None, x)
        torch.testing.assert_close(q.float() / s, theirs, rtol=2 * ONE_ULP, atol=0)


def test_activation_errors():
    x = torch.randn(3, 8)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 or float16, got torch.float64"):
        lk.quantize_activation_absmax(x.double())
    with pytest.raises(TypeError, match=r"^x: expected float32"):
        lk.quantize_activation_absmax(x.to(torch.int32))
    with pytest.raises(ValueError, match=r"^x: expected shape \(\.\.\., K\) with K >= 1"):
        lk.quantize_activation_absmax(torch.randn(3, 0))
    with pytest.raises(ValueError, match=r"^x: expected shape"):
        lk.quantize_activation_absmax(torch.tensor(1.5))
    for bits in (1, 9, 8.0):
        with pytest.raises(ValueError, match=r"^bits: expected an int in 2..8"):
            lk.quantize_activation_absmax(x, bits)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512vnni"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_activation_absmax_each_isa_equals_reference(use_backend, native_required, isa, dtype):
    """The vector quantizer (every ISA but scalar) and the scalar loop give the reference's bytes: odd
    widths (partial vectors), ties, tiny rows and a row with a NaN in its partial tail."""
    if isa != "scalar" and not _native.cpu_features().get(isa, False):
        pytest.skip(f"this CPU does not support {isa}")
    use_backend("cpu")
    before = _native.cpu_isa()
    _native.set_cpu_isa(isa)
    try:
        gen = torch.Generator().manual_seed(7)
        for k in (1, 7, 8, 9, 33, 2048, 5633):
            x = random_activations((5, k), dtype, gen)
            x[2] = x[2] * 1e-7  # below the 1e-5 floor
            x[3, 0] = 127.0
            x[3, 1:] = torch.tensor([0.5, 1.5, 2.5, -0.5])[torch.arange(k - 1) % 4] if k > 1 else x[3, 1:]
            if k > 8:
                x[4, k - 1] = float("nan")
            for bits in (8, 4):
                q, s = lk.quantize_activation_absmax(x, bits)
                q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
                assert torch.equal(q, q_ref), (k, bits)
                assert torch.equal(s, s_ref) or (k > 8 and torch.equal(s[:4], s_ref[:4]) and s[4].isnan().all()
                                                 and s_ref[4].isnan().all())
    finally:
        _native.set_cpu_isa(before)
