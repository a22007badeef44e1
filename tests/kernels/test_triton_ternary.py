"""The ``triton`` backend of the ternary ops against the plain-torch reference.

Checks: ``quantize_activation_absmax`` bit-identical (with a NaN row and an Inf row),
``ternary_matmul_int`` bit-identical int32 (decode kernel for M <= 16, tl.dot GEMM above),
``ternary_linear`` equal in float32 and close in bfloat16, on odd shapes whose K and N are not
multiples of the block sizes (the last n-block of the packed layout is narrower than 8).

On CPU the kernels run under Triton's interpreter, which must see ``TRITON_INTERPRET=1`` before
triton is imported; when this process did not start with it (another test module may have imported
triton already), ``test_triton_cpu_in_subprocess`` reruns this file's CPU cases in a fresh
interpreter with ``TRITON_INTERPRET=1 LMOPS_BACKEND=triton``. GPU cases are marked ``gpu``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import lmops_kernels as lk
from lmops_kernels import dispatch
from lmops_kernels import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from kernel_data import random_activations, random_int8, random_ternary  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" and HAS_TRITON
HAS_CUDA = torch.cuda.is_available() and HAS_TRITON

# (M, K, N): M in {1, 3} takes the decode kernel, 17 the GEMM; K, N odd (narrow last n-block)
SHAPES = ((1, 33, 7), (3, 100, 13), (17, 257, 65), (1, 257, 65), (17, 33, 13))
QUANT_SHAPES = ((1, 33), (3, 100), (17, 257), (2, 1))

_cpu_marks = [] if TRITON_IN_PROCESS else [
    pytest.mark.skip(reason="runs in test_triton_cpu_in_subprocess (TRITON_INTERPRET=1 must precede the triton import)")
]
_gpu_marks = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")]
DEVICES = [pytest.param("cpu", marks=_cpu_marks, id="cpu"), pytest.param("cuda", marks=_gpu_marks, id="cuda")]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("LMOPS_BACKEND", "triton")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _first_mismatch(a: torch.Tensor, b: torch.Tensor) -> str:
    bad = ~((a == b) | (a.isnan() & b.isnan())) if a.dtype.is_floating_point else a != b
    idx = bad.nonzero()[:5].tolist()
    return f"{int(bad.sum())} mismatches, first at {idx}: got {[a[tuple(i)].item() for i in idx]}, want {[b[tuple(i)].item() for i in idx]}"


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert torch.equal(got, want) or (
        got.dtype.is_floating_point and torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    ), _first_mismatch(got, want)


# ---------------------------------------------------------------------------------------------
# correctness against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k", QUANT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_quantize_activation(triton_backend, device, m, k, dtype):
    x = random_activations((m, k), dtype, _gen(m * 1000 + k))
    if m >= 3:
        x[1, k // 2] = float("nan")
        x[2, 0] = float("-inf")
    assert dispatch.select("quantize_activation_absmax", device).backend == "triton"
    q, s = lk.quantize_activation_absmax(x.to(device))
    q_ref, s_ref = ref.quantize_activation_absmax(x)
    _assert_same(q, q_ref)
    _assert_same(s, s_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_quantize_ties_and_bits(triton_backend, device):
    # exact .5 ties after scaling: absmax 127 gives scale 1, so x itself is rounded half to even
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999998, -126.5]])
    x = torch.cat([x, x * 0.25, -x * 3.0]).contiguous()
    for bits in (8, 4, 2):
        q, s = lk.quantize_activation_absmax(x.to(device), bits)
        q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
        _assert_same(q, q_ref)
        _assert_same(s, s_ref)
    # leading dims and a non-contiguous input
    x3 = random_activations((2, 3, 40), torch.float32, _gen(5)).to(device)[..., ::2]
    q, s = lk.quantize_activation_absmax(x3)
    q_ref, s_ref = ref.quantize_activation_absmax(x3.cpu())
    _assert_same(q, q_ref)
    _assert_same(s, s_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_triton_matmul_int(triton_backend, device, m, k, n):
    gen = _gen(m * 7 + k * 13 + n)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    assert dispatch.select("ternary_matmul_int", device).backend == "triton"
    got = lk.ternary_matmul_int(x_q.to(device), packed.to(device))
    _assert_same(got, ref.ternary_matmul_int(x_q, packed))


@pytest.mark.parametrize("device", DEVICES)
def test_triton_matmul_int_extremes(triton_backend, device):
    # all -128 against all -1 / +1: the largest sums (|acc| = 128 K) stay exact
    m, k, n = 17, 257, 9
    x_q = torch.full((m, k), -128, dtype=torch.int8)
    x_q[1] = 127
    q = torch.ones((n, k), dtype=torch.int8)
    q[::2] = -1
    packed = lk.pack_ternary(q)
    for rows in (m, 2):
        got = lk.ternary_matmul_int(x_q[:rows].to(device), packed.to(device))
        _assert_same(got, ref.ternary_matmul_int(x_q[:rows], packed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_triton_linear_float32(triton_backend, device, m, k, n, with_bias):
    gen = _gen(m * 31 + k * 3 + n + with_bias)
    x = random_activations((m, k), torch.float32, gen)
    if m >= 3:
        x[2, 1] = float("nan")  # that output row is NaN, the others are unaffected
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.0371, dtype=torch.float32)
    bias = torch.randn(n, generator=gen) if with_bias else None
    assert dispatch.select("ternary_linear", device).backend == "triton"
    d = device
    got = lk.ternary_linear(x.to(d), packed.to(d), gamma.to(d), None if bias is None else bias.to(d))
    _assert_same(got, ref.ternary_linear(x, packed, gamma, bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", [SHAPES[1], SHAPES[2]])
def test_triton_linear_bfloat16(triton_backend, device, m, k, n):
    gen = _gen(m + k + n)
    x = random_activations((2, m, k), torch.bfloat16, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.02, dtype=torch.float32)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    d = device
    got = lk.ternary_linear(x.to(d), packed.to(d), gamma.to(d), bias.to(d)).cpu()
    want = ref.ternary_linear(x, packed, gamma, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (2, m, n)
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)


def test_triton_unavailable_without_interpreter(monkeypatch):
    from lmops_kernels import triton as lk_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("LMOPS_BACKEND", "triton")
    assert "TRITON_INTERPRET=1" in (lk_triton.unavailable("cpu") or "")
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="triton backend of 'ternary_linear' is unavailable"):
        lk.ternary_linear(x, lk.pack_ternary(torch.zeros(3, 16, dtype=torch.int8)), torch.tensor(1.0))
    monkeypatch.delenv("LMOPS_BACKEND")
    assert dispatch.select("ternary_linear", "cpu").backend != "triton"  # never chosen automatically on CPU


@pytest.mark.skipif(TRITON_IN_PROCESS or not HAS_TRITON, reason="this process runs the triton cases itself (or no triton)")
def test_triton_cpu_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", LMOPS_BACKEND="triton")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "cpu and not subprocess", "-W", "ignore"],
        env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__),
    )
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout and " skipped" not in proc.stdout, tail


# ---------------------------------------------------------------------------------------------
# GPU only: CUDA-graph capture and torch.compile of a packed BitLinear on the triton backend
# ---------------------------------------------------------------------------------------------


def _packed_layer(k: int, n: int, device: str):
    from lmops.layers.bitlinear import BitLinear

    gen = _gen(k + n)
    bias = torch.randn(n, generator=gen)
    return BitLinear.from_ternary(random_ternary(n, k, gen), 0.05, bias).to(device).eval()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")
@pytest.mark.parametrize("m", [1, 16, 40])
def test_triton_cuda_graph_capture(triton_backend, m):
    layer = _packed_layer(300, 77, "cuda")
    x = random_activations((m, 300), torch.float32, _gen(m)).cuda()
    want = ref.ternary_linear(x.cpu(), layer.weight_packed.cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: autotuning and compilation happen outside the capture
                layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = layer(x)
        x.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
    want2 = ref.ternary_linear(x.cpu(), layer.weight_packed.cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
    _assert_same(y, want2)
    assert want.shape == want2.shape


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")
def test_triton_torch_compile(triton_backend):
    layer = _packed_layer(257, 65, "cuda")
    x = random_activations((3, 5, 257), torch.bfloat16, _gen(3)).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        eager = layer(x)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
    want = ref.ternary_linear(x.cpu(), layer.weight_packed.cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=1.6e-2, atol=1e-2)
