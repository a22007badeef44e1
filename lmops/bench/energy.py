"""Arithmetic-energy ESTIMATES of weight matmuls, from per-operation energy constants.

These are estimates, not measurements: they count only the arithmetic of the weight matmuls (one
operation set per weight per token) and nothing else: no memory traffic (DRAM, caches), no
attention scores, norms, softmax or activation quantization, no idle or static power. Where a
machine exposes a power counter (NVML on GPUs, RAPL under ``/sys/class/powercap`` on CPUs), the
benchmarks measure joules instead (``benches/bench_energy.py``).

What one weight costs per token (BitNet b1.58, arXiv 2402.17764, Figure 3 and section 3):

- ``ternary`` (W1.58A8): one INT8 ADD; the multiplication by -1/0/+1 is a sign selection, not a
  multiplier.
- ``int8`` (W8A8): one INT8 MUL + one INT8 ADD.
- ``fp16`` / ``bf16``: one FP16 MUL + one FP16 ADD (no bf16 constants are published; bf16 is costed
  as fp16, an assumption).
- ``fp32``: one FP32 MUL + one FP32 ADD.

Constants, picojoules per operation:

- **7 nm**: FP16 ADD 0.16, FP16 MUL 0.34, INT8 ADD 0.007, INT8 MUL 0.07. Source: BitNet b1.58 2B4T
  technical report (arXiv 2504.12285), Table 4, the table behind the b1.58 paper's "71.4x lower
  arithmetic energy" ((0.16 + 0.34) / 0.007 = 71.4). No FP32 figures are given at 7 nm.
- **45 nm**: FP32 ADD 0.9, FP32 MUL 3.7, INT8 ADD 0.03, INT8 MUL 0.2. Source: M. Horowitz, "Computing's
  energy problem (and what we can do about it)", ISSCC 2014, as used in BitNet (arXiv 2310.11453)
  Table 2. (FP16 at 45 nm is left out: its MUL figure could not be checked against the source.)

DRAM energy per byte is not included: the project's research notes cite no source for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = [
    "FORMATS",
    "OP_ENERGY_PJ",
    "SOURCES",
    "count_linear_weights",
    "energy_per_weight_pj",
    "estimate_matmul_energy",
    "estimate_model_energy_per_token",
]

LABEL = "estimate"

OP_ENERGY_PJ: dict[str, dict[tuple[str, str], float]] = {
    "7nm": {
        ("fp16", "add"): 0.16,
        ("fp16", "mul"): 0.34,
        ("int8", "add"): 0.007,
        ("int8", "mul"): 0.07,
    },
    "45nm": {
        ("fp32", "add"): 0.9,
        ("fp32", "mul"): 3.7,
        ("int8", "add"): 0.03,
        ("int8", "mul"): 0.2,
    },
}

SOURCES = {
    "7nm": "BitNet b1.58 2B4T report (arXiv 2504.12285) Table 4",
    "45nm": "Horowitz, ISSCC 2014, via BitNet (arXiv 2310.11453) Table 2",
}

# operations per weight per token, as (number type, operation)
FORMATS: dict[str, tuple[tuple[str, str], ...]] = {
    "ternary": (("int8", "add"),),
    "int8": (("int8", "mul"), ("int8", "add")),
    "fp16": (("fp16", "mul"), ("fp16", "add")),
    "bf16": (("fp16", "mul"), ("fp16", "add")),  # costed as fp16: no published bf16 constants
    "fp32": (("fp32", "mul"), ("fp32", "add")),
}


def energy_per_weight_pj(fmt: str, node: str = "7nm") -> float:
    """Picojoules of arithmetic per weight per token for ``fmt`` at process ``node``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if node not in OP_ENERGY_PJ:
        raise ValueError(f"node: expected one of {', '.join(OP_ENERGY_PJ)}, got {node!r}")
    table = OP_ENERGY_PJ[node]
    missing = [op for op in FORMATS[fmt] if op not in table]
    if missing:
        have = sorted({f for f, ops in FORMATS.items() if all(op in table for op in ops)})
        raise ValueError(
            f"fmt: no {node} constants for {fmt} (missing {missing}); at {node} the formats are {', '.join(have)}"
        )
    return sum(table[op] for op in FORMATS[fmt])


def estimate_matmul_energy(n_weights: int, fmt: str, *, node: str = "7nm", tokens: int = 1) -> float:
    """ESTIMATED arithmetic energy in joules of multiplying ``tokens`` activation vectors by a
    weight matrix of ``n_weights`` weights stored as ``fmt`` (see the module docstring)."""
    if not isinstance(n_weights, int) or n_weights < 0:
        raise ValueError(f"n_weights: expected a non-negative int, got {n_weights!r}")
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens: expected a non-negative int, got {tokens!r}")
    return n_weights * tokens * energy_per_weight_pj(fmt, node) * 1e-12


def count_linear_weights(model: nn.Module, dense_fmt: str = "fp16") -> dict[str, int]:
    """Weights per format in ``model``'s linear layers: lmops ``BitLinear`` counts as ternary, any
    other ``nn.Linear`` as ``dense_fmt``. Embedding lookups do no arithmetic and are not counted."""
    from ..bitnet.layer import BitLinear

    counts = {"ternary": 0, dense_fmt: 0}
    for module in model.modules():
        if isinstance(module, BitLinear):
            counts["ternary"] += module.in_features * module.out_features
        elif isinstance(module, nn.Linear):
            counts[dense_fmt] += module.in_features * module.out_features
    return counts


def estimate_model_energy_per_token(
    weights: nn.Module | Mapping[str, int], *, node: str = "7nm", dense_fmt: str = "fp16"
) -> dict[str, object]:
    """ESTIMATED arithmetic energy of one token through a model's weight matmuls.

    Args:
        weights: a model (its linear layers are counted with :func:`count_linear_weights`) or a
            mapping ``{fmt: number of weights}``.
        node: ``"7nm"`` or ``"45nm"`` (which formats each supports: see ``OP_ENERGY_PJ``).
        dense_fmt: the format of the non-ternary linear layers of a model (e.g. its output head).
    Returns:
        ``{"label": "estimate", "joules": total, "by_format": {fmt: joules}, "weights": {fmt: count},
        "node": node, "source": ..., "counts": "..."}``.
    """
    counts = count_linear_weights(weights, dense_fmt) if isinstance(weights, nn.Module) else dict(weights)
    by_format = {fmt: estimate_matmul_energy(int(n), fmt, node=node) for fmt, n in counts.items() if n}
    return {
        "label": LABEL,
        "joules": sum(by_format.values()),
        "by_format": by_format,
        "weights": {fmt: int(n) for fmt, n in counts.items()},
        "node": node,
        "source": SOURCES[node],
        "counts": "arithmetic of weight matmuls only (no memory traffic, attention scores, norms or static power)",
    }
