"""Kernel timing for ``lmops bench``: ``ternary_linear`` against what users would run instead.

Method (``design/BENCHMARKS.md``): one process; every provider timed in the same loop, interleaved
(the order rotates each repeat); the median of the repeats is reported with the ratio to each
baseline. Weight sets are rotated so that their total is at least 4x the last-level cache, so
every call streams its weights from DRAM as in a real model. The ternary output is checked equal
to the plain-torch reference once per shape before any timing.

Providers:

- ``lmops``: ``lmops_kernels.ternary_linear`` (2-bit packed weights, int8 activations, float32 in/out).
- ``fp32``: ``torch.nn.functional.linear`` in float32.
- ``bf16``: ``torch.nn.functional.linear`` in bfloat16.
- ``hf``: transformers' packed ``BitLinear`` (bfloat16; unpacks its 2-bit weights to bfloat16 on every
  call through ``torch.compile``'d code, which is warmed up before timing).

Ratios are ``baseline median / lmops median``: above 1, lmops is faster. Absolute times on shared
CPUs mean little; ratios taken in one run do.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import lmops_kernels as lk
from lmops_kernels import _native
from lmops_kernels import reference as ref

__all__ = [
    "Prepared",
    "check_ternary_equals_reference",
    "copy_bandwidth",
    "format_table",
    "kernel_table",
    "machine_info",
    "prepare_provider",
    "random_packed",
    "time_interleaved",
]

MiB = 1 << 20
ROTATION_FACTOR = 4  # weight sets in rotation total at least this many times the L3 size

# (out_features N, in_features K): decode M=1 and prefill M=128, 512 each
FULL_SHAPES = ((4096, 4096), (2048, 2048), (11008, 4096), (1000, 4000))
FULL_MS = (1, 128, 512)
QUICK_CASES = ((4096, 4096, 1), (4096, 4096, 128), (1000, 4000, 1), (11008, 4096, 1))
PROVIDERS = ("lmops", "fp32", "bf16", "hf")
BASELINES = ("fp32", "bf16", "hf")
LABELS = {
    "lmops": "lmops ternary_linear",
    "fp32": "F.linear fp32",
    "bf16": "F.linear bf16",
    "hf": "transformers BitLinear",
}


# ----------------------------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------------------------


def l3_bytes() -> int:
    """Size of the last-level cache (sysfs), 32 MiB when it cannot be read."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return 32 * MiB


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """CPU model, cores, torch threads, native ISA, L3 size and the load average (other processes)."""
    isa = os.environ.get("LMOPS_CPU_ISA", "auto")
    if isa == "auto":
        isa = str(_native.cpu_features().get("best_isa", "none (extension missing)"))
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": isa,
        "l3_mib": l3_bytes() / MiB,
        "torch": torch.__version__,
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def copy_bandwidth(nbytes: int = 512 * MiB, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s (1e9 B/s) of ``dst.copy_(src)`` on ``nbytes``, counting the bytes
    read plus the bytes written (2 * nbytes per copy). Median of ``repeats``."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    dst.copy_(src)  # pages faulted in, threads started
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------------------------
# providers: each builds rotated weight sets for one shape and a call(i) that runs on set i
# ----------------------------------------------------------------------------------------------


def _n_sets(set_bytes: int) -> int:
    return max(2, math.ceil(ROTATION_FACTOR * l3_bytes() / set_bytes))


@dataclass
class Prepared:
    call: Callable[[int], object]  # call(i) runs one forward on weight set i % n_sets
    n_sets: int
    weight_bytes: int  # bytes of one weight set


def random_packed(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ternary ``(n, k)`` matrix and its lmops packing."""
    q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)
    return q, lk.pack_ternary(q)


def prepare_provider(
    provider: str, n: int, k: int, m: int, q: torch.Tensor, packed: torch.Tensor, gen: torch.Generator
) -> Prepared:
    """Weight sets of ``provider`` for an ``(n, k)`` ternary matrix ``q`` (``packed``: its lmops
    packing), rotated past 4x L3, and a random ``(m, k)`` input; ``call(i)`` runs on set ``i``."""
    gamma = torch.tensor(0.02)
    x32 = torch.randn(m, k, generator=gen)
    if provider == "lmops":
        sets = [packed] + [packed.clone() for _ in range(_n_sets(packed.numel()) - 1)]
        return Prepared(lambda i: lk.ternary_linear(x32, sets[i % len(sets)], gamma), len(sets), packed.numel())
    if provider in ("fp32", "bf16"):
        dtype = torch.float32 if provider == "fp32" else torch.bfloat16
        w = (q.to(dtype) * 0.02).to(dtype)
        nbytes = w.numel() * w.element_size()
        sets = [w] + [w.clone() for _ in range(_n_sets(nbytes) - 1)]
        x = x32.to(dtype)
        return Prepared(lambda i: F.linear(x, sets[i % len(sets)]), len(sets), nbytes)
    if provider == "hf":
        from transformers.integrations.bitnet import BitLinear as HFBitLinear

        hf_packed = lk.to_hf_bitnet(q)
        sets = [hf_packed] + [hf_packed.clone() for _ in range(_n_sets(hf_packed.numel()) - 1)]
        module = HFBitLinear(k, n, bias=False, dtype=torch.bfloat16)
        module.weight_scale.fill_(1 / 0.02)
        x = x32.to(torch.bfloat16)

        def call(i: int):
            # one module, its packed buffer swapped: the compiled functions see one shape, no recompiles
            module.weight = sets[i % len(sets)]
            return module(x)

        return Prepared(call, len(sets), hf_packed.numel())
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def check_ternary_equals_reference(q: torch.Tensor, packed: torch.Tensor, gen: torch.Generator) -> None:
    x = torch.randn(3, q.shape[1], generator=gen)
    gamma = torch.tensor(0.02)
    got = lk.ternary_linear(x, packed, gamma)
    want = ref.ternary_linear(x, packed, gamma)
    if not torch.equal(got, want):
        raise AssertionError(
            f"ternary_linear differs from the reference at N={q.shape[0]}, K={q.shape[1]}: "
            f"{int((got != want).sum())} of {got.numel()} outputs"
        )


def time_interleaved(calls: dict[str, Prepared], quick: bool, sample_s: float = 0.02) -> tuple[dict[str, float], int]:
    """Median seconds per call of each provider, and the number of repeats.

    Each provider is warmed up (transformers compiles on its first call), then one timed call sizes
    its sample (``inner`` consecutive calls on successive weight sets, at least ``sample_s`` long or
    one full rotation) and the number of repeats (a time budget per case, 3..11). Providers are
    interleaved, their order rotating every repeat.
    """
    inner: dict[str, int] = {}
    per_repeat = 0.0
    for name, p in calls.items():
        t0 = time.perf_counter()
        p.call(0)  # warm-up
        if time.perf_counter() - t0 > 1.0:
            p.call(0)  # a slow first call compiled something: warm up once more
        t0 = time.perf_counter()
        p.call(1)
        est = time.perf_counter() - t0
        inner[name] = max(1, min(p.n_sets, math.ceil(sample_s / max(est, 1e-6))))
        per_repeat += inner[name] * est
    budget, lo, hi = (1.5, 3, 7) if quick else (5.0, 3, 11)
    repeats = int(min(hi, max(lo, budget // max(per_repeat, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    counter = {name: 2 for name in calls}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            p, reps = calls[name], inner[name]
            start = counter[name]
            t0 = time.perf_counter()
            for j in range(reps):
                p.call(start + j)
            samples[name].append((time.perf_counter() - t0) / reps)
            counter[name] = start + reps
    return {name: statistics.median(v) for name, v in samples.items()}, repeats


def _hf_available() -> str | None:
    try:
        import transformers.integrations.bitnet  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available
        return f"transformers BitLinear unavailable ({type(exc).__name__})"
    return None


def kernel_table(quick: bool) -> list[dict]:
    """Time ``ternary_linear`` against F.linear fp32/bf16 and transformers' packed BitLinear.

    Args:
        quick: the decode cases, one prefill case and the odd shape, without transformers'
            BitLinear (its torch.compile warm-up alone takes about 10 s here); under a minute on
            2 cores. Otherwise decode M=1 and prefill M=128, 512 for N x K in 4096x4096,
            2048x2048, 11008x4096 and 1000x4000, all four providers (a few minutes).
    Returns:
        one dict per (shape, M): ``n``, ``k``, ``m``, ``mode``; ``<provider>_ms`` medians (None when
        not run); ``speedup_vs_<baseline>`` = baseline median / lmops median; ``weight_bytes``
        (packed ternary bytes per call), ``weight_gbps`` (those bytes / lmops median, 1e9 B/s),
        ``copy_gbps`` (``torch.Tensor.copy_`` bandwidth, read + write bytes), ``repeats``,
        ``weight_sets`` (rotation per provider), ``checked`` (ternary output equal to the reference),
        ``note``, and ``machine`` (see :func:`machine_info`).

    ``LMOPS_BENCH_THREADS=n`` runs every provider on ``n`` torch threads (default: torch's setting).
    On a machine whose cores are shared with other busy processes, a 2-thread parallel region can
    wait a scheduler tick for its second thread; ``LMOPS_BENCH_THREADS=1`` gives steadier numbers.
    """
    threads = os.environ.get("LMOPS_BENCH_THREADS")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _kernel_table(quick)
    finally:
        torch.set_num_threads(saved_threads)


def _kernel_table(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    machine = machine_info()
    copy_gbps = copy_bandwidth(256 * MiB if quick else 512 * MiB, repeats=3 if quick else 5)
    hf_missing = _hf_available()
    if quick:
        cases = list(QUICK_CASES)
        providers = ("lmops", "fp32", "bf16")
        hf_note = "transformers BitLinear skipped under --quick (torch.compile warm-up ~10 s)"
    else:
        cases = [(n, k, m) for n, k in FULL_SHAPES for m in FULL_MS]
        providers = PROVIDERS if hf_missing is None else ("lmops", "fp32", "bf16")
        hf_note = hf_missing or ""
    rows: list[dict] = []
    weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for n, k, m in cases:
        if (n, k) not in weights:
            weights.clear()  # one shape's weight sets at a time
            q, packed = random_packed(n, k, gen)
            check_ternary_equals_reference(q, packed, gen)
            weights[(n, k)] = (q, packed)
        q, packed = weights[(n, k)]
        prepared = {name: prepare_provider(name, n, k, m, q, packed, gen) for name in providers}
        med, repeats = time_interleaved(prepared, quick)
        row: dict = {
            "shape": f"{n}x{k}",
            "n": n,
            "k": k,
            "m": m,
            "mode": "decode" if m == 1 else "prefill",
        }
        for name in PROVIDERS:
            row[f"{name}_ms"] = med[name] * 1e3 if name in med else None
        for name in BASELINES:
            row[f"speedup_vs_{name}"] = med[name] / med["lmops"] if name in med else None
        row["weight_bytes"] = packed.numel()
        row["weight_gbps"] = packed.numel() / med["lmops"] / 1e9
        row["copy_gbps"] = copy_gbps
        row["repeats"] = repeats
        row["weight_sets"] = {name: p.n_sets for name, p in prepared.items()}
        row["checked"] = True
        row["note"] = hf_note if "hf" not in med else ""
        row["machine"] = machine
        rows.append(row)
        del prepared
    end_load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    for row in rows:
        row["machine"] = {**machine, "loadavg_1min_end": end_load}
    return rows


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def format_table(rows: list[dict]) -> str:
    """A markdown table of :func:`kernel_table` rows, with the machine and the method above it."""
    if not rows:
        return "(no rows)"
    mach = rows[0].get("machine", {})
    head = [
        f"machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, torch threads {mach.get('threads', '?')}, "
        f"lmops ISA {mach.get('isa', '?')}, L3 {mach.get('l3_mib', 0):g} MiB, torch {mach.get('torch', '?')}; "
        f"load average {mach.get('loadavg_1min', '?')} at start, {mach.get('loadavg_1min_end', '?')} at end "
        "(other processes share these cores: compare ratios, not absolute times)",
        "medians of interleaved repeats; weight sets rotated past 4x L3; speedup = baseline / lmops (>1: lmops faster); "
        "weight GB/s = packed ternary bytes / lmops time; copy GB/s counts the read + write bytes of Tensor.copy_ (not the write-allocate reads)",
        "",
        "| N x K | M | lmops ms | fp32 ms | bf16 ms | HF BitLinear ms | vs fp32 | vs bf16 | vs HF | weight GB/s | copy GB/s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines = list(head)
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['m']} | {_fmt(r['lmops_ms'], '.3f')} | {_fmt(r['fp32_ms'], '.3f')} | "
            f"{_fmt(r['bf16_ms'], '.3f')} | {_fmt(r['hf_ms'], '.3f')} | {_fmt(r['speedup_vs_fp32'], '.2f', 'x')} | "
            f"{_fmt(r['speedup_vs_bf16'], '.2f', 'x')} | {_fmt(r['speedup_vs_hf'], '.2f', 'x')} | "
            f"{_fmt(r['weight_gbps'], '.1f')} | {_fmt(r['copy_gbps'], '.1f')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)
