"""Shared harness of the lmops benchmarks (pytest-benchmark; see ../shared/design/BENCHMARKS.md).

Run all:  ``python -m pytest benches --benchmark-only``
Quick:    ``python -m pytest benches --benchmark-only -k quick``  (well under 5 minutes on 2 cores)

Files named ``bench_*.py`` are collected here (the project's pytest settings collect ``test_*.py``
under tests/). The timing logic itself ships in the package (:mod:`lmops.bench`), so ``lmops bench``
and these files measure the same way: rotated weight sets past 4x L3, interleaved providers, medians.
"""

from __future__ import annotations

import fnmatch
import itertools
import time

import pytest
import torch

from lmops.bench import cpu as bench


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the small benchmark subset selected by -k quick")
    config.addinivalue_line("markers", "e2e: end-to-end model benchmarks (minutes)")


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None  # already collected by the configured patterns
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_report_header(config):
    info = bench.machine_info()
    return [f"lmops bench machine: {info}"]


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def machine():
    """CPU model, cores, threads, native ISA, L3 size, load average at session start."""
    return bench.machine_info()


@pytest.fixture(scope="session")
def copy_gbps():
    """Measured ``Tensor.copy_`` bandwidth, GB/s counting bytes read + written."""
    return bench.copy_bandwidth(256 << 20, repeats=3)


class _WeightCache:
    """One shape's ternary weights at a time (the largest float sets are hundreds of MiB), checked
    once against the plain-torch reference before any provider of that shape is timed."""

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.value: tuple[torch.Tensor, torch.Tensor] | None = None
        self.gen = torch.Generator().manual_seed(0)

    def get(self, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key != (n, k):
            self.value = None
            q, packed = bench.random_packed(n, k, self.gen)
            bench.check_ternary_equals_reference(q, packed, self.gen)
            self.key, self.value = (n, k), (q, packed)
        return self.value


@pytest.fixture(scope="session")
def ternary_weights():
    """``ternary_weights(n, k) -> (q, packed)``, checked equal to the reference on first use."""
    return _WeightCache().get


@pytest.fixture
def prepared(ternary_weights):
    """``prepared(provider, n, k, m) -> lmops.bench.Prepared`` (weight sets rotated past 4x L3)."""

    def make(provider: str, n: int, k: int, m: int) -> bench.Prepared:
        q, packed = ternary_weights(n, k)
        return bench.prepare_provider(provider, n, k, m, q, packed, torch.Generator().manual_seed(m))

    return make


@pytest.fixture
def hf_bitlinear_available():
    try:
        import transformers.integrations.bitnet  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"transformers BitLinear unavailable: {exc}")


def rounds_for(seconds_per_call: float, budget_s: float = 3.0, lo: int = 3, hi: int = 50) -> int:
    """Rounds of a pytest-benchmark test: about ``budget_s`` of timing, ``lo``..``hi`` rounds."""
    return int(min(hi, max(lo, budget_s // max(seconds_per_call, 1e-9))))


@pytest.fixture
def rounds():
    return rounds_for


def time_prepared(benchmark, p, budget_s: float = 3.0) -> None:
    """Time ``p`` (an :class:`lmops.bench.Prepared`) with pytest-benchmark: one warm-up call (where
    transformers compiles), one call to size the rounds, then every timed call on the next weight set."""
    p.call(0)
    t0 = time.perf_counter()
    p.call(1)
    per_call = time.perf_counter() - t0
    benchmark.extra_info["weight_sets"] = p.n_sets
    benchmark.extra_info["weight_bytes"] = p.weight_bytes
    counter = itertools.count(2)
    benchmark.pedantic(lambda: p.call(next(counter)), rounds=rounds_for(per_call, budget_s=budget_s), iterations=1)


@pytest.fixture
def timed():
    """The :func:`time_prepared` helper, as a fixture for the bench files."""
    return time_prepared
