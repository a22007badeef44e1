"""``lmops bench`` on CPU (:mod:`lmops.bench.cpu`): the interleaved timer, the rows and their ratios, the
table, and the correctness check that must stop a wrong kernel. Tiny shapes and a fake clock where
timing itself is under test; the whole file runs in seconds."""

from __future__ import annotations

import re
import types

import pytest
import torch

import lmops_kernels as lk
from lmops.bench import cpu as bench


class _Clock:
    """A perf_counter that moves only when a fake provider runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _fake_provider(clock: _Clock, seconds: float, log: list, name: str, n_sets: int = 4) -> bench.Prepared:
    def call(i: int):
        clock.now += seconds
        log.append((name, i))

    return bench.Prepared(call, n_sets, 100)


def test_time_interleaved_medians_rotation_and_weight_sets(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    log: list = []
    calls = {
        "lmops": _fake_provider(clock, 0.002, log, "lmops"),
        "fp32": _fake_provider(clock, 0.006, log, "fp32"),
        "bf16": _fake_provider(clock, 0.003, log, "bf16"),
    }
    med, repeats = bench.time_interleaved(calls, quick=True)
    assert med == pytest.approx({"lmops": 0.002, "fp32": 0.006, "bf16": 0.003}, rel=1e-9)
    # per repeat: inner = min(n_sets, ceil(0.02 s / est)) = 4 calls each, 44 ms; quick: 1.5 s // 44 ms -> 7 (the cap)
    assert repeats == 7
    timed = log[6:]  # after the warm-up call(0) and the sizing call(1) of each provider
    assert log[:6] == [("lmops", 0), ("lmops", 1), ("fp32", 0), ("fp32", 1), ("bf16", 0), ("bf16", 1)]
    firsts = [timed[12 * r][0] for r in range(repeats)]
    assert firsts == ["lmops", "fp32", "bf16", "lmops", "fp32", "bf16", "lmops"]  # the order rotates
    for name in calls:  # every timed call on the next weight set: 2, 3, 4, ...
        assert [i for n, i in timed if n == name] == list(range(2, 2 + 4 * repeats))


def test_time_interleaved_slow_first_call_warms_up_twice(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    log: list = []
    first = {"done": False}

    def call(i: int):
        clock.now += 0.001 if first["done"] else 2.0  # a compile on the first call only
        first["done"] = True
        log.append(i)

    med, _ = bench.time_interleaved({"hf": bench.Prepared(call, 3, 1)}, quick=True)
    assert log[:3] == [0, 0, 1] and med["hf"] == pytest.approx(0.001)


def _small_machine(monkeypatch, cases):
    monkeypatch.setattr(bench, "QUICK_CASES", cases)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda nbytes, repeats: 12.5)
    monkeypatch.setattr(bench, "_hf_available", lambda: None)  # quick mode skips it; no transformers import
    monkeypatch.setattr(bench, "l3_bytes", lambda: 16)  # 4 x L3 is less than one weight set: two sets each


def test_kernel_table_rows_hold_the_ratios_of_their_own_medians(monkeypatch):
    _small_machine(monkeypatch, ((8, 40, 1), (24, 40, 3), (16, 72, 2)))
    planted = iter([
        {"lmops": 0.002, "fp32": 0.006, "bf16": 0.003},
        {"lmops": 0.004, "fp32": 0.001, "bf16": 0.005},
        {"lmops": 0.010, "fp32": 0.020, "bf16": 0.025},
    ])
    seen = []

    def fake_timer(calls, quick):
        seen.append(sorted(calls))
        for p in calls.values():
            p.call(0)  # the prepared providers run on these tiny shapes
        return next(planted), 5

    monkeypatch.setattr(bench, "time_interleaved", fake_timer)
    rows = bench.kernel_table(quick=True)
    assert seen == [["bf16", "fp32", "lmops"]] * 3  # quick: no transformers BitLinear
    assert [(r["n"], r["k"], r["m"], r["mode"]) for r in rows] == [
        (8, 40, 1, "decode"), (24, 40, 3, "prefill"), (16, 72, 2, "prefill")
    ]
    r0, r1, r2 = rows
    assert (r0["lmops_ms"], r0["fp32_ms"], r0["bf16_ms"], r0["hf_ms"]) == pytest.approx((2.0, 6.0, 3.0, None))
    assert (r0["speedup_vs_fp32"], r0["speedup_vs_bf16"], r0["speedup_vs_hf"]) == pytest.approx((3.0, 1.5, None))
    assert (r1["speedup_vs_fp32"], r1["speedup_vs_bf16"]) == pytest.approx((0.25, 1.25))
    assert (r2["speedup_vs_fp32"], r2["speedup_vs_bf16"]) == pytest.approx((2.0, 2.5))
    for r in rows:
        assert r["speedup_vs_fp32"] == pytest.approx(r["fp32_ms"] / r["lmops_ms"])
        assert r["weight_bytes"] == r["n"] * 4 * -(-r["k"] // 16)  # 2-bit codes, K padded to 16
        assert r["weight_gbps"] == pytest.approx(r["weight_bytes"] / (r["lmops_ms"] * 1e-3) / 1e9)
        assert r["copy_gbps"] == 12.5 and r["repeats"] == 5 and "skipped under --quick" in r["note"]
        assert r["weight_sets"] == {"lmops": 2, "fp32": 2, "bf16": 2}
        assert "loadavg_1min_end" in r["machine"]

    table = bench.format_table(rows)
    line = [ln for ln in table.splitlines() if ln.startswith("| 24x40 ")][0]
    assert line.split(" | ")[6:9] == ["0.25x", "1.25x", "-"]


def test_kernel_table_measures_for_real_on_tiny_shapes(monkeypatch):
    # the real timer on tiny shapes (a fraction of a second): ratios are those of the row's medians
    _small_machine(monkeypatch, ((8, 40, 1),))
    (row,) = bench.kernel_table(quick=True)
    assert 3 <= row["repeats"] <= 7 and row["hf_ms"] is None and row["checked"] is True
    for b in ("fp32", "bf16"):
        assert row[f"speedup_vs_{b}"] == pytest.approx(row[f"{b}_ms"] / row["lmops_ms"], rel=1e-12)


def test_a_wrong_kernel_stops_the_benchmark(monkeypatch):
    _small_machine(monkeypatch, ((8, 40, 1),))
    right = lk.ternary_linear

    def off_by_one_code(x, packed, gamma, *args, **kwargs):  # as if one weight code were unpacked wrong
        y = right(x, packed, gamma, *args, **kwargs).clone()
        y[..., 3] += gamma * x[..., 5]
        return y

    monkeypatch.setattr(lk, "ternary_linear", off_by_one_code)
    monkeypatch.setattr(bench, "time_interleaved", lambda *a, **k: pytest.fail("timed a wrong kernel"))
    with pytest.raises(AssertionError, match=r"differs from the reference at N=8, K=40: 3 of 24 outputs"):
        bench.kernel_table(quick=True)


def test_check_passes_the_real_kernel_on_odd_shapes():
    gen = torch.Generator().manual_seed(3)
    for n, k in ((1, 1), (7, 33), (13, 100)):
        q, packed = bench.random_packed(n, k, gen)
        bench.check_ternary_equals_reference(q, packed, gen)


def test_prepare_provider_and_unknown_provider():
    gen = torch.Generator().manual_seed(0)
    q, packed = bench.random_packed(8, 40, gen)
    p = bench.prepare_provider("fp32", 8, 40, 3, q, packed, gen)
    out = p.call(5)
    assert out.shape == (3, 8) and out.dtype == torch.float32 and p.weight_bytes == 8 * 40 * 4
    assert bench.prepare_provider("bf16", 8, 40, 3, q, packed, gen).call(0).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"provider: expected one of \('lmops', 'fp32', 'bf16', 'hf'\), got 'int4'"):
        bench.prepare_provider("int4", 8, 40, 1, q, packed, gen)


def test_format_table_of_hand_written_rows():
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "isa": "avx2", "l3_mib": 32.0, "torch": "2.x",
               "loadavg_1min": 0.5, "loadavg_1min_end": 0.7}
    row = {"shape": "4096x4096", "m": 1, "lmops_ms": 0.5, "fp32_ms": 4.0, "bf16_ms": 2.0, "hf_ms": None,
           "speedup_vs_fp32": 8.0, "speedup_vs_bf16": 4.0, "speedup_vs_hf": None, "weight_gbps": 8.389,
           "copy_gbps": 20.04, "note": "hf skipped", "machine": machine}
    out = bench.format_table([row])
    assert out.splitlines()[0].startswith("machine: Test CPU, 2 cores, torch threads 2, lmops ISA avx2, L3 32 MiB")
    assert "load average 0.5 at start, 0.7 at end" in out
    assert out.splitlines()[-1] == "| 4096x4096 | 1 | 0.500 | 4.000 | 2.000 | - | 8.00x | 4.00x | - | 8.4 | 20.0 | hf skipped |"
    header = [ln for ln in out.splitlines() if ln.startswith("| N x K")][0]
    assert len(header.split("|")) == len(out.splitlines()[-1].split("|"))  # one cell per column
    assert bench.format_table([]) == "(no rows)"


def test_machine_info_fields():
    info = bench.machine_info()
    assert set(info) == {"cpu", "cores", "threads", "isa", "l3_mib", "torch", "loadavg_1min"}
    assert info["threads"] == torch.get_num_threads() and info["l3_mib"] > 0
    assert re.fullmatch(r"\d+\.\d+.*", info["torch"])
