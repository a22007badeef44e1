"""``lmops.bench.energy``: the arithmetic-energy estimate of a small model against a count done by hand
from the published per-operation constants (written out here, not read from the module), and its
errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmops.bench import energy
from lmops.bitnet import BitLinear

# picojoules per operation, from the sources the module cites (BitNet b1.58 2B4T Table 4; Horowitz 2014)
PJ_7NM = {"fp16_add": 0.16, "fp16_mul": 0.34, "int8_add": 0.007, "int8_mul": 0.07}
PJ_45NM = {"fp32_add": 0.9, "fp32_mul": 3.7, "int8_add": 0.03, "int8_mul": 0.2}


def small_model() -> nn.Module:
    """Two BitLinear (64->32, 32->48), one dense head (48->10), an embedding and a norm that do no
    weight-matmul arithmetic. Ternary weights: 64*32 + 32*48 = 3584; dense: 48*10 = 480."""
    return nn.Sequential(
        nn.Embedding(100, 64),
        BitLinear(64, 32),
        nn.LayerNorm(32),
        BitLinear(32, 48, bias=False),
        nn.Linear(48, 10),
    )


def test_counts_by_hand():
    assert energy.count_linear_weights(small_model()) == {"ternary": 3584, "fp16": 480}
    assert energy.count_linear_weights(small_model(), dense_fmt="fp32") == {"ternary": 3584, "fp32": 480}
    with torch.device("meta"):  # counting needs no real weights
        assert energy.count_linear_weights(nn.Linear(4096, 4096), "bf16") == {"ternary": 0, "bf16": 4096 * 4096}


def test_model_estimate_equals_the_hand_count_7nm():
    est = energy.estimate_model_energy_per_token(small_model())
    ternary_pj = 3584 * PJ_7NM["int8_add"]  # a ternary weight: one INT8 add
    dense_pj = 480 * (PJ_7NM["fp16_mul"] + PJ_7NM["fp16_add"])  # an fp16 weight: one mul, one add
    assert est["by_format"]["ternary"] == pytest.approx(ternary_pj * 1e-12, rel=1e-12)
    assert est["by_format"]["fp16"] == pytest.approx(dense_pj * 1e-12, rel=1e-12)
    assert est["joules"] == pytest.approx(264.088e-12, rel=1e-12)  # 25.088 pJ + 240 pJ
    assert est["label"] == "estimate" and est["node"] == "7nm" and est["weights"] == {"ternary": 3584, "fp16": 480}


def test_model_estimate_equals_the_hand_count_45nm_fp32_head():
    est = energy.estimate_model_energy_per_token(small_model(), node="45nm", dense_fmt="fp32")
    hand = 3584 * PJ_45NM["int8_add"] + 480 * (PJ_45NM["fp32_mul"] + PJ_45NM["fp32_add"])
    assert est["joules"] == pytest.approx(hand * 1e-12, rel=1e-12)
    assert est["joules"] == pytest.approx(2315.52e-12, rel=1e-12)  # 107.52 pJ + 2208 pJ
    assert "Horowitz" in est["source"]


@pytest.mark.parametrize(
    "fmt, node, pj",
    [
        ("ternary", "7nm", 0.007),
        ("int8", "7nm", 0.077),
        ("fp16", "7nm", 0.5),
        ("bf16", "7nm", 0.5),  # costed as fp16
        ("ternary", "45nm", 0.03),
        ("int8", "45nm", 0.23),
        ("fp32", "45nm", 4.6),
    ],
)
def test_per_weight_and_matmul(fmt, node, pj):
    assert energy.energy_per_weight_pj(fmt, node) == pytest.approx(pj, rel=1e-12)
    assert energy.estimate_matmul_energy(1000, fmt, node=node, tokens=3) == pytest.approx(3000 * pj * 1e-12, rel=1e-12)
    assert energy.estimate_matmul_energy(0, fmt, node=node) == 0.0


def test_mapping_input_and_zero_counts():
    est = energy.estimate_model_energy_per_token({"ternary": 1000, "fp16": 0})
    assert est["by_format"] == {"ternary": pytest.approx(7e-12)} and est["weights"] == {"ternary": 1000, "fp16": 0}


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"fmt: expected one of ternary, int8, fp16, bf16, fp32, got 'int4'"):
        energy.energy_per_weight_pj("int4")
    with pytest.raises(ValueError, match=r"node: expected one of 7nm, 45nm, got '5nm'"):
        energy.energy_per_weight_pj("ternary", "5nm")
    with pytest.raises(ValueError, match=r"fmt: no 45nm constants for fp16 .*at 45nm the formats are fp32, int8, ternary"):
        energy.energy_per_weight_pj("fp16", "45nm")
    with pytest.raises(ValueError, match="fmt: no 7nm constants for fp32"):
        energy.estimate_model_energy_per_token(small_model(), dense_fmt="fp32")  # the head has no 7 nm price
    with pytest.raises(ValueError, match="n_weights: expected a non-negative int, got -1"):
        energy.estimate_matmul_energy(-1, "ternary")
    with pytest.raises(ValueError, match="n_weights: expected a non-negative int, got 2.5"):
        energy.estimate_matmul_energy(2.5, "ternary")
    with pytest.raises(ValueError, match="tokens: expected a non-negative int, got -2"):
        energy.estimate_matmul_energy(10, "ternary", tokens=-2)
    with pytest.raises(ValueError, match="fmt: expected one of"):
        energy.estimate_model_energy_per_token({"fp8": 10})
