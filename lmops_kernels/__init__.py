"""lmops kernels: BitNet b1.58 ternary ops, int8 per-channel and bf16 linears (output heads) and the MoLE gate,
with a plain-torch reference and native backends.

Every function here is one ``lmops::`` operator (``torch.ops.lmops.<name>``), validated once by its
wrapper; torch's dispatcher picks the kernel (:mod:`lmops_kernels.dispatch`; ``LMOPS_BACKEND`` forces a
backend).
"""

from . import _native  # noqa: F401  (loads the extension: C++ schemas and kernels first)
from . import ops  # noqa: F401  (schemas where the extension is missing, fake kernels, Python routing)
from . import backends  # noqa: F401  (the backend table)
from . import dispatch
from .bf16 import bf16_linear
from .int8 import int8_linear, quantize_weight_int8
from .mole import mole_gate
from .ternary import (
    from_hf_bitnet,
    pack_ternary,
    quantize_activation_absmax,
    quantize_weight_absmean,
    ternary_linear,
    ternary_linear_multi,
    ternary_matmul_int,
    to_hf_bitnet,
    unpack_ternary,
)

dispatch.force_from_environment()

__all__ = [
    "bf16_linear",
    "from_hf_bitnet",
    "int8_linear",
    "mole_gate",
    "pack_ternary",
    "quantize_activation_absmax",
    "quantize_weight_absmean",
    "quantize_weight_int8",
    "ternary_linear",
    "ternary_linear_multi",
    "ternary_matmul_int",
    "to_hf_bitnet",
    "unpack_ternary",
]
