"""Packed weight layouts (``lmops_kernels.layouts``), the ops' ``layout`` argument, and ``BitLinear``
keeping one in-memory layout per backend with a backend-neutral (``tiled``) state_dict.

Tolerance: none anywhere. Layout conversion is exact (a bijection on the bytes: it moves the 2-bit
codes between bytes, so it is checked on arbitrary bytes too), and every op result here is compared
with ``torch.equal`` against the same op on the canonical layout (integer products are exact; the
float32 epilogue is the same operations in the same order).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import lmops_kernels as lk
from kernel_data import random_activations, random_int8, random_ternary, seeded
from lmops.bitnet import BitLinear
from lmops_kernels import _native, dispatch, layouts
from lmops_kernels import reference as ref

NS = [1, 7, 8, 13, 65]
KS = [1, 15, 16, 33, 257]
# (M, K, N) for the op tests: odd, a narrow last n-block, M on both sides of the GEMV/GEMM split
OP_SHAPES = [(1, 33, 13), (5, 257, 65), (17, 15, 7), (3, 100, 9)]


def planes_by_definition(q: torch.Tensor) -> torch.Tensor:
    """The "planes" layout written element by element from its definition: byte ``[n, b]``
    (``b < 4 KB``), bit pair ``j``, holds code ``q + 1`` of weight ``(n, k = j * 4 KB + b)``;
    padding (``k >= K``) is code 1."""
    n, k = q.shape
    width = 4 * ((k + 15) // 16)  # 4 KB bytes per column
    out = [[0] * width for _ in range(n)]
    for row in range(n):
        for b in range(width):
            byte = 0
            for j in range(4):
                col = j * width + b
                code = int(q[row, col]) + 1 if col < k else 1
                byte |= code << (2 * j)
            out[row][b] = byte
    return torch.tensor(out, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
def test_convert_round_trip_exact(n, k):
    q = random_ternary(n, k, seeded(100 * n + k))
    tiled = lk.pack_ternary(q)
    planes = layouts.convert(tiled, "tiled", "planes")
    assert planes.dtype == torch.uint8 and planes.shape == tiled.shape and planes.is_contiguous()
    assert torch.equal(layouts.convert(planes, "planes", "tiled"), tiled)
    assert layouts.convert(tiled, "tiled", "tiled") is tiled
    assert layouts.convert(planes, "planes", "planes") is planes
    # the two layouts coincide only with one k-block (K <= 16); elsewhere the codes really move
    if k > 16:
        assert not torch.equal(planes, tiled)
    # a bijection on bytes: arbitrary bytes (padding codes other than 1, code 3) survive both ways
    junk = torch.randint(0, 256, tiled.shape, generator=seeded(n + k), dtype=torch.uint8)
    assert torch.equal(layouts.convert(layouts.convert(junk, "tiled", "planes"), "planes", "tiled"), junk)
    assert torch.equal(layouts.convert(layouts.convert(junk, "planes", "tiled"), "tiled", "planes"), junk)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
def test_planes_layout_matches_its_definition(n, k):
    q = random_ternary(n, k, seeded(7 * n + 3 * k))
    assert torch.equal(layouts.convert(lk.pack_ternary(q), "tiled", "planes"), planes_by_definition(q))
    assert torch.equal(layouts.convert(planes_by_definition(q), "planes", "tiled"), lk.pack_ternary(q))


def test_convert_non_contiguous_and_meta():
    q = random_ternary(13, 33, seeded(5))
    tiled = lk.pack_ternary(q)
    wide = torch.cat([tiled, tiled], dim=1)[:, : tiled.shape[1]]  # a strided view with the same bytes
    assert not wide.is_contiguous()
    assert torch.equal(layouts.convert(wide, "tiled", "planes"), planes_by_definition(q))
    planes = planes_by_definition(q)
    wide_planes = torch.cat([planes, planes], dim=1)[:, : planes.shape[1]]
    assert not wide_planes.is_contiguous()
    assert torch.equal(layouts.convert(wide_planes, "planes", "tiled"), tiled)
    for src, dst in (("tiled", "planes"), ("planes", "tiled")):
        meta = layouts.convert(tiled.to("meta"), src, dst)
        assert meta.device.type == "meta" and meta.shape == tiled.shape and meta.dtype == torch.uint8


def test_convert_and_check_layout_errors():
    packed = lk.pack_ternary(random_ternary(9, 20, seeded(6)))
    with pytest.raises(ValueError, match=r"src: expected one of \('tiled', 'planes'\), got 'cols'"):
        layouts.convert(packed, "cols", "tiled")
    with pytest.raises(ValueError, match=r"dst: expected one of .* got None"):
        layouts.convert(packed, "tiled", None)
    with pytest.raises(ValueError, match=r"packed: expected a uint8 tensor of shape \(N, 4 \* KB\), got torch.int8"):
        layouts.convert(packed.to(torch.int8), "tiled", "planes")
    with pytest.raises(ValueError, match=r"packed: .*got torch.uint8 \(9, 7\)"):
        layouts.convert(packed[:, :7], "tiled", "planes")
    with pytest.raises(TypeError, match="packed: expected a torch.Tensor, got list"):
        layouts.convert([1, 2], "tiled", "planes")
    assert layouts.check_layout("planes") == "planes"
    with pytest.raises(ValueError, match=r"layout: expected one of \('tiled', 'planes'\), got 'rows'"):
        layouts.check_layout("rows")  # the earlier per-column layout that "planes" replaced


# ---------------------------------------------------------------------------------------------
# the ops' layout argument
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def spy_on(monkeypatch, op: str, backend: str):
    """Wraps ``backend``'s implementation of ``op``: yields the list of ``(layout, packed)`` it got. A native
    kernel (C++, converting through the ``lmops::convert_layout`` op) is observed through that op."""
    calls: list[tuple[str, torch.Tensor]] = []
    impl = dispatch._TABLE[op][backend]
    if impl.fn is None:
        op, impl = "convert_layout", dispatch._TABLE["convert_layout"]["reference"]

        def fn(packed, src, dst):
            out = impl.fn(packed, src, dst)
            calls.append((dst, out))
            return out
    else:

        def fn(*args, layout):
            calls.append((layout, args[1]))
            return impl.fn(*args, layout=layout)

    with monkeypatch.context() as mp:
        mp.setitem(dispatch._TABLE[op], impl.backend, dataclasses.replace(impl, fn=fn))
        mp.setattr(dispatch, "_AUTO_CACHE", {})
        yield calls


def _backends():
    native = [] if _native.available() else [pytest.mark.skip(reason=f"native extension missing: {_native.missing_reason()}")]
    return [pytest.param("reference", id="reference"), pytest.param("cpu", id="cpu", marks=native)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("m,k,n", OP_SHAPES)
def test_ops_planes_equal_tiled(monkeypatch, use_backend, backend, m, k, n):
    """Reference and native cpu read "tiled" only: given "planes" they get a converted copy, and the
    result equals the "tiled" call bit for bit (forward and the STE backward)."""
    use_backend(backend)
    gen = seeded(m * 1000 + k * 10 + n)
    q = random_ternary(n, k, gen)
    tiled = lk.pack_ternary(q)
    planes = layouts.convert(tiled, "tiled", "planes")
    x_q = random_int8(m, k, gen)
    x = random_activations((2, m, k), torch.float32, gen)
    gamma = torch.rand((), generator=gen) * 0.05 + 0.005
    bias = torch.randn(n, generator=gen)

    want_int = lk.ternary_matmul_int(x_q, tiled)
    assert torch.equal(want_int, (x_q.double() @ q.double().t()).to(torch.int32))
    with spy_on(monkeypatch, "ternary_matmul_int", backend) as calls:
        got_int = lk.ternary_matmul_int(x_q, planes, layout="planes")
    assert torch.equal(got_int, want_int)
    assert [c[0] for c in calls] == ["tiled"] and torch.equal(calls[0][1], tiled)

    want = lk.ternary_linear(x, tiled, gamma, bias)
    with spy_on(monkeypatch, "ternary_linear", backend) as calls:
        got = lk.ternary_linear(x, planes, gamma, bias, layout="planes")
    assert torch.equal(got, want)
    assert [c[0] for c in calls] == ["tiled"] and torch.equal(calls[0][1], tiled)

    # through the operator and autograd: the backward unpacks the "planes" weights correctly
    grads = []
    for packed, layout in ((tiled, "tiled"), (planes, "planes")):
        xg = x.clone().requires_grad_()
        bg = bias.clone().requires_grad_()
        y = lk.ternary_linear(xg, packed, gamma, bg, layout=layout)
        assert torch.equal(y.detach(), want)
        (y * torch.linspace(-1, 2, n)).sum().backward()
        grads.append((xg.grad, bg.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    w = q.double() * gamma.double()
    torch.testing.assert_close(  # the STE gradient itself, against float64, rtol 1e-5
        grads[1][0].double(), (torch.linspace(-1, 2, n).double() @ w).expand(2, m, k), rtol=1e-5, atol=1e-6
    )


def test_ops_bad_layout_name():
    gen = seeded(8)
    packed = lk.pack_ternary(random_ternary(7, 33, gen))
    x = random_activations((3, 33), torch.float32, gen)
    with pytest.raises(ValueError, match=r"layout: expected one of \('tiled', 'planes'\), got 'cols'"):
        lk.ternary_linear(x, packed, torch.tensor(0.1), layout="cols")
    with pytest.raises(ValueError, match=r"layout: expected one of .* got 3"):
        lk.ternary_matmul_int(random_int8(3, 33, gen), packed, layout=3)
    with pytest.raises(ValueError, match=r"layout: expected one of"):
        BitLinear.from_ternary(random_ternary(7, 33, gen), 0.1).relayout("transposed")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_opcheck_with_layout(use_backend, backend, layout):
    use_backend(backend)
    gen = seeded(20)
    packed = layouts.convert(lk.pack_ternary(random_ternary(13, 33, gen)), "tiled", layout)
    x = random_activations((5, 33), torch.float32, gen).requires_grad_()
    bias = torch.randn(13, generator=gen).requires_grad_()
    torch.library.opcheck(torch.ops.lmops.ternary_linear.default, (x, packed, torch.tensor(0.02), bias, layout))
    x3 = random_activations((2, 3, 33), torch.bfloat16, gen).requires_grad_()
    torch.library.opcheck(torch.ops.lmops.ternary_linear.default, (x3, packed, torch.tensor(0.1), None, layout))
    torch.library.opcheck(torch.ops.lmops.ternary_matmul_int.default, (random_int8(5, 33, gen), packed, layout))


def test_compile_fullgraph_with_layout():
    gen = seeded(23)
    q = random_ternary(37, 100, gen)
    planes = layouts.convert(lk.pack_ternary(q), "tiled", "planes")
    x = random_activations((2, 5, 100), torch.float32, gen)
    gamma = torch.tensor(0.03)
    bias = torch.randn(37, generator=gen)
    x_q = random_int8(6, 100, gen)

    def f(x, packed, gamma, bias, x_q):
        return lk.ternary_linear(x, packed, gamma, bias, layout="planes"), lk.ternary_matmul_int(x_q, packed, layout="planes")

    compiled = torch.compile(f, fullgraph=True)
    for got, want in zip(compiled(x, planes, gamma, bias, x_q), f(x, planes, gamma, bias, x_q)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(f(x, planes, gamma, bias, x_q)[1], (x_q.double() @ q.double().t()).to(torch.int32))


# ---------------------------------------------------------------------------------------------
# dispatch: layouts per implementation, preferred_layout
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def planes_backend(monkeypatch):
    """A stand-in accelerator backend that reads only "planes": registered as ``cuda`` for CPU tensors and
    forced (so it replaces the native CPU kernel at the CPU key), computing through the reference.
    Yields its calls."""
    calls: list[tuple[str, str]] = []

    def matmul_int(x_q, packed, layout):
        calls.append(("ternary_matmul_int", layout))
        return ref.ternary_matmul_int(x_q, layouts.convert(packed, layout, "tiled"))

    def linear(x, packed, weight_scale, bias=None, layout="tiled"):
        calls.append(("ternary_linear", layout))
        return ref.ternary_linear(x, layouts.convert(packed, layout, "tiled"), weight_scale, bias)

    with monkeypatch.context() as mp:
        dispatch.force(None)
        mp.setattr(dispatch, "_TABLE", {op: dict(impls) for op, impls in dispatch._TABLE.items()})
        mp.setattr(dispatch, "_AUTO_CACHE", {})
        dispatch.register("ternary_matmul_int", "cuda", ("cpu",), layouts=("planes",))(matmul_int)
        dispatch.register("ternary_linear", "cuda", ("cpu",), layouts=("planes",))(linear)
        dispatch.force("cuda")
        try:
            yield calls
        finally:
            dispatch.force(None)


def test_preferred_layout(monkeypatch, use_backend):
    use_backend(None)
    assert dispatch.preferred_layout("ternary_linear", "cpu") == "tiled"  # cpu or reference: both tiled
    use_backend("reference")
    assert dispatch.preferred_layout("ternary_matmul_int", "cpu") == "tiled"
    assert dispatch.select("ternary_linear", "cpu").layouts == ("tiled",)
    with planes_backend(monkeypatch):
        assert dispatch.preferred_layout("ternary_linear", "cpu") == "planes"
        with pytest.raises(RuntimeError, match="cannot run on meta tensors"):  # the forced stand-in serves cpu only
            dispatch.preferred_layout("ternary_linear", "meta")
        dispatch.force("reference")  # forcing honoured
        assert dispatch.preferred_layout("ternary_linear", "cpu") == "tiled"
    with pytest.raises(KeyError, match="no backend registered for op 'no_such_op'"):
        dispatch.preferred_layout("no_such_op", "cpu")


def test_register_validates_layouts(monkeypatch):
    monkeypatch.setattr(dispatch, "_TABLE", {})
    with pytest.raises(ValueError, match=r"layouts: expected one of \('tiled', 'planes'\), got 'cols'"):
        dispatch.register("x", "reference", ("cpu",), layouts=("planes", "cols"))
    with pytest.raises(ValueError, match=r"layouts: expected at least one layout name"):
        dispatch.register("x", "reference", ("cpu",), layouts=())
    assert dispatch._TABLE == {}


# ---------------------------------------------------------------------------------------------
# BitLinear: one in-memory layout, canonical state_dict
# ---------------------------------------------------------------------------------------------


def _layer_and_input(n=13, k=100, seed=30):
    gen = seeded(seed)
    q = random_ternary(n, k, gen)
    bias = torch.randn(n, generator=gen)
    x = random_activations((2, 3, k), torch.float32, gen)
    return q, BitLinear.from_ternary(q, 0.0371, bias), x


def test_bitlinear_state_dict_is_tiled_whatever_the_layout():
    q, layer, x = _layer_and_input()
    assert layer.weight_layout == "tiled"
    with torch.no_grad():
        want = layer(x)
    assert layer.relayout("planes") is layer
    assert layer.weight_layout == "planes" and "weight_layout='planes'" in repr(layer)
    assert torch.equal(layer.weight_packed, planes_by_definition(q))
    sd = layer.state_dict()
    assert torch.equal(sd["weight_packed"], lk.pack_ternary(q))
    assert torch.equal(layer.state_dict(keep_vars=True)["weight_packed"], lk.pack_ternary(q))
    assert torch.equal(layer.weight_packed_as(), lk.pack_ternary(q)) and layer.weight_packed_as("planes") is layer.weight_packed
    with torch.no_grad():
        assert torch.equal(layer(x), want)  # the cpu/reference backend gets a converted copy
    assert torch.equal(layer.ternary_weight()[0], q)
    assert torch.equal(layer.unpack().ternary_weight()[0], q)  # exact from "planes" too
    assert layer.weight_layout == "tiled" and not layer.is_packed
    assert "weight_layout" not in repr(layer)
    with pytest.raises(RuntimeError, match="weight_packed_as: the layer is in training mode"):
        layer.weight_packed_as()
    assert layer.relayout("planes") is layer and layer.weight_layout == "tiled"  # nothing packed to lay out


def test_bitlinear_load_tiled_into_planes_layer():
    q, src, x = _layer_and_input(seed=31)
    sd = src.state_dict()
    before = sd["weight_packed"].clone()
    _, dst, _ = _layer_and_input(seed=32)  # other weights, same shapes
    dst.relayout("planes")
    dst.load_state_dict(sd)
    assert dst.weight_layout == "planes"
    assert torch.equal(dst.weight_packed, planes_by_definition(q))
    assert torch.equal(sd["weight_packed"], before)  # the caller's dict is left as it was
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    # assign=True keeps the layer's layout too
    _, dst2, _ = _layer_and_input(seed=33)
    dst2.relayout("planes")
    dst2.load_state_dict(sd, assign=True)
    assert torch.equal(dst2.weight_packed, planes_by_definition(q))
    # a wrong dtype is an error, not a silent cast
    bad = dict(sd, weight_packed=sd["weight_packed"].to(torch.int16))
    with pytest.raises(RuntimeError, match=r"weight_packed: expected uint8, got torch.int16"):
        dst.load_state_dict(bad)


def test_bitlinear_layout_follows_backend(monkeypatch):
    """pack(), .to() and relayout() put the weights in the layout of the backend chosen for the device."""
    q, plain, x = _layer_and_input(seed=34)
    with torch.no_grad():
        want = plain(x)
    with planes_backend(monkeypatch) as calls:
        packed_here = BitLinear.from_ternary(q, 0.0371, plain.bias)
        assert packed_here.weight_layout == "planes"
        torch.manual_seed(35)
        trained = BitLinear(100, 13).pack()
        assert trained.weight_layout == "planes"
        assert torch.equal(trained.state_dict()["weight_packed"], lk.pack_ternary(trained.ternary_weight()[0]))
        assert torch.equal(trained.weight_packed, planes_by_definition(trained.ternary_weight()[0]))
        assert plain.weight_layout == "tiled"
        plain.to("cpu")  # _apply: same device, but the preferred layout changed
        assert plain.weight_layout == "planes"
        with torch.no_grad():
            assert torch.equal(packed_here(x), want) and torch.equal(plain(x), want)
        assert calls == [("ternary_linear", "planes")] * 2  # read in place, no conversion
        sd = plain.state_dict()
        assert torch.equal(sd["weight_packed"], lk.pack_ternary(q))
    # back on the plain backends: relayout() (e.g. after changing LMOPS_BACKEND) restores "tiled"
    assert plain.relayout().weight_layout == "tiled"
    fresh = BitLinear.from_ternary(torch.zeros_like(q), 1.0, torch.zeros(13))
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), want)


def test_bitlinear_unavailable_backend_keeps_canonical(monkeypatch):
    """A forced backend that cannot serve the device: packing and moving still work (canonical
    layout); the forward reports the backend error."""
    monkeypatch.setattr(dispatch, "_TABLE", {op: dict(impls) for op, impls in dispatch._TABLE.items()})
    monkeypatch.setattr(dispatch, "_AUTO_CACHE", {})
    dispatch.register("ternary_linear", "cuda", ("cuda",), layouts=("planes",))(lambda *a, **k: None)
    dispatch.force("cuda")
    with pytest.raises(RuntimeError, match="cannot run on cpu tensors"):
        dispatch.preferred_layout("ternary_linear", "cpu")
    q, layer, x = _layer_and_input(seed=36)
    assert layer.weight_layout == "tiled" and layer.to(torch.float64).weight_layout == "tiled"
    with pytest.raises(RuntimeError, match="cannot run on cpu tensors"):
        layer(x)


def test_compile_fullgraph_planes_bitlinear():
    q, layer, x = _layer_and_input(seed=37)
    with torch.no_grad():
        want = layer(x)
    layer.relayout("planes")
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), want)
