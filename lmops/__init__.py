"""lmops: fast, drop-in PyTorch layers for efficient LM methods (BitNet b1.58, ResLoRA, MoLE)."""

from .layers import BitLinear

__version__ = "0.1.0"

__all__ = ["BitLinear", "__version__"]
