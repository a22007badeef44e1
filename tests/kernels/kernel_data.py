"""Random test data shared by the kernel tests (never all zeros; odd shapes welcome), and the exact
comparison the backend tests use."""

from __future__ import annotations

import torch


def random_ternary(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) int8 in {-1, 0, 1}, uniformly; matrices of >= 3 elements hold all three codes."""
    q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)
    if n * k >= 3:
        flat = q.view(-1)
        start = int(torch.randint(0, n * k - 2, (), generator=gen))
        flat[start : start + 3] = torch.tensor([-1, 0, 1], dtype=torch.int8)
    return q


def random_int8(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(m, k) int8 uniform over -128..127; -128 and 127 both present when m * k >= 2."""
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    if m * k >= 2:
        flat = x.view(-1)
        i, j = torch.randperm(m * k, generator=gen)[:2].tolist()
        flat[i], flat[j] = -128, 127
    return x


def random_activations(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Gaussian activations with a random magnitude per row (1e-2..1e2) and a few outliers, in ``dtype``."""
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if x.numel() == 0:
        return x.to(dtype)
    row_scale = torch.exp(torch.empty(*shape[:-1], 1).uniform_(-4.6, 4.6, generator=gen))
    x = x * row_scale
    outliers = torch.rand(shape, generator=gen) < 0.01
    x = torch.where(outliers, x * 8, x)
    return x.to(dtype)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (test data is made on the CPU, then moved)."""
    return torch.Generator().manual_seed(seed)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` (any device) equals ``want`` bit for bit: dtype, shape, values, NaN positions."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if got.dtype.is_floating_point:
        assert torch.equal(got.isnan(), want.isnan()), "NaN positions differ"
        got, want = got.nan_to_num(), want.nan_to_num()
    bad = got != want
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{int(bad.sum())} mismatches, first at {idx}: got {[got[tuple(i)].item() for i in idx]}, "
            f"want {[want[tuple(i)].item() for i in idx]}"
        )


def assert_within_one_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` (any device) is within one rounding step of ``want``'s 16-bit dtype, relative to each row's
    largest ``|want|``: the tolerance ``lmops_kernels.ternary_linear`` claims for bfloat16/float16 outputs
    (its float32 values equal the reference's; a 16-bit rounding of a differently ordered sum may land one
    step away). Tighter than any fixed ``atol`` on rows of small scale."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    g, w = got.float(), want.float()
    assert torch.equal(g.isnan(), w.isnan()), "NaN positions differ"
    g, w = g.nan_to_num(), w.nan_to_num()
    step = torch.finfo(want.dtype).eps * w.abs().amax(dim=-1, keepdim=True)
    bad = (g - w).abs() > step
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{int(bad.sum())} elements beyond one {want.dtype} rounding step of their row's scale, first at "
            f"{idx}: got {[g[tuple(i)].item() for i in idx]}, want {[w[tuple(i)].item() for i in idx]}"
        )


def extreme_matmul(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_q (m, k) int8, q (n, k) int8)`` whose products are all at their largest, both signs: rows of
    -128 (row 1: 127) against rows of all +1 / all -1, so ``|acc| = 128 k`` (int32 overflow checks)."""
    x_q = torch.full((m, k), -128, dtype=torch.int8)
    x_q[1] = 127
    q = torch.ones((n, k), dtype=torch.int8)
    q[::2] = -1
    return x_q, q
