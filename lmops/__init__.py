"""lmops: fast, drop-in PyTorch layers for efficient LM methods (BitNet b1.58, ResLoRA, MoLE).

Model-level entry points live in submodules: :mod:`lmops.bitnet` (convert, pack, save, load BitNet
models) and :mod:`lmops.lora` (ResLoRA and MoLE over any ``transformers`` model, peft interop).
"""

from .layers import BitLinear, MoLELinear, ResLoRALinear

__version__ = "0.1.0"

__all__ = ["BitLinear", "MoLELinear", "ResLoRALinear", "__version__"]
