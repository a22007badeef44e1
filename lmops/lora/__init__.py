"""Model-level LoRA methods: ResLoRA (residual LoRA, mergeable) and MoLE (Mixture of LoRA Experts).

Names are resolved lazily so that importing ``lmops.lora`` stays cheap and each method's module
loads only when used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # ResLoRA (lmops/lora/reslora.py)
    "apply_reslora": "reslora",
    "merge_and_unload": "reslora",
    "print_trainable_parameters": "reslora",
    "trainable_parameters": "reslora",
    "save_adapter": "reslora",
    "load_adapter": "reslora",
    "unload": "reslora",
    "reslora_layers": "reslora",
    "ResLoRAConfig": "reslora",
    # MoLE (lmops/lora/mole.py, lmops/lora/peft_interop.py)
    "apply_mole": "mole",
    "balancing_loss": "mole",
    "mask_experts": "mole",
    "gate_parameters": "mole",
    "unload_mole": "mole",
    "mole_layers": "mole",
    "mole_from_peft": "peft_interop",
    "merge_adapters_arithmetic": "peft_interop",
    "read_peft_lora": "peft_interop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmops.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
