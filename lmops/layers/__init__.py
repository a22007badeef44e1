"""Drop-in layers: one module per layer."""

from .bitlinear import BitLinear

__all__ = ["BitLinear"]
