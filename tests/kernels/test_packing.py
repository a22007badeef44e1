"""2-bit ternary layouts: the lmops tiled packing and the transformers BitNet packing.

Exact tests only: packing is lossless, so every comparison is ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmops_kernels as lk
from kernel_data import random_ternary
from lmops_kernels.reference import packed_shape

hf_bitnet = pytest.importorskip("transformers.integrations.bitnet")


def hf_pack(q: torch.Tensor) -> torch.Tensor:
    # pack_weights adds 1 to its argument in place: give it a copy.
    return hf_bitnet.pack_weights(q.clone())


def hf_unpack(packed: torch.Tensor, dtype: torch.dtype = torch.int16) -> torch.Tensor:
    # unpack_weights is wrapped in torch.compile; its plain Python function gives the same numbers
    # (integer bit operations) without a compile per shape.
    fn = getattr(hf_bitnet.unpack_weights, "_torchdynamo_orig_callable", hf_bitnet.unpack_weights)
    return fn(packed, dtype)


def spec_pack(q: torch.Tensor) -> torch.Tensor:
    """The tiled layout written out from its documentation, one weight at a time (small shapes only)."""
    n, k = q.shape
    kb_count = (k + 15) // 16
    out = []
    for nb in range((n + 7) // 8):
        width = min(8, n - 8 * nb)
        for kb in range(kb_count):
            for c in range(width):
                for kk in range(4):
                    byte = 0
                    for j in range(4):
                        row, col = 8 * nb + c, 16 * kb + 4 * j + kk
                        code = int(q[row, col]) + 1 if col < k else 1
                        byte |= code << (2 * j)
                    out.append(byte)
    return torch.tensor(out, dtype=torch.uint8).view(n, 4 * kb_count)


# ---------------------------------------------------------------------------------------------
# lmops tiled layout
# ---------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, k, seed):
    q = random_ternary(n, k, torch.Generator().manual_seed(seed))
    packed = lk.pack_ternary(q)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == packed_shape(n, k) == (n, 4 * ((k + 15) // 16))
    assert torch.equal(lk.unpack_ternary(packed, n, k), q)


@pytest.mark.parametrize("n,k", [(1000, 4000), (11008, 17), (3, 40000)])
def test_pack_unpack_round_trip_large(n, k):
    q = random_ternary(n, k, torch.Generator().manual_seed(n * 7 + k))
    packed = lk.pack_ternary(q)
    assert tuple(packed.shape) == (n, 4 * ((k + 15) // 16))
    assert torch.equal(lk.unpack_ternary(packed, n, k), q)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_pack_matches_documented_byte_order(n, k, seed):
    q = random_ternary(n, k, torch.Generator().manual_seed(seed))
    assert torch.equal(lk.pack_ternary(q), spec_pack(q))


@pytest.mark.parametrize("n,k", [(9, 17), (8, 16), (1, 1), (13, 100)])
def test_padding_reads_as_zero_weights(n, k):
    """Positions k >= K hold code 1: unpacking with K rounded up to 16 shows zeros there."""
    q = random_ternary(n, k, torch.Generator().manual_seed(1))
    k_pad = 16 * ((k + 15) // 16)
    wide = lk.unpack_ternary(lk.pack_ternary(q), n, k_pad)
    assert torch.equal(wide[:, :k], q)
    assert bool((wide[:, k:] == 0).all())


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_pack_accepts_integer_dtypes(dtype):
    gen = torch.Generator().manual_seed(2)
    q = random_ternary(21, 35, gen)
    # uint8 cannot hold -1; a uint8 matrix of {0, 1} is still ternary
    src = q.abs().to(dtype) if dtype == torch.uint8 else q.to(dtype)
    assert torch.equal(lk.unpack_ternary(lk.pack_ternary(src), 21, 35), src.to(torch.int8))


def test_pack_non_contiguous_input():
    q = random_ternary(40, 30, torch.Generator().manual_seed(3))
    qt = q.t()  # (30, 40), not contiguous
    assert not qt.is_contiguous()
    assert torch.equal(lk.pack_ternary(qt), lk.pack_ternary(qt.contiguous()))


# ---------------------------------------------------------------------------------------------
# transformers BitNet layout
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 75), k=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_hf_layout_equals_transformers_pack_weights(rows, k, seed):
    n = 4 * rows  # transformers' BitLinear holds out_features // 4 packed rows
    q = random_ternary(n, k, torch.Generator().manual_seed(seed))
    packed = lk.to_hf_bitnet(q)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (rows, k)
    assert torch.equal(packed, hf_pack(q))
    assert torch.equal(hf_unpack(packed), q.to(torch.int16))
    assert torch.equal(lk.from_hf_bitnet(hf_pack(q), n), q)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_hf_round_trip_any_out_features(n, k, seed):
    q = random_ternary(n, k, torch.Generator().manual_seed(seed))
    packed = lk.to_hf_bitnet(q)
    assert tuple(packed.shape) == ((n + 3) // 4, k)
    assert torch.equal(lk.from_hf_bitnet(packed, n), q)
    # transformers' unpacker reads the same rows (it returns 4 * ceil(n / 4) rows; the rest is padding)
    assert torch.equal(hf_unpack(packed)[:n], q.to(torch.int16))
    # and our reader accepts transformers' packing of a non-multiple of 4 (its padding codes are never read)
    assert torch.equal(lk.from_hf_bitnet(hf_pack(q), n), q)


def test_hf_to_lmops_conversion():
    """transformers checkpoint -> lmops tiled layout, the path a converter takes."""
    q = random_ternary(256, 200, torch.Generator().manual_seed(5))
    tiled = lk.pack_ternary(lk.from_hf_bitnet(hf_pack(q), 256))
    assert torch.equal(lk.unpack_ternary(tiled, 256, 200), q)


# ---------------------------------------------------------------------------------------------
# errors at the op boundary
# ---------------------------------------------------------------------------------------------


def test_pack_rejects_float_q():
    with pytest.raises(TypeError, match=r"^q: .*float32"):
        lk.pack_ternary(torch.randn(4, 16))


def test_pack_rejects_bool_and_wrong_rank():
    with pytest.raises(TypeError, match=r"^q: "):
        lk.pack_ternary(torch.rand(4, 16) > 0.5)
    with pytest.raises(ValueError, match=r"^q: .*\(out_features, in_features\)"):
        lk.pack_ternary(torch.randint(-1, 2, (16,), dtype=torch.int8))
    with pytest.raises(ValueError, match=r"^q: .*non-empty"):
        lk.pack_ternary(torch.empty(0, 16, dtype=torch.int8))
    with pytest.raises(TypeError, match=r"^q: expected a torch.Tensor"):
        lk.pack_ternary([[1, 0, -1]])


def test_unpack_rejects_wrong_packed_shape_and_dtype():
    packed = lk.pack_ternary(random_ternary(9, 33, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match=r"^packed: expected shape \(9, 12\).*got \(9, 8\)"):
        lk.unpack_ternary(packed[:, :8], 9, 33)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(10, 12\)"):
        lk.unpack_ternary(packed, 10, 33)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(9, 4\)"):
        lk.unpack_ternary(packed, 9, 16)
    with pytest.raises(TypeError, match=r"^packed: expected uint8.*torch.int8"):
        lk.unpack_ternary(packed.to(torch.int8), 9, 33)


@pytest.mark.parametrize("bad", [0, -3, 2.0, None])
def test_unpack_rejects_bad_sizes(bad):
    packed = lk.pack_ternary(random_ternary(9, 33, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match=r"^out_features: expected a positive int"):
        lk.unpack_ternary(packed, bad, 33)
    with pytest.raises(ValueError, match=r"^in_features: expected a positive int"):
        lk.unpack_ternary(packed, 9, bad)


def test_hf_layout_errors():
    q = random_ternary(8, 5, torch.Generator().manual_seed(8))
    packed = lk.to_hf_bitnet(q)
    with pytest.raises(TypeError, match=r"^q: "):
        lk.to_hf_bitnet(q.float())
    with pytest.raises(ValueError, match=r"^out_features: expected a positive int, got 0"):
        lk.from_hf_bitnet(packed, 0)
    with pytest.raises(ValueError, match=r"^packed: expected shape \(3, in_features\) for out_features=9"):
        lk.from_hf_bitnet(packed, 9)
    with pytest.raises(TypeError, match=r"^packed: expected uint8"):
        lk.from_hf_bitnet(packed.to(torch.int32), 8)
