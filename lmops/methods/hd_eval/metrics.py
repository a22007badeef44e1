"""Agreement with human scores: Pearson, Spearman and Kendall (``scipy.stats``), at the sample level and at
the system level (each system's mean predicted vs mean human score, as SummEval-style meta-evaluations
report it)."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

__all__ = ["correlations", "system_correlations", "system_means"]

MIN_SYSTEMS = 3  # with two systems every correlation is +-1


def _clean(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def correlations(predicted: Sequence[float], human: Sequence[float]) -> dict:
    """``{"n", "pearson", "spearman", "kendall"}``; a coefficient is ``None`` when undefined (fewer than
    3 pairs, or a constant input)."""
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(human, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"predicted, human: expected two 1-D sequences of one length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict = {"n": int(x.size), "pearson": None, "spearman": None, "kendall": None}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["pearson"] = _clean(stats.pearsonr(x, y)[0])
        out["spearman"] = _clean(stats.spearmanr(x, y)[0])
        out["kendall"] = _clean(stats.kendalltau(x, y)[0])
    return out


def system_means(values: Sequence[float], systems: Sequence[str]) -> dict[str, float]:
    """Mean of ``values`` per system id, systems in first-seen order (non-finite values ignored)."""
    if len(values) != len(systems):
        raise ValueError(f"values, systems: expected one length, got {len(values)} and {len(systems)}")
    sums: dict[str, list[float]] = {}
    for value, system in zip(values, systems):
        if value is not None and math.isfinite(value):
            sums.setdefault(system, []).append(float(value))
    return {s: float(np.mean(v)) for s, v in sums.items()}


def system_correlations(predicted: Sequence[float], human: Sequence[float], systems: Sequence[str]) -> dict:
    """Correlations of per-system means: ``{"n_systems", "pearson", "spearman", "kendall"}`` (coefficients
    ``None`` with fewer than 3 systems)."""
    pairs = [(p, h, s) for p, h, s in zip(predicted, human, systems) if math.isfinite(p) and math.isfinite(h)]
    pred = system_means([p for p, _, _ in pairs], [s for _, _, s in pairs])
    hum = system_means([h for _, h, _ in pairs], [s for _, _, s in pairs])
    names = list(pred)
    out = correlations([pred[s] for s in names], [hum[s] for s in names]) if len(names) >= MIN_SYSTEMS else {
        "pearson": None, "spearman": None, "kendall": None}
    out.pop("n", None)
    return {"n_systems": len(names), **out}
