"""Measurement, not library API: the ``lmops bench`` harness and the meters the benchmarks use.

- :mod:`lmops.bench.cpu`: CPU kernel timing (``lmops bench``).
- :mod:`lmops.bench.gpu`: GPU kernel timing (``lmops bench --device cuda``).
- :mod:`lmops.bench.energy`: arithmetic-energy estimates from operation counts.
- :mod:`lmops.bench.nvml`: measured GPU energy (NVML).
"""
