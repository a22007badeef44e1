"""Reading transformers' BitNet checkpoints (``quantization_config.quant_method == "bitnet"``) into lmops
``BitLinear`` layers. Used by :func:`lmops.bitnet.from_pretrained`.

What transformers stores and computes (``transformers/integrations/bitnet.py``), per converted linear:

- ``linear_class="bitlinear"`` (default): ``<name>.weight`` uint8 ``(out/4, in)`` in transformers'
  packing (:func:`lmops_kernels.from_hf_bitnet`), ``<name>.weight_scale`` (1,), optional ``<name>.bias``;
  forward ``y = (x_q @ q^T) / (s_x * weight_scale) + bias``, so gamma = ``1 / weight_scale``.
- ``linear_class="autobitlinear"``, ``quantization_mode="offline"``: the same tensors (the weight may
  also be stored unpacked, as float ternary values); forward ``y = (x_q @ q^T + bias) * weight_scale``,
  so gamma = ``weight_scale`` and the lmops bias is ``bias * weight_scale``.
- ``autobitlinear`` + ``"online"``: latent float ``<name>.weight`` quantized at every forward, which is
  exactly a training-mode ``BitLinear``.
- ``use_rms_norm``: an RMSNorm on the input, weight ``<name>.rms_norm.weight`` (same key in lmops),
  epsilon ``rms_norm_eps``. ``modules_to_not_convert``: linears kept in float (``lm_head`` by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import lmops_kernels as lk

from ..common.targets import match_target
from .layer import BitLinear

__all__ = ["HF_QUANT_METHOD", "hf_bitnet_to_lmops"]

HF_QUANT_METHOD = "bitnet"
_LINEAR_CLASSES = ("bitlinear", "autobitlinear")
_MODES = ("online", "offline")


def _option(quant: dict[str, Any], key: str, default: Any, allowed: tuple[str, ...], path: Path) -> Any:
    value = quant.get(key) or default
    if value not in allowed:
        raise ValueError(f"{path / 'config.json'}: quantization_config.{key} is {value!r}, expected one of {allowed}")
    return value


def _ternary_from_checkpoint(w: torch.Tensor, linear: nn.Linear, key: str, path: Path) -> torch.Tensor:
    out_features, in_features = linear.out_features, linear.in_features
    if w.dtype == torch.uint8:
        want = ((out_features + 3) // 4, in_features)
        if tuple(w.shape) != want:
            raise ValueError(
                f"{path}: tensor '{key}' has shape {tuple(w.shape)}, expected {want} (transformers' BitNet packing "
                f"of a ({out_features}, {in_features}) linear)"
            )
        return lk.from_hf_bitnet(w.contiguous(), out_features)
    if tuple(w.shape) != (out_features, in_features):
        raise ValueError(f"{path}: tensor '{key}' has shape {tuple(w.shape)}, expected {(out_features, in_features)}")
    if not w.dtype.is_floating_point or not bool(((w == -1) | (w == 0) | (w == 1)).all()):
        raise ValueError(f"{path}: tensor '{key}' has a weight_scale but is neither packed uint8 nor ternary floats")
    return w.to(torch.int8)


def hf_bitnet_to_lmops(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    quant: dict[str, Any],
    path: Path,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Swap the linears of ``model`` (a skeleton built from the checkpoint's config) that the checkpoint
    quantized for BitLinears, and rewrite ``sd`` in place to lmops keys (``weight_packed``, gamma in
    ``weight_scale``, rescaled bias). Returns the conversion record for the model."""
    linear_class = _option(quant, "linear_class", "bitlinear", _LINEAR_CLASSES, path)
    mode = _option(quant, "quantization_mode", "offline", _MODES, path)
    use_rms_norm = bool(quant.get("use_rms_norm", False))
    eps = float(quant.get("rms_norm_eps") or 1e-6)
    not_converted = list(quant.get("modules_to_not_convert") or ["lm_head"])
    for name, linear in list(model.named_modules()):
        if type(linear) is not nn.Linear or not name:
            continue
        w_key, s_key, b_key = f"{name}.weight", f"{name}.weight_scale", f"{name}.bias"
        if s_key not in sd:
            if w_key in sd and sd[w_key].dtype == torch.uint8:
                raise ValueError(f"{path}: tensor '{w_key}' is packed (uint8) but '{s_key}' is missing")
            online = linear_class == "autobitlinear" and mode == "online"
            # transformers' own rule for modules_to_not_convert (a regex from the start, or a string suffix)
            # agrees with lmops' on full names and last components ("lm_head"), what its writers put there
            kept = match_target(name, not_converted, argument=f"{path}: modules_to_not_convert") is not None
            if online and w_key in sd and not kept:
                model.set_submodule(name, BitLinear.from_linear(linear, rms_norm=use_rms_norm, eps=eps))
            continue
        if w_key not in sd:
            raise ValueError(f"{path}: tensor '{s_key}' is present but '{w_key}' is missing")
        scale = sd.pop(s_key).to(torch.float32)
        if scale.numel() != 1:
            raise ValueError(f"{path}: tensor '{s_key}' has shape {tuple(scale.shape)}, expected one element")
        q = _ternary_from_checkpoint(sd.pop(w_key), linear, w_key, path)
        gamma = 1.0 / scale if linear_class == "bitlinear" else scale
        bias = sd.pop(b_key, None)
        if bias is not None:
            if tuple(bias.shape) != (linear.out_features,):
                raise ValueError(
                    f"{path}: tensor '{b_key}' has shape {tuple(bias.shape)}, expected ({linear.out_features},)"
                )
            bias = (bias.to(torch.float32) * scale if linear_class == "autobitlinear" else bias).to(dtype)
        layer = BitLinear.from_ternary(q, gamma.reshape(()), bias, rms_norm=use_rms_norm, eps=eps)
        if layer.rms_norm is not None:
            layer.rms_norm.to(dtype)
        model.set_submodule(name, layer)
        sd[f"{name}.weight_packed"] = layer.weight_packed_as()  # state_dicts hold the canonical (tiled) layout
        sd[f"{name}.weight_scale"] = layer.weight_scale
        if bias is not None:
            sd[b_key] = layer.bias.detach()
    return {
        "exclude": not_converted,
        "rms_norm": use_rms_norm,
        "rms_norm_eps": eps,
        "packed": mode == "offline" or linear_class == "bitlinear",
        "source": f"transformers-bitnet/{linear_class}/{mode}",
    }
