"""GPU: lmops ``ternary_linear`` (W2A8, packed 2-bit weights) on its ``cuda`` and ``triton`` backends
vs cuBLAS bf16 ``F.linear``, at decode (M=1, 16) and prefill (M=512), on 4096x4096 and the BitNet
b1.58 2B4T projection shapes. Skipped without CUDA. The method (rotated weights past 4x L2, CUDA-graph
replays timed with CUDA events, interleaved providers, medians, NVML joules, a reference check before
timing) is in :mod:`lmops.bench.gpu`, shared with ``lmops bench --device cuda``. No speed assertion.

    python -m pytest benches/bench_gpu_ternary.py --benchmark-only -s
"""

from __future__ import annotations

import pytest
import torch
from lmops_kernels import dispatch

from lmops.bench import gpu as bench_gpu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("m", bench_gpu.GPU_MS, ids=[f"M{m}" for m in bench_gpu.GPU_MS])
@pytest.mark.parametrize("n,k", bench_gpu.GPU_SHAPES, ids=[f"{n}x{k}" for n, k in bench_gpu.GPU_SHAPES])
def test_gpu_ternary_linear(benchmark, monkeypatch, n, k, m):
    dispatch.force(None)
    usable = [b for b in bench_gpu.GPU_BACKENDS if bench_gpu.backend_reason(b) is None]
    if not usable:
        pytest.skip(f"no lmops GPU backend can run: {[bench_gpu.backend_reason(b) for b in bench_gpu.GPU_BACKENDS]}")
    # pytest-benchmark times the whole measurement once; the numbers are the interleaved medians it returns
    row = benchmark.pedantic(bench_gpu.measure, args=(n, k, m), rounds=1, iterations=1)
    benchmark.group = f"gpu ternary_linear {n}x{k} M={m}"
    benchmark.extra_info.update({key: (str(v) if isinstance(v, dict) else v) for key, v in row.items()})
    print("\n" + bench_gpu.format_gpu_table([row]))
