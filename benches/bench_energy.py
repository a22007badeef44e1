"""Energy per token of the decode GEMV and of a whole model's weight matmuls.

Per ../shared/design/BENCHMARKS.md: measured joules where the CPU exposes RAPL under
/sys/class/powercap (readable ``energy_uj``); everywhere else an arithmetic-energy ESTIMATE from
operation counts, labelled as such, with the per-operation constants and their sources in
:mod:`lmops.bench.energy`. The estimate counts arithmetic only; DRAM energy is left out (no cited source
in the project's research notes).

    python -m pytest benches/bench_energy.py --benchmark-only -s
"""

from __future__ import annotations

import glob
import itertools
import os
import time

import torch
from torch import nn

from lmops import BitLinear
from lmops.bench import energy

N = K = 4096
DECODE_CALLS = 64

# The one model shape of every end-to-end comparison (../shared/research/peers-measured.md):
# Llama-shaped, hidden 2048, FFN 5632, 12 layers, 16 heads / 4 KV heads, vocab 32000, untied head.
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, VOCAB = 2048, 5632, 12, 16, 4, 32000


def rapl_energy_files() -> list[str]:
    """Readable package-level RAPL counters (``energy_uj``), empty when there are none."""
    files = []
    for path in sorted(glob.glob("/sys/class/powercap/*/energy_uj")):
        name = os.path.basename(os.path.dirname(path))
        if name.count(":") != 1:  # package domains only (intel-rapl:0), not sub-zones (intel-rapl:0:0)
            continue
        try:
            with open(path) as f:
                int(f.read())
            files.append(path)
        except (OSError, ValueError):
            pass
    return files


def _read_uj(files: list[str]) -> list[int]:
    out = []
    for path in files:
        with open(path) as f:
            out.append(int(f.read()))
    return out


def _max_uj(path: str) -> int:
    try:
        with open(os.path.join(os.path.dirname(path), "max_energy_range_uj")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2**32


def measure_joules(fn, calls: int, files: list[str]) -> float:
    """Joules the RAPL package counters advance over ``calls`` calls of ``fn`` (counter wrap handled).
    Includes everything the package did meanwhile: idle power and other processes."""
    before = _read_uj(files)
    for i in range(calls):
        fn(i)
    after = _read_uj(files)
    total = 0
    for path, b, a in zip(files, before, after):
        total += a - b if a >= b else a + _max_uj(path) - b
    return total * 1e-6


def _estimate_rows(n_weights: int) -> list[tuple[str, str, float, float]]:
    rows = []
    for node, formats in (("7nm", ("ternary", "int8", "bf16", "fp16")), ("45nm", ("ternary", "int8", "fp32"))):
        base = energy.estimate_matmul_energy(n_weights, "ternary", node=node)
        for fmt in formats:
            joules = energy.estimate_matmul_energy(n_weights, fmt, node=node)
            rows.append((node, fmt, joules, joules / base))
    return rows


def _print(capsys, lines):
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_energy_decode_gemv_quick(benchmark, prepared, capsys):
    """Decode GEMV, K = N = 4096 (16.78M weights), one token."""
    p = prepared("lmops", N, K, 1)
    p.call(0)
    counter = itertools.count(1)
    benchmark.group = "energy decode GEMV 4096x4096"
    benchmark.pedantic(lambda: p.call(next(counter)), rounds=20, iterations=1)

    files = rapl_energy_files()
    if files:
        fp32 = prepared("fp32", N, K, 1)
        fp32.call(0)
        lines = [f"MEASURED (RAPL {', '.join(files)}; package energy incl. idle and other processes), J per token:"]
        for name, prov in (("lmops ternary", p), ("F.linear fp32", fp32)):
            t0 = time.perf_counter()
            joules = measure_joules(prov.call, DECODE_CALLS, files) / DECODE_CALLS
            lines.append(f"  {name:14s} {joules:.3e} J/token over {time.perf_counter() - t0:.2f} s")
        benchmark.extra_info["measured"] = lines[1:]
        _print(capsys, lines)
        return

    rows = _estimate_rows(N * K)
    lines = [
        f"ESTIMATE (no readable RAPL under /sys/class/powercap): arithmetic energy of one decode GEMV, "
        f"{N}x{K} = {N * K:,} weights, one token; weight-matmul arithmetic only, no DRAM energy",
        "| node | format | ops per weight | estimate J/token | x ternary |",
        "|---|---|---|---:|---:|",
    ]
    for node, fmt, joules, ratio in rows:
        ops = " + ".join(f"{t.upper()} {o.upper()}" for t, o in energy.FORMATS[fmt])
        lines.append(f"| {node} | {fmt} | {ops} | {joules:.3e} (estimate) | {ratio:.1f}x |")
    lines.append(f"constants: 7nm {energy.SOURCES['7nm']}; 45nm {energy.SOURCES['45nm']}")
    _print(capsys, lines)
    benchmark.extra_info["estimate"] = [
        {"node": node, "format": fmt, "estimate_joules": joules, "x_ternary": ratio} for node, fmt, joules, ratio in rows
    ]
    # no assertion on these ratios: they are ratios of the module's constants ((0.16 + 0.34) / 0.007 = 71.4
    # at 7 nm, as in the b1.58 paper); tests/bench/test_energy.py checks the estimates against hand counts


def llama_projection_weights() -> tuple[int, int]:
    """(weights in the 84 projection matrices, weights in the output head) of the shared model shape."""
    head_dim = HIDDEN // HEADS
    per_layer = (
        HIDDEN * HIDDEN  # q
        + 2 * HIDDEN * KV_HEADS * head_dim  # k, v
        + HIDDEN * HIDDEN  # o
        + 3 * HIDDEN * FFN  # gate, up, down
    )
    return LAYERS * per_layer, VOCAB * HIDDEN


def test_energy_model_per_token_quick(benchmark, capsys):
    """Whole model, one token: ternary projections + 16-bit head, vs the same model all 16-bit."""
    proj, head = llama_projection_weights()  # 541,065,216 and 65,536,000, as in peers-measured.md

    # the module path counts the same thing (one layer's projections on the meta device)
    with torch.device("meta"):
        layer = nn.ModuleList(
            [BitLinear(HIDDEN, HIDDEN), BitLinear(HIDDEN, 512), BitLinear(HIDDEN, 512), BitLinear(HIDDEN, HIDDEN),
             BitLinear(HIDDEN, FFN), BitLinear(HIDDEN, FFN), BitLinear(FFN, HIDDEN), nn.Linear(HIDDEN, VOCAB)]
        )
    counts = energy.count_linear_weights(layer, dense_fmt="bf16")
    assert counts == {"ternary": proj // LAYERS, "bf16": head}

    def estimates():
        # (ours, its 16-bit counterpart)
        return {
            "whole model: ternary projections + bf16 head": (
                energy.estimate_model_energy_per_token({"ternary": proj, "bf16": head}),
                energy.estimate_model_energy_per_token({"bf16": proj + head}),
            ),
            "84 projection matrices only": (
                energy.estimate_model_energy_per_token({"ternary": proj}),
                energy.estimate_model_energy_per_token({"bf16": proj}),
            ),
        }

    benchmark.group = "energy model per token"
    est = benchmark.pedantic(estimates, rounds=1, iterations=1)
    lines = [
        f"ESTIMATE, 7 nm ({energy.SOURCES['7nm']}): arithmetic energy per token of the {proj + head:,}-weight "
        f"matmuls of the Llama-shaped 672M model; weight-matmul arithmetic only, no DRAM energy",
        "| weights | lmops estimate J/token | bf16 estimate J/token | bf16 / lmops |",
        "|---|---:|---:|---:|",
    ]
    for name, (ours, bf16) in est.items():
        assert ours["label"] == bf16["label"] == "estimate"
        lines.append(
            f"| {name} | {ours['joules']:.3e} (estimate) | {bf16['joules']:.3e} (estimate) | "
            f"{bf16['joules'] / ours['joules']:.1f}x |"
        )
    _print(capsys, lines)
    benchmark.extra_info["estimate"] = {name: [o["joules"], b["joules"]] for name, (o, b) in est.items()}
