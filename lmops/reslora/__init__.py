"""ResLoRA (Shi et al., arXiv 2402.18039): residual LoRA with the paper's mergeable structures.

Files: ``layer.py`` (:class:`ResLoRALinear`), ``model.py`` (apply_reslora, merge_and_unload, unload,
parameter counts), ``io.py`` (save_adapter, load_adapter).
"""

from .io import load_adapter, save_adapter
from .layer import ESTIMATORS, STRUCTURES, ResLoRALinear
from .model import (
    ResLoRAConfig,
    apply_reslora,
    merge_and_unload,
    print_trainable_parameters,
    reslora_layers,
    trainable_parameters,
    unload,
)

__all__ = [
    "ESTIMATORS",
    "STRUCTURES",
    "ResLoRAConfig",
    "ResLoRALinear",
    "apply_reslora",
    "load_adapter",
    "merge_and_unload",
    "print_trainable_parameters",
    "reslora_layers",
    "save_adapter",
    "trainable_parameters",
    "unload",
]
