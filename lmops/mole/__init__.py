"""MoLE, Mixture of LoRA Experts (Wu, Huang, Wei, ICLR 2024, arXiv 2404.13628): a learnable per-token
gate over frozen LoRA experts, with the fused ``mole_gate`` op.

Files: ``layer.py`` (:class:`MoLELinear`, the gate), ``model.py`` (apply_mole, unload_mole,
balancing_loss, mask_experts, gate_parameters), ``peft.py`` (peft adapters as experts, and the
arithmetic-merge baseline).
"""

from .layer import GATE_INPUTS, NORMS, MoLELinear
from .model import (
    GRANULARITIES,
    apply_mole,
    balancing_loss,
    expert_names,
    gate_parameters,
    mask_experts,
    mole_layers,
    unload_mole,
)
from .peft import merge_adapters_arithmetic, mole_from_peft, read_peft_lora

__all__ = [
    "GATE_INPUTS",
    "GRANULARITIES",
    "NORMS",
    "MoLELinear",
    "apply_mole",
    "balancing_loss",
    "expert_names",
    "gate_parameters",
    "mask_experts",
    "merge_adapters_arithmetic",
    "mole_from_peft",
    "mole_layers",
    "read_peft_lora",
    "unload_mole",
]
