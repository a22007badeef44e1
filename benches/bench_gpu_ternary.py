"""GPU: lmops ``ternary_linear`` (W2A8, packed 2-bit weights) on its ``cuda`` and ``triton`` backends
vs cuBLAS bf16 ``F.linear``, at decode (M=1, 16) and prefill (M=512). Skipped without CUDA; a backend
that cannot run (extension built without CUDA, triton missing) is left out of the table with its reason.

Shapes ``(N, K)``: 4096x4096 and the BitNet b1.58 2B4T projections 3840x2560 (qkv), 13824x2560
(gate+up) and 2560x6912 (down). Per BENCHMARKS.md: each call uses the next of enough weight sets that
their total is at least 4x the 50 MB L2 of an H100 (so weights stream from HBM, as in a model).
Each provider's pass over its weight sets is captured once in a CUDA graph and replayed (so the
ratio is GPU time, not Python launch overhead, as in a graphed decoder); CUDA events time each
replay; providers are interleaved in one process; the median per call is reported. The eager time
(no graph, launch overhead included) is reported beside it. Energy: NVML's total-energy counter
around about a second of replays per provider (:mod:`lmops.nvml`), where it is readable. Before a
shape is timed, each lmops backend's output is checked against the plain-torch reference. Nothing
here asserts a speed.

    python -m pytest benches/bench_gpu_ternary.py --benchmark-only -s
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import lmops_kernels as lk
from lmops import nvml
from lmops_kernels import dispatch
from lmops_kernels import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = ((4096, 4096), (3840, 2560), (13824, 2560), (2560, 6912))  # (N, K)
MS = (1, 16, 512)
L2_BYTES = 50 * 1024 * 1024
ROTATE_BYTES = 4 * L2_BYTES
SAMPLES = 30


def _backend_reason(backend: str) -> str | None:
    old = os.environ.get("LMOPS_BACKEND")
    os.environ["LMOPS_BACKEND"] = backend
    try:
        dispatch.select("ternary_linear", "cuda")
        return None
    except RuntimeError as exc:
        return str(exc)
    finally:
        if old is None:
            os.environ.pop("LMOPS_BACKEND", None)
        else:
            os.environ["LMOPS_BACKEND"] = old


class _Case:
    """Weight sets of one shape for one provider, a pass over them (eager) and its CUDA graph."""

    def __init__(self, provider: str, n: int, k: int, m: int, gen: torch.Generator):
        self.provider = provider
        self.backend = provider.removeprefix("lmops_") if provider.startswith("lmops_") else None
        self.x = torch.randn(m, k, generator=gen).to("cuda", torch.bfloat16)
        set_bytes = n * k * 2 if self.backend is None else n * k // 4
        self.n_sets = max(2, -(-ROTATE_BYTES // set_bytes))
        self.sets = []
        for _ in range(self.n_sets):
            if self.backend is None:
                self.sets.append((torch.randn(n, k, generator=gen).to("cuda", torch.bfloat16),))
            else:
                q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)
                self.sets.append((lk.pack_ternary(q).cuda(), torch.tensor([0.02], device="cuda")))
        self.graph: torch.cuda.CUDAGraph | None = None

    def _call(self, w):
        if self.backend is None:
            return F.linear(self.x, w[0])
        return lk.ternary_linear(self.x, w[0], w[1])

    def one_pass(self) -> None:
        if self.backend is not None:
            os.environ["LMOPS_BACKEND"] = self.backend
        for w in self.sets:
            self._call(w)

    def capture(self) -> None:
        self.one_pass()  # warm-up: autotuning, compilation, cuBLAS heuristics outside the capture
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.one_pass()
        torch.cuda.synchronize()

    def check(self) -> None:
        if self.backend is None:
            return
        os.environ["LMOPS_BACKEND"] = self.backend
        packed, gamma = self.sets[0]
        x = self.x[:4]
        got = lk.ternary_linear(x, packed, gamma).float().cpu()
        want = ref.ternary_linear(x.cpu(), packed.cpu(), gamma.cpu()).float()
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


def _median_per_call(cases: dict[str, _Case], graphed: bool) -> dict[str, float]:
    samples: dict[str, list[float]] = {p: [] for p in cases}
    for _ in range(SAMPLES):
        for p, c in cases.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            c.graph.replay() if graphed else c.one_pass()
            end.record()
            end.synchronize()
            samples[p].append(start.elapsed_time(end) / 1e3 / c.n_sets)
    return {p: statistics.median(v) for p, v in samples.items()}


def _energy_per_call(case: _Case, seconds: float = 1.0) -> float | None:
    if nvml.unavailable() is not None:
        return None
    calls = 0
    with nvml.EnergyMeter() as meter:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            case.graph.replay()
            calls += case.n_sets
            torch.cuda.synchronize()
    return meter.joules / calls


@pytest.fixture(autouse=True)
def _restore_backend(monkeypatch):
    monkeypatch.delenv("LMOPS_BACKEND", raising=False)  # monkeypatch restores the caller's value


@pytest.mark.parametrize("m", MS, ids=[f"M{m}" for m in MS])
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_gpu_ternary_linear(benchmark, n, k, m):
    skipped = {b: r for b in ("cuda", "triton") if (r := _backend_reason(b)) is not None}
    providers = ["cublas_bf16"] + [f"lmops_{b}" for b in ("cuda", "triton") if b not in skipped]
    if len(providers) == 1:
        pytest.skip(f"no lmops GPU backend can run: {skipped}")
    gen = torch.Generator().manual_seed(n + k + m)
    cases = {p: _Case(p, n, k, m, gen) for p in providers}
    for c in cases.values():
        c.check()
        c.capture()
    graphed = _median_per_call(cases, graphed=True)
    eager = _median_per_call(cases, graphed=False)
    energy = {p: _energy_per_call(c) for p, c in cases.items()}
    base = graphed["cublas_bf16"]
    benchmark.group = f"gpu ternary_linear {n}x{k} M={m}"
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(),
            "n": n, "k": k, "m": m, "skipped_backends": skipped,
            **{f"median_s_graph_{p}": v for p, v in graphed.items()},
            **{f"median_s_eager_{p}": v for p, v in eager.items()},
            **{f"speedup_vs_cublas_bf16_{p}": base / v for p, v in graphed.items() if p != "cublas_bf16"},
            **{f"packed_weight_GBps_{p}": n * k / 4 / v / 1e9 for p, v in graphed.items() if p != "cublas_bf16"},
            **{f"energy_J_per_call_{p}": e for p, e in energy.items()},
        }
    )
    line = ", ".join(
        f"{p} {graphed[p] * 1e6:.1f} us (eager {eager[p] * 1e6:.1f}) = {base / graphed[p]:.2f}x" for p in providers
    )
    joules = ", ".join(f"{p} {e * 1e3:.3f} mJ" for p, e in energy.items() if e is not None) or nvml.unavailable()
    print(f"\n[{torch.cuda.get_device_name()}] {n}x{k} M={m}: {line}; energy/call: {joules}; skipped: {skipped or 'none'}")

    lm = cases[providers[1]]

    def run():
        lm.graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, iterations=1)
