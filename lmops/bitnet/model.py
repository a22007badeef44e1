"""BitNet b1.58 for whole models: convert a transformers causal LM for quantization-aware training
(QAT), pack it for inference, and the inverse (the typical use is in :mod:`lmops.bitnet`).

Modules are swapped in place through a small registry keyed by module type (``CONVERTERS`` and its
inverse ``UNCONVERTERS``, as torchao's ``quantize_`` handlers); transformers' classes are never
patched. The conversion is recorded on the model as ``model.config.lmops["bitnet"]`` (a plain dict,
written into ``config.json`` by both :func:`save_pretrained` and transformers' own ``save_pretrained``).

BitNet b1.58: Ma et al., "The Era of 1-bit LLMs" (arXiv 2402.17764).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..common.targets import match_target
from .layer import BitLinear

__all__ = [
    "CONVERTERS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PACKED_LAYOUT",
    "UNCONVERTERS",
    "conversion_record",
    "convert",
    "pack",
    "unconvert",
]

FORMAT_NAME = "lmops-bitnet"
FORMAT_VERSION = 1
PACKED_LAYOUT = "lmops-tiled-2bit-v1"
_RECORD_ATTR = "_lmops_bitnet"  # where the record lives on a model without a transformers config

QAT_WARNING = (
    "packing a model that was never trained with quantization-aware training (QAT) rounds every weight "
    "to {-1, 0, +1} and destroys its quality (the output becomes noise): BitNet weights must be learned, "
    "a float model cannot be quantized to ternary after training (bitnet.cpp users' most common surprise). "
    "Run QAT first: model = lmops.bitnet.convert(model); train it as usual; then lmops.bitnet.pack(model) "
    "and lmops.bitnet.save_pretrained(model, dst) (or `lmops convert SRC DST` without --pack, train, then pack)."
)


# ----------------------------------------------------------------------------------------------
# registry: module type -> converter, and the inverse
# ----------------------------------------------------------------------------------------------


def _linear_to_bitlinear(module: nn.Linear, *, rms_norm: bool, eps: float) -> BitLinear:
    return BitLinear.from_linear(module, rms_norm=rms_norm, eps=eps)


def _bitlinear_to_linear(module: BitLinear, *, dtype: torch.dtype, drop_rms_norm: bool) -> nn.Linear:
    if module.rms_norm is not None and not drop_rms_norm:
        raise ValueError(
            "unconvert: a BitLinear carries an RMSNorm (convert(..., rms_norm=True)) that nn.Linear cannot hold; "
            "pass drop_rms_norm=True to remove it (exact only before training changed the model)"
        )
    with torch.device("meta"):
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    if module.is_packed:
        q, gamma = module.ternary_weight()
        linear.weight = nn.Parameter(q.to(dtype) * gamma.to(dtype))
    else:
        same = module.weight.dtype == dtype
        linear.weight = module.weight if same else nn.Parameter(module.weight.detach().to(dtype))
    if module.bias is not None:
        reuse = not module.is_packed and module.bias.dtype == dtype
        linear.bias = module.bias if reuse else nn.Parameter(module.bias.detach().to(dtype))
    return linear


#: ``type -> fn(module, *, rms_norm, eps) -> new module``. Exact types only: subclasses of nn.Linear
#: (e.g. ``nn.MultiheadAttention``'s ``out_proj``, whose weight is read directly) are left alone
#: unless registered here.
CONVERTERS: dict[type[nn.Module], Callable[..., nn.Module]] = {nn.Linear: _linear_to_bitlinear}
#: ``type -> fn(module, *, dtype, drop_rms_norm) -> new module``: the inverse of :data:`CONVERTERS`.
UNCONVERTERS: dict[type[nn.Module], Callable[..., nn.Module]] = {BitLinear: _bitlinear_to_linear}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _patterns(exclude: str | Iterable[str] | None) -> tuple[str, ...]:
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        exclude = (exclude,)
    out = tuple(exclude)
    if not all(isinstance(p, str) and p for p in out):
        raise TypeError(f"exclude: expected module names (non-empty strings), got {exclude!r}")
    match_target("", out, argument="exclude")  # checks every pattern now (ValueError for 'layers.' etc.)
    return out


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    return {i for i, n in count.items() if n > 1}


def conversion_record(model: nn.Module) -> dict[str, Any] | None:
    """The BitNet conversion recorded on ``model`` (exclude, rms_norm, rms_norm_eps, packed, ...), or None."""
    config = getattr(model, "config", None)
    section = getattr(config, "lmops", None) if config is not None else None
    if isinstance(section, dict) and isinstance(section.get("bitnet"), dict):
        return section["bitnet"]
    return getattr(model, _RECORD_ATTR, None)


def _set_record(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Store ``record`` on ``model``, completed from the model's BitLinears (None removes it)."""
    if record is not None:
        layers = _bitlinears(model)
        record = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "layout": PACKED_LAYOUT,
            "exclude": ["lm_head"],
            "rms_norm_eps": 1e-6,
            **{k: v for k, v in record.items() if k != "tied"},
            "rms_norm": any(layer.rms_norm is not None for layer in layers.values()),
            "packed": bool(layers) and all(layer.is_packed for layer in layers.values()),
            "modules": sorted(layers),
        }
    config = getattr(model, "config", None)
    if config is None:
        object.__setattr__(model, _RECORD_ATTR, record)
        return
    section = dict(getattr(config, "lmops", None) or {})
    if record is None:
        section.pop("bitnet", None)
    else:
        section["bitnet"] = record
    if section:
        config.lmops = section
    elif hasattr(config, "lmops"):
        delattr(config, "lmops")


def _bitlinears(model: nn.Module) -> dict[str, BitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def _float_dtype(model: nn.Module) -> torch.dtype:
    for m in model.modules():
        if not isinstance(m, BitLinear):
            for p in m.parameters(recurse=False):
                if p.dtype.is_floating_point:
                    return p.dtype
    return torch.float32


# ----------------------------------------------------------------------------------------------
# convert / unconvert / pack
# ----------------------------------------------------------------------------------------------


def convert(
    model: nn.Module,
    *,
    exclude: str | Iterable[str] = ("lm_head",),
    rms_norm: bool = False,
    rms_norm_eps: float = 1e-6,
) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for a training-mode :class:`~lmops.bitnet.BitLinear`, in place.

    Each new layer holds a copy of the linear's weight ``(out, in)`` and bias ``(out,)`` (same device
    and dtype) as latent float weights; its forward fake-quantizes them (absmean ternary) and the input
    (per-token absmax int8) with a straight-through estimator, so the model trains as usual (QAT).

    Args:
        model: any module, typically a transformers causal LM.
        exclude: modules to leave alone, matched on whole dotted name components
            (``"mlp"``, ``"layers.0"``; see :func:`lmops.common.targets.match_target`).
            The default keeps ``lm_head`` in float, which also leaves tied embeddings tied. A linear
            whose weight is shared with another module is never converted (a warning says which).
        rms_norm: give each BitLinear an RMSNorm on its input (BitNet FAQ recipe; weight
            ``<name>.rms_norm.weight``), initialised to ones.
        rms_norm_eps: that RMSNorm's epsilon.
    Returns:
        ``model`` (a converted module itself when ``model`` is an ``nn.Linear``).
    """
    patterns = _patterns(exclude)
    if type(model) in CONVERTERS:
        return CONVERTERS[type(model)](model, rms_norm=rms_norm, eps=rms_norm_eps)
    tied = _tied_parameter_ids(model)
    for name, module in list(model.named_modules()):
        handler = CONVERTERS.get(type(module))
        if not name or handler is None or match_target(name, patterns, argument="exclude") is not None:
            continue
        if any(id(p) in tied for p in module.parameters(recurse=False)):
            warnings.warn(
                f"convert: '{name}' shares its weight with another module (tied); left as {type(module).__name__}",
                stacklevel=2,
            )
            continue
        model.set_submodule(name, handler(module, rms_norm=rms_norm, eps=rms_norm_eps))
    previous = conversion_record(model)
    exclude = sorted(set(previous["exclude"]) & set(patterns)) if previous else list(patterns)
    _set_record(model, {**(previous or {}), "exclude": exclude, "rms_norm_eps": float(rms_norm_eps)})
    return model


def unconvert(model: nn.Module, dtype: torch.dtype | None = None, *, drop_rms_norm: bool = False) -> nn.Module:
    """Inverse of :func:`convert`, in place: every ``BitLinear`` back to ``nn.Linear``.

    A training-mode layer gives back its latent weight (the same Parameter when ``dtype`` matches); a
    packed layer gives ``q * gamma``. ``dtype`` defaults to the latent weight's dtype, or for packed
    layers to the dtype of the model's other floating parameters. A layer with an RMSNorm raises
    ValueError unless ``drop_rms_norm=True``.
    """
    if type(model) in UNCONVERTERS:
        return UNCONVERTERS[type(model)](model, dtype=dtype or _float_dtype(model), drop_rms_norm=drop_rms_norm)
    if not drop_rms_norm:  # check everything before changing anything
        normed = [name for name, m in _bitlinears(model).items() if m.rms_norm is not None]
        if normed:
            raise ValueError(
                f"unconvert: {len(normed)} BitLinear layers (e.g. '{normed[0]}') carry an RMSNorm "
                "(convert(..., rms_norm=True)) that nn.Linear cannot hold; pass drop_rms_norm=True to remove "
                "them (exact only before training changed the model)"
            )
    default = dtype or _float_dtype(model)
    for name, module in list(model.named_modules()):
        handler = UNCONVERTERS.get(type(module))
        if name and handler is not None:
            want = dtype or (module.weight.dtype if isinstance(module, BitLinear) and not module.is_packed else default)
            model.set_submodule(name, handler(module, dtype=want, drop_rms_norm=drop_rms_norm))
    _set_record(model, None)
    return model


def pack(model: nn.Module) -> nn.Module:
    """Call :meth:`BitLinear.pack` on every BitLinear of ``model`` (in place; idempotent): latent
    weights become the 2-bit lmops packing (``weight_packed`` uint8, ``weight_scale`` float32 (1,)), kept in
    memory in the layout the current backend reads best and saved in the canonical tiled layout.
    Raises ValueError when the model has no BitLinear."""
    layers = _bitlinears(model)  # holds the model itself when it is a BitLinear
    if not layers:
        raise ValueError("pack: the model has no BitLinear layer; call lmops.bitnet.convert(model) and train it first")
    for layer in layers.values():
        layer.pack()
    if not isinstance(model, BitLinear):
        _set_record(model, conversion_record(model) or {})
    return model


_pack_all = pack  # convert_directory's `pack` argument shadows the function
