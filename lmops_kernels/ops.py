"""Every ``lmops::`` operator: its schema (declared once, in ``schemas.def``), its fake (meta)
implementation, and the Python kernel that routes a call to a backend where no native kernel is
registered (:func:`lmops_kernels.dispatch.route`).

The native extension defines the schemas in C++ (``csrc/ops.cpp``) and registers its kernels at the
``CPU``, ``CUDA`` and ``Autograd`` keys; where it is missing, this module defines the schemas from the
same file and every call is routed to the reference. The public, validating wrappers are in
:mod:`lmops_kernels.ternary`, :mod:`lmops_kernels.int8` and :mod:`lmops_kernels.mole`. Pattern after
torchao's ``ops.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import _native, dispatch
from .reference.packing import packed_cols

_SCHEMA_FILE = Path(__file__).with_name("schemas.def")
SCHEMAS: dict[str, str] = {
    m.group(1).split("(", 1)[0]: m.group(1).replace('\\"', '"')
    for m in re.finditer(r'^LMOPS_SCHEMA\("(.*)"\)\s*$', _SCHEMA_FILE.read_text(encoding="utf-8"), re.M)
}

# Ops whose Python kernel is their definition (plain torch, decomposed by torch.compile), and the one
# whose kernel is native C++ only (the MoLE weight cache, CompositeExplicitAutograd): no routing.
_IMPLICIT = ("ternary_linear_backward", "mole_gate_backward")
_NATIVE_ONLY = ("mole_gate_weights",)

_lib = torch.library.Library("lmops", "FRAGMENT")


def _defined(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"lmops::{name}", "")
    except RuntimeError:
        return False
    return True


for _name, _schema in SCHEMAS.items():
    if not _defined(_name):  # the extension is missing (or older than this file): define it here
        _lib.define(_schema)
    if _name not in _IMPLICIT and _name not in _NATIVE_ONLY:
        _lib.impl(_name, dispatch.route(_name), "CompositeExplicitAutograd")


def has_native_autograd(op: str) -> bool:
    """True when the extension registered ``op``'s autograd kernel in C++."""
    return _native.available() and torch._C._dispatch_has_kernel_for_dispatch_key(f"lmops::{op}", "Autograd")


# ----------------------------------------------------------------------------------------------
# fake (meta) implementations: shapes and dtypes only, for torch.compile / torch.export
# ----------------------------------------------------------------------------------------------


@torch.library.register_fake("lmops::quantize_weight_absmean")
def _(w):
    return torch.empty_like(w, dtype=torch.int8), w.new_empty((), dtype=torch.float32)


@torch.library.register_fake("lmops::quantize_activation_absmax")
def _(x, bits=8):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.register_fake("lmops::pack_ternary")
def _(q):
    return q.new_empty((q.shape[0], packed_cols(q.shape[1])), dtype=torch.uint8)


@torch.library.register_fake("lmops::unpack_ternary")
def _(packed, out_features, in_features):
    return packed.new_empty((out_features, in_features), dtype=torch.int8)


@torch.library.register_fake("lmops::to_hf_bitnet")
def _(q):
    return q.new_empty(((q.shape[0] + 3) // 4, *q.shape[1:]), dtype=torch.uint8)


@torch.library.register_fake("lmops::from_hf_bitnet")
def _(packed, out_features):
    return packed.new_empty((out_features, *packed.shape[1:]), dtype=torch.int8)


@torch.library.register_fake("lmops::ternary_matmul_int")
def _(x_q, packed, layout="tiled"):
    return x_q.new_empty((x_q.shape[0], packed.shape[0]), dtype=torch.int32)


@torch.library.register_fake("lmops::ternary_linear")
def _(x, packed, weight_scale, bias=None, layout="tiled"):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("lmops::ternary_linear_multi")
def _(x, packed, weight_scale, bias, layout="tiled"):
    return [x.new_empty((*x.shape[:-1], p.shape[0])) for p in packed]


@torch.library.register_fake("lmops::int8_linear")
def _(x, weight, weight_scale, bias=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("lmops::bf16_linear")
def _(x, weight, bias=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("lmops::convert_layout")
def _(packed, src, dst):
    return torch.empty_like(packed, memory_format=torch.contiguous_format)


@torch.library.register_fake("lmops::mole_gate")
def _(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    return x.new_empty((x.shape[0], lora_B.shape[1])), x.new_empty((x.shape[0], lora_A.shape[0]), dtype=torch.float32)


@torch.library.register_fake("lmops::mole_gate_weights")
def _(lora_A, lora_B, gate_weight, norm_weight, norm_bias):
    n, r, k = lora_A.shape
    o = lora_B.shape[1]
    f = dict(dtype=torch.float32)
    return (
        lora_A.new_empty((n * r, o), **f),
        lora_A.new_empty((n * r,), **f),
        lora_A.new_empty((n, r, r), **f),
        lora_A.new_empty((n * r, n), **f),
        lora_A.new_empty((n,), **f),
        lora_A.new_empty((n,), **f),
    )
