"""lmops: fast, drop-in PyTorch layers for efficient LM methods (BitNet b1.58, ResLoRA, MoLE).

One package per method, each with the same file roles (``layer.py`` the ``nn.Module``, ``model.py``
the model-level functions, ``io.py`` checkpoints, ``hf.py``/``peft.py`` interop):

- :mod:`lmops.bitnet`: ``BitLinear``; convert, pack, save and load BitNet b1.58 models.
- :mod:`lmops.reslora`: ``ResLoRALinear``; apply, merge and unload ResLoRA adapters, adapter files.
- :mod:`lmops.mole`: ``MoLELinear``; apply MoLE over LoRA experts (peft adapters included), gates, masks.

The kernels are the separate package :mod:`lmops_kernels`; the command line is :mod:`lmops.cli`.
"""

from .bitnet.layer import BitLinear
from .engine.loop import generate
from .mole.layer import MoLELinear
from .reslora.layer import ResLoRALinear

__version__ = "0.1.0"

__all__ = ["BitLinear", "MoLELinear", "ResLoRALinear", "__version__", "generate"]
