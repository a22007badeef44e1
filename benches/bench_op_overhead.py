"""Per-call overhead of the public op over its raw native kernel, at decode (M=1): the issue's bar is at
most 3 us at K=N=4096.

- "op": ``lmops_kernels.ternary_linear`` called from a Python loop: the one path of every call
  (validation, ``torch.ops.lmops.ternary_linear``, the dispatcher's C++ Autograd and CPU kernels).
- "raw": the same CPU kernel called from a C++ loop (``torch.ops.lmops._bench_ternary_linear_raw``): no
  Python, no dispatcher, no validation per call.

Both are timed interleaved (the order alternates each round), over weight sets rotated past 4x the L3 at
4096x4096 (so the kernel streams from DRAM as in a model), and over one small weight set at 64x64, where
the kernel takes ~2 us and the overhead is not buried in DRAM noise. Reported: the median per-call time of
each and the median of the per-round differences. Nothing here asserts a speed.

    python -m pytest benches/bench_op_overhead.py --benchmark-only -s
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import lmops_kernels as lk
from lmops.bench import cpu as bench
from lmops_kernels import _native


def _weight_sets(n: int, k: int, count: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    packed, scales = [], []
    for _ in range(count):
        packed.append(lk.pack_ternary(torch.randint(-1, 2, (n, k), generator=gen, dtype=torch.int8)))
        scales.append(torch.rand(1, generator=gen) * 0.05 + 0.01)
    return packed, scales


def measure_overhead(n: int, k: int, rounds: int) -> dict:
    """Median per-call seconds of the raw kernel and of the public op, and the median difference."""
    gen = torch.Generator().manual_seed(n + k)
    set_bytes = n * ((k + 15) // 16) * 4
    count = max(1, -(-4 * bench.l3_bytes() // set_bytes)) if set_bytes > 1 << 20 else 1
    packed, scales = _weight_sets(n, k, count, gen)
    x = torch.randn(1, k, generator=gen)
    reps = max(1, 2000 // count)
    raw = torch.ops.lmops._bench_ternary_linear_raw

    def op_round() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            for p, s in zip(packed, scales):
                lk.ternary_linear(x, p, s)
        return (time.perf_counter_ns() - t0) * 1e-9 / (reps * count)

    calls = {"raw": lambda: raw(x, packed, scales, reps), "op": op_round}
    per_call: dict[str, list[float]] = {"raw": [], "op": []}
    with torch.no_grad():
        for name in calls:  # warm
            calls[name]()
        for r in range(rounds):
            for name in ("raw", "op") if r % 2 == 0 else ("op", "raw"):
                per_call[name].append(calls[name]())
    diffs = [o - r for o, r in zip(per_call["op"], per_call["raw"])]
    return {
        "n": n,
        "k": k,
        "weight_sets": count,
        "raw_s": statistics.median(per_call["raw"]),
        "op_s": statistics.median(per_call["op"]),
        "overhead_s": statistics.median(diffs),
    }


@pytest.mark.parametrize("n,k,rounds", [(64, 64, 400), (4096, 4096, 60)], ids=["64x64", "4096x4096"])
def test_op_overhead(benchmark, capsys, n, k, rounds):
    if not _native.available():
        pytest.skip(f"native extension missing: {_native.missing_reason()}")
    row = benchmark.pedantic(measure_overhead, args=(n, k, rounds), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    with capsys.disabled():
        print(
            f"\nternary_linear M=1 {n}x{k} ({row['weight_sets']} weight sets): raw kernel (C++ loop) "
            f"{row['raw_s'] * 1e6:.2f} us, public op (Python loop) {row['op_s'] * 1e6:.2f} us, overhead "
            f"(median of paired differences) {row['overhead_s'] * 1e6:.2f} us"
        )
