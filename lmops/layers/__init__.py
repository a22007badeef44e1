"""Drop-in layers: one module per layer."""

from .bitlinear import BitLinear
from .mole import MoLELinear
from .reslora import ResLoRALinear

__all__ = ["BitLinear", "MoLELinear", "ResLoRALinear"]
