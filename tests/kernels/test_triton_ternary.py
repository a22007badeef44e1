"""The ``triton`` backend of the ternary ops against the plain-torch reference.

Checks: ``quantize_activation_absmax`` bit-identical (with a NaN row and an Inf row),
``ternary_matmul_int`` bit-identical int32 (decode kernel for M <= 16, tl.dot GEMM above),
``ternary_linear`` equal in float32 and close in bfloat16, on odd shapes whose K and N are not
multiples of the block sizes (the last n-block of the packed layout is narrower than 8), with the
weights in each packed layout the kernels read (``planes``, preferred, and the canonical ``tiled``);
the decode kernel's split-K path (int32 atomics, then the epilogue kernel) bit-identical too, with
uneven and empty k-splits; a packed ``BitLinear`` keeps ``planes`` weights under this backend and a
backend-neutral state_dict.

Under the interpreter the launcher splits every decode GEMV in two (``_gemv_split_k``), so every
``M <= 16`` case below runs the split path; ``test_triton_gemv_split_k`` forces other splits,
the fused ``SPLIT_K = 1`` path among them.

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
from lmops_kernels import dispatch, layouts
from lmops_kernels import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from kernel_data import assert_same, assert_within_one_rounding, extreme_matmul, random_activations, random_int8, random_ternary, seeded  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" and HAS_TRITON
HAS_CUDA = torch.cuda.is_available() and HAS_TRITON

# (M, K, N): M in {1, 3} takes the decode kernel, 17 the GEMM; K, N odd (narrow last n-block).
# With the interpreter's BLOCK_KB = 2 and SPLIT_K = 2, K = 257 (17 k-blocks, 9 tiles) splits 5 + 4
# tiles, the last one partial; K = 33 (3 k-blocks) splits 1 + 1.
SHAPES = ((1, 33, 7), (3, 100, 13), (17, 257, 65), (1, 257, 65), (17, 33, 13))
QUANT_SHAPES = ((1, 33), (3, 100), (17, 257), (2, 1))

_cpu_marks = [] if TRITON_IN_PROCESS else [
    pytest.mark.skip(reason="runs in test_triton_cpu_in_subprocess (TRITON_INTERPRET=1 must precede the triton import)")
]
_gpu_marks = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")]
DEVICES = [pytest.param("cpu", marks=_cpu_marks, id="cpu"), pytest.param("cuda", marks=_gpu_marks, id="cuda")]


@pytest.fixture
def triton_backend(monkeypatch):
    dispatch.force("triton")


# ---------------------------------------------------------------------------------------------
# correctness against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k", QUANT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_quantize_activation(triton_backend, device, m, k, dtype):
    x = random_activations((m, k), dtype, seeded(m * 1000 + k))
    if m >= 3:
        x[1, k // 2] = float("nan")
        x[2, 0] = float("-inf")
    assert dispatch.select("quantize_activation_absmax", device).backend == "triton"
    q, s = lk.quantize_activation_absmax(x.to(device))
    q_ref, s_ref = ref.quantize_activation_absmax(x)
    assert_same(q, q_ref)
    assert_same(s, s_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_quantize_ties_and_bits(triton_backend, device):
    # exact .5 ties after scaling: absmax 127 gives scale 1, so x itself is rounded half to even
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999998, -126.5]])
    x = torch.cat([x, x * 0.25, -x * 3.0]).contiguous()
    for bits in (8, 4, 2):
        q, s = lk.quantize_activation_absmax(x.to(device), bits)
        q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
        assert_same(q, q_ref)
        assert_same(s, s_ref)
    # leading dims and a non-contiguous input
    x3 = random_activations((2, 3, 40), torch.float32, seeded(5)).to(device)[..., ::2]
    q, s = lk.quantize_activation_absmax(x3)
    q_ref, s_ref = ref.quantize_activation_absmax(x3.cpu())
    assert_same(q, q_ref)
    assert_same(s, s_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_triton_matmul_int(triton_backend, device, m, k, n, layout):
    gen = seeded(m * 7 + k * 13 + n)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    impl = dispatch.select("ternary_matmul_int", device)
    assert impl.backend == "triton" and impl.layouts == ("planes", "tiled")  # both read in place, planes preferred
    w = layouts.convert(packed, "tiled", layout).to(device)
    got = lk.ternary_matmul_int(x_q.to(device), w, layout=layout)
    assert_same(got, ref.ternary_matmul_int(x_q, packed))


@pytest.mark.parametrize("device", DEVICES)
def test_triton_matmul_int_extremes(triton_backend, device):
    # all -128 against all -1 / +1: the largest sums (|acc| = 128 K) stay exact
    m, k, n = 17, 257, 9
    x_q, q = extreme_matmul(m, k, n)
    packed = lk.pack_ternary(q)
    for rows in (m, 2):
        got = lk.ternary_matmul_int(x_q[:rows].to(device), packed.to(device))
        assert_same(got, ref.ternary_matmul_int(x_q[:rows], packed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_triton_linear_float32(triton_backend, device, m, k, n, with_bias, layout):
    gen = seeded(m * 31 + k * 3 + n + with_bias)
    x = random_activations((m, k), torch.float32, gen)
    if m >= 3:
        x[2, 1] = float("nan")  # that output row is NaN, the others are unaffected
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.0371, dtype=torch.float32)
    bias = torch.randn(n, generator=gen) if with_bias else None
    assert dispatch.select("ternary_linear", device).backend == "triton"
    d = device
    w = layouts.convert(packed, "tiled", layout).to(d)
    got = lk.ternary_linear(x.to(d), w, gamma.to(d), None if bias is None else bias.to(d), layout=layout)
    assert_same(got, ref.ternary_linear(x, packed, gamma, bias))


# (M, K, N, SPLIT_K): the fused path (1), three splits of 9 tiles (K = 257) and of 4 (K = 100, the
# last split partial), four splits of 2 tiles (K = 33: two splits empty), M = 16 (BLOCK_M = 16)
SPLIT_CASES = ((1, 257, 13, 1), (3, 257, 9, 3), (3, 100, 13, 3), (16, 33, 9, 4), (1, 100, 13, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n,split", SPLIT_CASES)
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_triton_gemv_split_k(triton_backend, monkeypatch, device, m, k, n, split, layout):
    """Decode GEMV with a forced SPLIT_K: int32 sums and the float32 epilogue bit-identical."""
    from lmops_kernels.backends.triton import ternary as T

    seen = []
    monkeypatch.setattr(T, "_gemv_split_k", lambda *args: seen.append(args) or split)
    gen = seeded(m * 5 + k * 11 + n + split)
    x_q = random_int8(m, k, gen)
    x = random_activations((m, k), torch.float32, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.0371, dtype=torch.float32)
    bias = torch.randn(n, generator=gen)
    w = layouts.convert(packed, "tiled", layout).to(device)
    assert_same(lk.ternary_matmul_int(x_q.to(device), w, layout=layout), ref.ternary_matmul_int(x_q, packed))
    got = lk.ternary_linear(x.to(device), w, gamma.to(device), bias.to(device), layout=layout)
    assert_same(got, ref.ternary_linear(x, packed, gamma, bias))
    got = lk.ternary_linear(x.to(device), w, gamma.to(device), None, layout=layout)
    assert_same(got, ref.ternary_linear(x, packed, gamma, None))
    assert [a[:3] for a in seen] == [(m, n, (k + 15) // 16)] * 3  # the GEMV ran, asking for a split each time


@pytest.mark.parametrize("device", DEVICES)
def test_triton_default_split(triton_backend, monkeypatch, device):
    """The launcher's own split: 2 under the interpreter, the SM-count rule on a GPU (K = 4096,
    N = 96 splits on any GPU); bit-identical either way."""
    from lmops_kernels.backends.triton import ternary as T

    rule = T._gemv_split_k
    chosen = []
    monkeypatch.setattr(T, "_gemv_split_k", lambda *args: chosen.append(rule(*args)) or chosen[-1])
    m, k, n = (3, 100, 13) if device == "cpu" else (1, 4096, 96)
    gen = seeded(k + n)
    x = random_activations((m, k), torch.float32, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.02, dtype=torch.float32)
    w = layouts.convert(packed, "tiled", "planes").to(device)
    got = lk.ternary_linear(x.to(device), w, gamma.to(device), layout="planes")
    assert_same(got, ref.ternary_linear(x, packed, gamma))
    assert len(chosen) == 1 and (chosen[0] == 2 if device == "cpu" else chosen[0] > 1), chosen


@pytest.mark.skipif(not HAS_TRITON or TRITON_IN_PROCESS, reason="needs triton (runs outside the interpreter)")
def test_gemv_split_k_rule(monkeypatch):
    """The split rule for a 132-SM GPU (host arithmetic only: no GPU needed)."""
    from lmops_kernels.backends.triton import ternary as T

    monkeypatch.setattr(T, "interpreting", lambda: False)
    monkeypatch.setattr(T, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    # (M, N, KB) -> SPLIT_K: 4096 x 4096 fills 132 SMs at 8 splits (M = 1); M = 16 keeps >= 64
    # k-blocks per split; wide layers need fewer splits; K < 1024 (KB < 64) never splits
    for (m, n, kb), want in {
        (1, 4096, 256): 8, (16, 4096, 256): 4, (1, 14336, 256): 4, (1, 4096, 896): 8, (1, 65536, 256): 1,
        (1, 4096, 63): 1, (1, 4096, 64): 2, (1, 65, 17): 1, (8, 2560, 432): 8,
    }.items():
        assert T._gemv_split_k(m, n, kb, cuda) == want, (m, n, kb)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_bitlinear_planes_layout_and_neutral_state_dict(monkeypatch, device):
    """Under the triton backend a packed BitLinear keeps "planes" weights; its state_dict is the
    canonical "tiled" packing, loads into a layer on the reference backend (and back) with identical
    float32 outputs (the triton kernels equal the reference bit for bit in float32)."""
    from lmops.bitnet import BitLinear

    m, k, n = 3, 100, 13
    gen = seeded(41)
    q = random_ternary(n, k, gen)
    bias = torch.randn(n, generator=gen)
    x = random_activations((m, k), torch.float32, gen)
    dispatch.force("triton")
    layer = BitLinear.from_ternary(q, 0.0371, bias).to(device)
    assert layer.weight_layout == "planes" and "weight_layout='planes'" in repr(layer)
    assert torch.equal(layer.weight_packed.cpu(), layouts.convert(lk.pack_ternary(q), "tiled", "planes"))
    with torch.no_grad():
        got = layer(x.to(device)).cpu()
    sd = layer.state_dict()
    assert torch.equal(sd["weight_packed"].cpu(), lk.pack_ternary(q))  # canonical, whatever is in memory

    dispatch.force("reference")
    plain = BitLinear.from_ternary(torch.zeros_like(q), 1.0, torch.zeros(n))
    assert plain.weight_layout == "tiled"
    plain.load_state_dict({key: v.cpu() for key, v in sd.items()})
    with torch.no_grad():
        want = plain(x)
    assert_same(got, want)
    assert_same(got, ref.ternary_linear(x, lk.pack_ternary(q), torch.tensor(0.0371), bias))

    # and back: a reference-backend checkpoint into a fresh triton-backend layer
    dispatch.force("triton")
    again = BitLinear.from_ternary(torch.zeros_like(q), 1.0, torch.zeros(n)).to(device)
    assert again.weight_layout == "planes"
    again.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert_same(again(x.to(device)), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", [SHAPES[1], SHAPES[2]])
def test_triton_linear_bfloat16(triton_backend, device, m, k, n):
    gen = seeded(m + k + n)
    x = random_activations((2, m, k), torch.bfloat16, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.02, dtype=torch.float32)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    d = device
    got = lk.ternary_linear(x.to(d), packed.to(d), gamma.to(d), bias.to(d)).cpu()
    want = ref.ternary_linear(x, packed, gamma, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (2, m, n)
    assert_within_one_rounding(got, want)


def test_triton_unavailable_without_interpreter(monkeypatch):
    from lmops_kernels.backends import triton as lk_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.force("triton")
    assert "TRITON_INTERPRET=1" in (lk_triton.unavailable("cpu") or "")
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="triton backend of 'ternary_linear' is unavailable"):
        lk.ternary_linear(x, lk.pack_ternary(torch.zeros(3, 16, dtype=torch.int8)), torch.tensor(1.0))
    dispatch.force(None)
    assert dispatch.select("ternary_linear", "cpu").backend != "triton"  # never chosen automatically on CPU


@pytest.mark.skipif(TRITON_IN_PROCESS or not HAS_TRITON, reason="this process runs the triton cases itself (or no triton)")
def test_triton_cpu_in_subprocess():
    # the subprocess imports the same lmops_kernels as this one, installed or not (pytest's cwd is here)
    root = os.path.dirname(os.path.dirname(os.path.abspath(lk.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", LMOPS_BACKEND="triton", PYTHONPATH=path)
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
    from lmops.bitnet import BitLinear

    gen = seeded(k + n)
    bias = torch.randn(n, generator=gen)
    return BitLinear.from_ternary(random_ternary(n, k, gen), 0.05, bias).to(device).eval()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")
@pytest.mark.parametrize("m,k", [(1, 300), (16, 300), (40, 300), (1, 4096), (16, 4096)])
def test_triton_cuda_graph_capture(triton_backend, m, k):
    """K = 4096 (N = 77) splits the decode GEMV on any GPU: zeroed buffer, atomics and the epilogue
    kernel are captured and replayed too."""
    layer = _packed_layer(k, 77, "cuda")
    x = random_activations((m, k), torch.float32, seeded(m)).cuda()
    want = ref.ternary_linear(x.cpu(), layer.weight_packed_as().cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
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
        graph.replay()
        torch.cuda.synchronize()
        assert_same(y, want)  # the captured call, on the input it was captured with
        x.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
    want2 = ref.ternary_linear(x.cpu(), layer.weight_packed_as().cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
    assert_same(y, want2)  # and on new input written into the captured buffer


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and triton")
def test_triton_torch_compile(triton_backend):
    layer = _packed_layer(257, 65, "cuda")
    x = random_activations((3, 5, 257), torch.bfloat16, seeded(3)).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        eager = layer(x)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
    want = ref.ternary_linear(x.cpu(), layer.weight_packed_as().cpu(), layer.weight_scale.cpu(), layer.bias.cpu())
    assert_within_one_rounding(got, want)
