"""lmops kernels: BitNet b1.58 ternary ops and the MoLE gate, with a plain-torch reference and native backends.

Every function here is one ``lmops::`` operator (``torch.ops.lmops.<name>``), validated once and
routed by :mod:`lmops_kernels.dispatch` (``LMOPS_BACKEND`` forces a backend).
"""

from . import backends as _backends  # noqa: F401  (registers every backend's implementations)
from .ops import (
    from_hf_bitnet,
    mole_gate,
    pack_ternary,
    quantize_activation_absmax,
    quantize_weight_absmean,
    ternary_linear,
    ternary_matmul_int,
    to_hf_bitnet,
    unpack_ternary,
)

__all__ = [
    "from_hf_bitnet",
    "mole_gate",
    "pack_ternary",
    "quantize_activation_absmax",
    "quantize_weight_absmean",
    "ternary_linear",
    "ternary_matmul_int",
    "to_hf_bitnet",
    "unpack_ternary",
]
