"""GPU kernel timing for ``lmops bench --device cuda`` and ``benches/bench_gpu_ternary.py``:
``ternary_linear`` on each lmops GPU backend (``cuda``, ``triton``) against cuBLAS bf16 ``F.linear``.

Method (``design/BENCHMARKS.md``): each call uses the next of enough weight sets that their total is
at least 4x the GPU's L2 (so weights stream from HBM, as in a model); each provider's pass over its
weight sets is captured once in a CUDA graph and replayed, so the ratio is GPU time, not Python
launch overhead (as in a graphed decoder); CUDA events time each replay; providers are interleaved
in one process and the median per call is reported, with the eager (ungraphed, launch overhead
included) median beside it. Energy: NVML's total-energy counter around about a second of replays
per provider (:mod:`lmops.bench.nvml`), where readable. Every lmops backend's output is checked against
the plain-torch reference before its shape is timed. A backend that cannot run is left out, with
its reason. Ratios are ``cuBLAS median / lmops median`` (above 1: lmops faster).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import lmops_kernels as lk
from lmops_kernels import dispatch, layouts
from lmops_kernels import reference as ref

from . import nvml

__all__ = ["GPU_MS", "GPU_SHAPES", "GpuCase", "backend_reason", "format_gpu_table", "gpu_kernel_table", "measure"]

# (N, K): 4096x4096 and the BitNet b1.58 2B4T projections qkv, gate+up, down
GPU_SHAPES = ((4096, 4096), (3840, 2560), (13824, 2560), (2560, 6912))
GPU_MS = (1, 16, 512)
GPU_BACKENDS = ("cuda", "triton")
SAMPLES = 30


def backend_reason(backend: str) -> str | None:
    """None when lmops' ``backend`` can run ``ternary_linear`` on CUDA tensors here, else why not."""
    with dispatch.forced(backend):
        try:
            dispatch.select("ternary_linear", "cuda")
            return None
        except RuntimeError as exc:
            return str(exc)


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 50 * 2**20) or 50 * 2**20)


class GpuCase:
    """One provider at one shape: its rotated weight sets, an eager pass over them and its CUDA graph.

    ``provider``: ``"cublas_bf16"`` or ``"lmops_<backend>"``; activations ``(m, k)`` bfloat16.
    """

    def __init__(self, provider: str, n: int, k: int, m: int, gen: torch.Generator):
        self.provider = provider
        self.backend = provider.removeprefix("lmops_") if provider.startswith("lmops_") else None
        self.x = torch.randn(m, k, generator=gen).to("cuda", torch.bfloat16)
        set_bytes = n * k * 2 if self.backend is None else n * k // 4
        self.n_sets = max(2, -(-4 * _l2_bytes() // set_bytes))
        self.sets: list[tuple[torch.Tensor, ...]] = []
        for _ in range(self.n_sets):
            if self.backend is None:
                self.sets.append((torch.randn(n, k, generator=gen).to("cuda", torch.bfloat16),))
            else:
                q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)
                packed = lk.pack_ternary(q)
                with dispatch.forced(self.backend):
                    layout = dispatch.preferred_layout("ternary_linear", "cuda")
                packed = layouts.convert(packed, "tiled", layout) if layout != "tiled" else packed
                self.sets.append((packed.cuda(), torch.tensor([0.02], device="cuda"), layout))
        self.graph: torch.cuda.CUDAGraph | None = None

    def one_pass(self) -> None:
        """One call per weight set, eager."""
        if self.backend is None:
            for (w,) in self.sets:
                F.linear(self.x, w)
            return
        with dispatch.forced(self.backend):
            for packed, gamma, layout in self.sets:
                lk.ternary_linear(self.x, packed, gamma, layout=layout)

    def capture(self) -> None:
        """Warm up (autotuning, compilation, cuBLAS heuristics) outside the capture, then capture one pass."""
        self.one_pass()
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.one_pass()
        torch.cuda.synchronize()

    def check(self) -> None:
        """The lmops output on 4 rows equals the plain-torch reference (within one bf16 rounding)."""
        if self.backend is None:
            return
        packed, gamma, layout = self.sets[0]
        x = self.x[:4]
        with dispatch.forced(self.backend):
            got = lk.ternary_linear(x, packed, gamma, layout=layout).float().cpu()
        tiled = layouts.convert(packed, layout, "tiled").cpu()
        want = ref.ternary_linear(x.cpu(), tiled, gamma.cpu()).float()
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


def _median_per_call(cases: dict[str, GpuCase], graphed: bool) -> dict[str, float]:
    samples: dict[str, list[float]] = {p: [] for p in cases}
    for _ in range(SAMPLES):
        for p, c in cases.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if graphed:
                c.graph.replay()
            else:
                c.one_pass()
            end.record()
            end.synchronize()
            samples[p].append(start.elapsed_time(end) / 1e3 / c.n_sets)
    return {p: statistics.median(v) for p, v in samples.items()}


def _energy_per_call(case: GpuCase, seconds: float = 1.0) -> float | None:
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


def measure(n: int, k: int, m: int, energy: bool = True) -> dict:
    """One row: graphed and eager medians (s per call), ratios, packed-weight GB/s and J per call."""
    if not torch.cuda.is_available():
        raise RuntimeError("the GPU benchmark needs a CUDA device")
    skipped = {b: r for b in GPU_BACKENDS if (r := backend_reason(b)) is not None}
    providers = ["cublas_bf16"] + [f"lmops_{b}" for b in GPU_BACKENDS if b not in skipped]
    gen = torch.Generator().manual_seed(n + k + m)
    cases = {p: GpuCase(p, n, k, m, gen) for p in providers}
    for c in cases.values():
        c.check()
        c.capture()
    graphed = _median_per_call(cases, graphed=True)
    eager = _median_per_call(cases, graphed=False)
    joules = {p: (_energy_per_call(c) if energy else None) for p, c in cases.items()}
    base = graphed["cublas_bf16"]
    return {
        "device": torch.cuda.get_device_name(), "n": n, "k": k, "m": m, "skipped": skipped,
        "graph_s": graphed, "eager_s": eager, "joules": joules,
        "speedup": {p: base / v for p, v in graphed.items() if p != "cublas_bf16"},
        "weight_gbps": {p: n * k / 4 / v / 1e9 for p, v in graphed.items() if p != "cublas_bf16"},
    }


def gpu_kernel_table(quick: bool = False, energy: bool = True) -> list[dict]:
    """:func:`measure` for every shape and M (``quick``: 4096x4096 at M = 1 and 512)."""
    cases = [(4096, 4096, 1), (4096, 4096, 512)] if quick else [(n, k, m) for n, k in GPU_SHAPES for m in GPU_MS]
    return [measure(n, k, m, energy) for n, k, m in cases]


def format_gpu_table(rows: list[dict]) -> str:
    """A markdown table of :func:`gpu_kernel_table` rows, with the device and method above it."""
    if not rows:
        return "(no rows)"
    lm = [p for p in rows[0]["graph_s"] if p != "cublas_bf16"]
    lines = [
        f"device: {rows[0]['device']}; CUDA-graph replays timed with CUDA events, weights rotated past 4x L2, "
        "median per call; speedup = cuBLAS bf16 / lmops (>1: lmops faster); eager = without graphs",
        *(f"skipped: lmops {b}: {r}" for b, r in rows[0]["skipped"].items()),
        "",
        "| N x K | M | cuBLAS bf16 us | " + " | ".join(f"{p} us (eager) | vs cuBLAS | GB/s" for p in lm) + " | J/call |",
        "|---|---:|---:|" + "---:|---:|---:|" * len(lm) + "---|",
    ]
    for r in rows:
        cells = [f"{r['n']}x{r['k']}", str(r["m"]), f"{r['graph_s']['cublas_bf16'] * 1e6:.1f}"]
        for p in lm:
            cells += [
                f"{r['graph_s'][p] * 1e6:.1f} ({r['eager_s'][p] * 1e6:.1f})",
                f"{r['speedup'][p]:.2f}x",
                f"{r['weight_gbps'][p]:.0f}",
            ]
        j = r["joules"]
        cells.append(", ".join(f"{p} {v * 1e3:.3f} mJ" for p, v in j.items() if v is not None) or (nvml.unavailable() or "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
