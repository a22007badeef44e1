"""GPU: lmops ``ternary_linear`` on the Triton backend (W2A8, packed 2-bit weights) vs cuBLAS bf16
``F.linear``, at decode (M=1, 16) and prefill (M=512). Skipped without CUDA.

Shapes ``(N, K)``: 4096x4096 and the BitNet b1.58 2B4T projections 3840x2560 (qkv), 13824x2560
(gate+up) and 2560x6912 (down). Per BENCHMARKS.md: each call uses the next of enough weight sets that
their total is at least 4x the 50 MB L2 of an H100 (so weights stream from HBM, as in a model);
providers are timed interleaved in one process with CUDA events (median per call over samples of
one pass over the weight sets); energy is NVML's total-energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ) around a separate timed region of about a second per
provider, where ``pynvml`` is importable. Before a shape is timed, the ternary output is checked
against the plain-torch reference. Nothing here asserts a speed.

    python -m pytest benches/bench_gpu_ternary.py --benchmark-only -s
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import lmops_kernels as lk
from lmops_kernels import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = ((4096, 4096), (3840, 2560), (13824, 2560), (2560, 6912))  # (N, K)
MS = (1, 16, 512)
PROVIDERS = ("cublas_bf16", "lmops_triton")
L2_BYTES = 50 * 1024 * 1024
ROTATE_BYTES = 4 * L2_BYTES
SAMPLES = 30


def _nvml_handle():
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    except Exception:  # noqa: BLE001  (no NVML driver, no permission: energy is simply not reported)
        return None, None


class _Case:
    """Weight sets of one shape for one provider, and a call that uses the next set each time."""

    def __init__(self, provider: str, n: int, k: int, m: int, gen: torch.Generator):
        self.provider = provider
        self.x = torch.randn(m, k, generator=gen).to("cuda", torch.bfloat16)
        set_bytes = n * k * 2 if provider == "cublas_bf16" else n * k // 4
        self.n_sets = max(2, -(-ROTATE_BYTES // set_bytes))
        self.sets = []
        for _ in range(self.n_sets):
            if provider == "cublas_bf16":
                self.sets.append((torch.randn(n, k, generator=gen).to("cuda", torch.bfloat16),))
            else:
                q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)
                self.sets.append((lk.pack_ternary(q).cuda(), torch.tensor([0.02], device="cuda")))
        self.i = 0

    def __call__(self):
        w = self.sets[self.i]
        self.i = (self.i + 1) % self.n_sets
        if self.provider == "cublas_bf16":
            return F.linear(self.x, w[0])
        return lk.ternary_linear(self.x, w[0], w[1])

    def one_pass(self) -> None:
        for _ in range(self.n_sets):
            self()


def _time_interleaved(cases: dict[str, _Case]) -> dict[str, float]:
    """Median seconds per call of each provider (CUDA events around one pass over its weight sets)."""
    samples: dict[str, list[float]] = {p: [] for p in cases}
    for _ in range(SAMPLES):
        for p, c in cases.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            c.one_pass()
            end.record()
            end.synchronize()
            samples[p].append(start.elapsed_time(end) / 1e3 / c.n_sets)
    return {p: statistics.median(v) for p, v in samples.items()}


def _energy_per_call(case: _Case, nvml, handle, seconds: float = 1.0) -> float | None:
    if nvml is None:
        return None
    torch.cuda.synchronize()
    calls = 0
    e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        case.one_pass()
        calls += case.n_sets
        torch.cuda.synchronize()
    e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    return (e1 - e0) / 1e3 / calls  # mJ -> J


@pytest.fixture
def triton_forced(monkeypatch):
    monkeypatch.setenv("LMOPS_BACKEND", "triton")


def _check(case: _Case) -> None:
    packed, gamma = case.sets[0]
    x = case.x[:4]
    got = lk.ternary_linear(x, packed, gamma).float()
    want = ref.ternary_linear(x, packed, gamma).float()
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("m", MS, ids=[f"M{m}" for m in MS])
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_gpu_ternary_linear(benchmark, triton_forced, n, k, m):
    gen = torch.Generator().manual_seed(n + k + m)
    cases = {p: _Case(p, n, k, m, gen) for p in PROVIDERS}
    _check(cases["lmops_triton"])
    for c in cases.values():  # warm-up: autotuning, compilation, cuBLAS heuristics
        c.one_pass()
    torch.cuda.synchronize()
    medians = _time_interleaved(cases)
    nvml, handle = _nvml_handle()
    energy = {p: _energy_per_call(c, nvml, handle) for p, c in cases.items()}
    lm = cases["lmops_triton"]
    benchmark.group = f"gpu ternary_linear {n}x{k} M={m}"
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(),
            "n": n, "k": k, "m": m,
            **{f"median_s_{p}": v for p, v in medians.items()},
            "speedup_vs_cublas_bf16": medians["cublas_bf16"] / medians["lmops_triton"],
            "packed_weight_GBps": n * k / 4 / medians["lmops_triton"] / 1e9,
            **{f"energy_J_per_call_{p}": e for p, e in energy.items()},
        }
    )
    print(
        f"\n{n}x{k} M={m}: cublas bf16 {medians['cublas_bf16'] * 1e6:.1f} us, lmops triton "
        f"{medians['lmops_triton'] * 1e6:.1f} us, ratio {medians['cublas_bf16'] / medians['lmops_triton']:.2f}x"
        + (f", energy J/call {energy}" if nvml is not None else ", energy: pynvml unavailable")
    )

    def run():
        lm.one_pass()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, iterations=1)
