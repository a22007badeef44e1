"""Per-call overhead of the public op over its raw native kernel: ``lmops_kernels.ternary_linear`` (one
path: validation, ``torch.ops.lmops.ternary_linear``, the dispatcher's C++ Autograd and CPU kernels)
against the same kernel called straight through pybind (``lmops_kernels._C.ternary_linear``), at decode
(M=1). The issue's bar: at most 3 us at K=N=4096.

Both are timed in one loop, interleaved (the order alternates each round), over weight sets rotated past
4x the L3 at 4096x4096 (so the kernel streams from DRAM as in a model), and over one small weight set
at 64x64 where the kernel takes ~2 us and the overhead is not buried in DRAM noise. Reported: the
median per-call time of each and the median of the per-round differences. Nothing here asserts a speed.

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

ROUNDS = 400


def _weight_sets(n: int, k: int, count: int, gen: torch.Generator):
    sets = []
    for _ in range(count):
        q = torch.randint(-1, 2, (n, k), generator=gen, dtype=torch.int8)
        sets.append((lk.pack_ternary(q), torch.rand(1, generator=gen) * 0.05 + 0.01))
    return sets


def measure_overhead(n: int, k: int, rounds: int = ROUNDS) -> dict:
    """Median per-call seconds of the raw kernel and of the public op, and the median difference."""
    gen = torch.Generator().manual_seed(n + k)
    set_bytes = n * ((k + 15) // 16) * 4
    count = max(1, -(-4 * bench.l3_bytes() // set_bytes)) if set_bytes > 1 << 20 else 1
    sets = _weight_sets(n, k, count, gen)
    x = torch.randn(1, k, generator=gen)
    raw = _native.module().ternary_linear
    calls = {
        "raw": lambda p, s: raw(x, p, s, None, "auto"),
        "op": lambda p, s: lk.ternary_linear(x, p, s),
    }
    for p, s in sets:  # same result, and warm
        assert torch.equal(calls["raw"](p, s), calls["op"](p, s))
    per_call: dict[str, list[float]] = {"raw": [], "op": []}
    reps = max(1, 2000 // count)
    with torch.inference_mode(False), torch.no_grad():
        for r in range(rounds):
            order = ("raw", "op") if r % 2 == 0 else ("op", "raw")
            for name in order:
                fn = calls[name]
                t0 = time.perf_counter_ns()
                for _ in range(reps):
                    for p, s in sets:
                        fn(p, s)
                per_call[name].append((time.perf_counter_ns() - t0) / (reps * count) * 1e-9)
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
            f"\nternary_linear M=1 {n}x{k} ({row['weight_sets']} weight sets): raw kernel {row['raw_s'] * 1e6:.2f} us, "
            f"public op {row['op_s'] * 1e6:.2f} us, overhead (median of paired differences) "
            f"{row['overhead_s'] * 1e6:.2f} us"
        )
