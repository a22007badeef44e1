"""ternary_linear (lmops, native W2A8) vs F.linear fp32 / bf16 and transformers' packed BitLinear.

One test per (shape, M, provider), grouped by shape and M; weight sets rotated past 4x L3 (see
conftest.py and lmops.bench). The ternary output is checked equal to the plain-torch reference once
per shape before that shape is timed. ``test_ratio_table_*`` time all providers interleaved in one
loop and print the medians and ratios (the numbers for RESULTS.md); nothing here asserts a speed.

    python -m pytest benches/bench_ternary_linear.py --benchmark-only -k quick -s   # about a minute
    python -m pytest benches/bench_ternary_linear.py --benchmark-only -s            # several minutes
"""

from __future__ import annotations


import pytest

from lmops.bench import cpu as bench

SHAPES = bench.FULL_SHAPES  # (N, K): 4096x4096, 2048x2048, 11008x4096, 1000x4000
MS = bench.FULL_MS  # decode 1, prefill 128 and 512
QUICK = set(bench.QUICK_CASES)


def _cases():
    out = []
    for n, k in SHAPES:
        for m in MS:
            for provider in bench.PROVIDERS:
                tag = "quick-" if (n, k, m) in QUICK and provider != "hf" else ""
                mode = "decode" if m == 1 else "prefill"
                out.append(pytest.param(n, k, m, provider, id=f"{tag}{provider}-{mode}-M{m}-{n}x{k}"))
    return out


@pytest.mark.parametrize("n,k,m,provider", _cases())
def test_linear(benchmark, prepared, timed, n, k, m, provider, request):
    if provider == "hf":
        request.getfixturevalue("hf_bitlinear_available")
    benchmark.group = f"linear {n}x{k} M={m} ({'decode' if m == 1 else 'prefill'})"
    benchmark.extra_info.update({"provider": bench.LABELS[provider], "n": n, "k": k, "m": m})
    timed(benchmark, prepared(provider, n, k, m))


def _print_table(rows, capsys):
    table = bench.format_table(rows)
    with capsys.disabled():
        print("\n" + table)
    return table


def test_ratio_table_quick(benchmark, capsys):
    """Quick table: decode shapes and one prefill, lmops vs F.linear fp32/bf16, interleaved medians."""
    rows = benchmark.pedantic(bench.kernel_table, args=(True,), rounds=1, iterations=1)
    table = _print_table(rows, capsys)
    assert all(r["checked"] for r in rows) and "4096x4096" in table
    benchmark.extra_info["rows"] = [{k: v for k, v in r.items() if k != "machine"} for r in rows]


def test_ratio_table_full(benchmark, capsys):
    """Full table: all shapes, M in {1, 128, 512}, all four providers, interleaved medians."""
    rows = benchmark.pedantic(bench.kernel_table, args=(False,), rounds=1, iterations=1)
    _print_table(rows, capsys)
    assert len(rows) == len(SHAPES) * len(MS) and all(r["checked"] for r in rows)
    benchmark.extra_info["rows"] = [{k: v for k, v in r.items() if k != "machine"} for r in rows]
