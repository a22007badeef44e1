"""Plain-torch reference implementations: the specification of every lmops op."""

from .bf16 import bf16_linear
from .int8 import int8_linear, int8_matmul_int, quantize_weight_int8
from .mole import mole_gate
from .packing import from_hf_bitnet, pack_ternary, packed_shape, to_hf_bitnet, unpack_ternary
from .ternary import (
    quantize_activation_absmax,
    quantize_weight_absmean,
    ternary_linear,
    ternary_matmul_int,
)

__all__ = [
    "bf16_linear",
    "from_hf_bitnet",
    "int8_linear",
    "int8_matmul_int",
    "mole_gate",
    "pack_ternary",
    "packed_shape",
    "quantize_activation_absmax",
    "quantize_weight_absmean",
    "quantize_weight_int8",
    "ternary_linear",
    "ternary_matmul_int",
    "to_hf_bitnet",
    "unpack_ternary",
]
