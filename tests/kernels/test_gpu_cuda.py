"""The ``cuda`` backend (lmops' CUDA kernels, ``csrc/cuda``) against the plain-torch reference.

GPU only (``@pytest.mark.gpu``): skipped, with the reason, where no sm_80+ GPU is visible or the
extension was built without CUDA. The same checks as the Triton tests, on real CUDA tensors:

- ``quantize_activation_absmax`` bit-identical (NaN and Inf rows, 8/4/2 bits, leading dims, strides);
- ``ternary_matmul_int`` bit-identical int32 for the dp4a GEMV (``M <= 16``) and the int8 mma.sync
  GEMM (``M > 16``, each of its three warp-tile widths), on odd shapes: ``N % 8 != 0`` (narrow last n-block), ``K % 16 != 0`` and
  ``K % 32 == 16`` (the GEMM's half k-step), plus the extreme sums ``|acc| = 128 K``;
- ``ternary_linear`` bit-identical in float32 (the epilogue rounds like the reference), within one
  bfloat16/float16 rounding step in those dtypes; bias, NaN rows, 3-D and non-contiguous inputs;
- CUDA-graph capture and replay with new inputs and a new ``weight_scale`` (no host read), and
  ``torch.compile(fullgraph=True)`` of a packed ``BitLinear`` on both GPU backends;
- argument errors name the argument (weight_scale on the CPU while x is on the GPU).

The CPU reference runs on CPU copies of the same data.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import lmops_kernels as lk
from lmops_kernels import dispatch
from lmops_kernels.backends import cuda as cuda_backend
from lmops_kernels import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from kernel_data import assert_same, assert_within_one_rounding, extreme_matmul, random_activations, random_int8, random_ternary, seeded  # noqa: E402

_REASON = cuda_backend.unavailable("cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"cuda backend: {_REASON}")]

# (M, K, N): GEMV for M <= 16, GEMM above; K = 272 is 16 mod 32, 4097 spans many GEMM k-stages
SHAPES = ((1, 33, 7), (3, 100, 13), (16, 272, 65), (17, 257, 65), (65, 272, 1000), (1, 4097, 129), (130, 4097, 37))


@pytest.fixture
def cuda_forced(monkeypatch):
    dispatch.force("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 33), (3, 100), (17, 4097), (5, 1)])
def test_cuda_quantize_activation(cuda_forced, dtype, m, k):
    x = random_activations((m, k), dtype, seeded(m * 1000 + k))
    if m >= 3:
        x[1, k // 2] = float("nan")
        x[2, 0] = float("-inf")
    assert dispatch.select("quantize_activation_absmax", "cuda").backend == "cuda"
    for bits in (8, 4, 2):
        q, s = lk.quantize_activation_absmax(x.cuda(), bits)
        q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
        assert_same(q, q_ref)
        assert_same(s, s_ref)


def test_cuda_quantize_strided_and_batched(cuda_forced):
    x3 = random_activations((2, 3, 80), torch.float32, seeded(5)).cuda()[..., ::2]
    q, s = lk.quantize_activation_absmax(x3)
    q_ref, s_ref = ref.quantize_activation_absmax(x3.cpu())
    assert_same(q, q_ref)
    assert_same(s, s_ref)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_cuda_matmul_int(cuda_forced, m, k, n):
    gen = seeded(m * 7 + k * 13 + n)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    assert dispatch.select("ternary_matmul_int", "cuda").backend == "cuda"
    assert_same(lk.ternary_matmul_int(x_q.cuda(), packed.cuda()), ref.ternary_matmul_int(x_q, packed))


def test_cuda_matmul_int_extremes(cuda_forced):
    m, k, n = 40, 4099, 11
    x_q, q = extreme_matmul(m, k, n)
    packed = lk.pack_ternary(q)
    for rows in (m, 2):  # GEMM and GEMV
        assert_same(lk.ternary_matmul_int(x_q[:rows].cuda(), packed.cuda()), ref.ternary_matmul_int(x_q[:rows], packed))


def _gemm_tile_width(m: int, n: int, sms: int) -> int:
    # mirror of launch_ternary_gemm's rule (csrc/cuda/ternary_kernels.cu): the widest warp tile
    # (NT n-blocks of 8 columns per warp, 4 warps, 64 rows per block) that gives every SM a block
    m_tiles, nb = -(-m // 64), -(-n // 8)
    for nt in (4, 2):
        if m_tiles * -(-nb // (4 * nt)) >= sms:
            return nt
    return 1


def _shape_for_tile_width(nt: int, sms: int) -> tuple[int, int, int]:
    if nt == 4:
        return 64 * (-(-sms // 16) + 1) - 5, 272, 2001  # 251 n-blocks, the last 1 column wide
    if nt == 2:
        return 64 * -(-sms // 17) - 3, 272, 1037  # 130 n-blocks, the last 5 columns wide
    return 17, 4097, 65


@pytest.mark.parametrize("nt", [4, 2, 1])
def test_cuda_gemm_every_tile_width(cuda_forced, nt):
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    m, k, n = _shape_for_tile_width(nt, sms)
    assert _gemm_tile_width(m, n, sms) == nt, (m, n, sms)
    gen = seeded(nt * 101 + sms)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    assert_same(lk.ternary_matmul_int(x_q.cuda(), packed.cuda()), ref.ternary_matmul_int(x_q, packed))
    x = random_activations((m, k), torch.float32, gen)
    gamma, bias = torch.tensor(0.041), torch.randn(n, generator=gen)
    got = lk.ternary_linear(x.cuda(), packed.cuda(), gamma.cuda(), bias.cuda())
    assert_same(got, ref.ternary_linear(x, packed, gamma, bias))


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_cuda_linear_float32(cuda_forced, m, k, n, with_bias):
    gen = seeded(m * 31 + k * 3 + n + with_bias)
    x = random_activations((m, k), torch.float32, gen)
    if m >= 3:
        x[2, 1] = float("nan")  # that output row is NaN, the others are unaffected
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.0371, dtype=torch.float32)
    bias = torch.randn(n, generator=gen) if with_bias else None
    assert dispatch.select("ternary_linear", "cuda").backend == "cuda"
    got = lk.ternary_linear(x.cuda(), packed.cuda(), gamma.cuda(), None if bias is None else bias.cuda())
    assert_same(got, ref.ternary_linear(x, packed, gamma, bias))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [SHAPES[1], SHAPES[3], SHAPES[4]])
def test_cuda_linear_half(cuda_forced, dtype, m, k, n):
    gen = seeded(m + k + n)
    x = random_activations((2, m, k), dtype, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor(0.02, dtype=torch.float32)
    bias = torch.randn(n, generator=gen).to(dtype)
    got = lk.ternary_linear(x.cuda(), packed.cuda(), gamma.cuda(), bias.cuda()).cpu()
    want = ref.ternary_linear(x, packed, gamma, bias)
    assert got.dtype == dtype and got.shape == (2, m, n)
    assert_within_one_rounding(got, want)


def test_cuda_linear_noncontiguous_and_unaligned(cuda_forced):
    gen = seeded(11)
    x = random_activations((4, 7, 130), torch.float32, gen).cuda()[:, ::2, 1:]  # (4, 4, 129), strided
    packed = lk.pack_ternary(random_ternary(21, 129, gen))
    storage = torch.empty(packed.numel() + 3, dtype=torch.uint8, device="cuda")
    unaligned = storage[3:].view(packed.shape)  # 16-byte loads need a copy: the binding makes one
    unaligned.copy_(packed.cuda())
    gamma = torch.tensor([0.5])
    got = lk.ternary_linear(x, unaligned, gamma.cuda())
    assert_same(got, ref.ternary_linear(x.cpu(), packed, gamma))


def test_cuda_weight_scale_device_error(cuda_forced):
    x = torch.randn(2, 32, device="cuda")
    packed = lk.pack_ternary(random_ternary(5, 32, seeded(1))).cuda()
    with pytest.raises(ValueError, match="weight_scale"):
        lk.ternary_linear(x, packed, torch.tensor(1.0))


def _packed_layer(k: int, n: int):
    from lmops.bitnet import BitLinear

    gen = seeded(k + n)
    return BitLinear.from_ternary(random_ternary(n, k, gen), 0.05, torch.randn(n, generator=gen)).cuda().eval()


def _ref_layer(layer, x: torch.Tensor) -> torch.Tensor:
    sd = layer.state_dict()  # canonical (tiled) whatever layout the layer holds in memory
    return ref.ternary_linear(x.cpu(), sd["weight_packed"].cpu(), sd["weight_scale"].cpu(), sd["bias"].cpu())


def _skip_without(backend: str) -> None:
    if backend == "triton":
        from lmops_kernels.backends import triton as lk_triton

        reason = lk_triton.unavailable("cuda")
        if reason is not None:
            pytest.skip(f"triton backend: {reason}")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("m", [1, 16, 40])
def test_cuda_graph_capture(monkeypatch, backend, m):
    _skip_without(backend)
    dispatch.force(backend)
    layer = _packed_layer(300, 77)
    x = random_activations((m, 300), torch.float32, seeded(m)).cuda()
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up (Triton autotuning) outside the capture
                layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = layer(x)
        x.copy_(random_activations((m, 300), torch.float32, seeded(m + 1)).cuda())
        layer.weight_scale.fill_(0.125)  # read on the device by the kernels: the replay must see it
        graph.replay()
        torch.cuda.synchronize()
    assert_same(y, _ref_layer(layer, x))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_torch_compile_packed_bitlinear(monkeypatch, backend):
    _skip_without(backend)
    dispatch.force(backend)
    layer = _packed_layer(257, 65)
    x = random_activations((3, 5, 257), torch.bfloat16, seeded(3)).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        eager = layer(x)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
    assert_within_one_rounding(got, _ref_layer(layer, x))


def test_auto_dispatch_prefers_cuda(monkeypatch):
    dispatch.force(None)
    for op in ("quantize_activation_absmax", "ternary_matmul_int", "ternary_linear"):
        assert dispatch.select(op, "cuda").backend == "cuda", op


def test_bitlinear_checkpoint_cpu_gpu_round_trip(monkeypatch):
    dispatch.force(None)
    from lmops.bitnet import BitLinear

    gen = seeded(99)
    cpu_layer = BitLinear.from_ternary(random_ternary(45, 70, gen), 0.03, torch.randn(45, generator=gen)).eval()
    x = random_activations((6, 70), torch.float32, gen)
    want = cpu_layer(x)
    gpu_layer = BitLinear.from_ternary(random_ternary(45, 70, gen), 1.0, torch.randn(45, generator=gen)).cuda()
    gpu_layer.load_state_dict(cpu_layer.state_dict())
    assert_same(gpu_layer(x.cuda()), want)
    back = gpu_layer.cpu()
    for key, value in back.state_dict().items():
        assert torch.equal(value, cpu_layer.state_dict()[key]), key
    assert_same(back(x), want)
