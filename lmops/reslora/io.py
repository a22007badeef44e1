"""ResLoRA adapter files: :func:`save_adapter` and :func:`load_adapter` (safetensors + a JSON config,
each written atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..common.files import atomic_write
from .model import _MUST_MATCH, _STATE, CONFIG_NAME, FORMAT, WEIGHTS_NAME, ResLoRAConfig, _state, apply_reslora, reslora_layers

__all__ = ["load_adapter", "save_adapter"]


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters to directory ``path``: ``adapter_model.safetensors`` (``<module>.lora_A.weight``,
    ``<module>.lora_B.weight`` and ``<module>.norm_window``, the merge_bi statistics) and
    ``adapter_config.json`` (the config and the chains), each atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    st = _state(model)
    tensors = {}
    for name, layer in reslora_layers(model).items():
        tensors[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{name}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous()
        tensors[f"{name}.norm_window"] = layer.norm_window().contiguous()
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": 1, "config": st.config.to_dict(), "chains": st.chains}
    atomic_write(root / WEIGHTS_NAME, lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    atomic_write(root / CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(meta, indent=2)))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters written by :func:`save_adapter` into ``model``; returns ``model``.

    A model without ResLoRA gets :func:`apply_reslora` with the saved config first; a model with it
    must have the same structure, rank, alpha, pre_num and targets. Keys and shapes are checked before
    anything is copied (``ValueError`` naming the module, the shape expected and the one found).
    """
    from safetensors.torch import load_file

    root = Path(path)
    if not (root / CONFIG_NAME).is_file() or not (root / WEIGHTS_NAME).is_file():
        raise ValueError(f"path: expected a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}, got {str(root)!r}")
    meta = json.loads((root / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{CONFIG_NAME}: format {meta.get('format')!r} is not {FORMAT!r}")
    saved = ResLoRAConfig.from_dict(meta["config"])
    if _STATE not in model.__dict__:
        apply_reslora(model, **saved.to_dict())
    st = _state(model)
    for k in _MUST_MATCH:
        have, want = getattr(st.config, k), getattr(saved, k)
        if have != want:
            raise ValueError(f"load_adapter: {k} of the saved adapter is {want!r}, the model's adapters have {have!r}")
    if [list(c) for c in meta["chains"]] != st.chains:
        raise ValueError(f"load_adapter: the saved chains {meta['chains']} differ from the model's {st.chains}")
    layers = reslora_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("load_adapter: some ResLoRA layers are merged; unmerge() them first")
    tensors = load_file(str(root / WEIGHTS_NAME))
    expected = {}
    for name, layer in layers.items():
        expected[f"{name}.lora_A.weight"] = tuple(layer.lora_A.weight.shape)
        expected[f"{name}.lora_B.weight"] = tuple(layer.lora_B.weight.shape)
        expected[f"{name}.norm_window"] = None
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"load_adapter: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for key, shape in expected.items():
        if shape is not None and tuple(tensors[key].shape) != shape:
            raise ValueError(f"load_adapter: {key}: expected shape {shape}, got {tuple(tensors[key].shape)}")
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.weight.copy_(tensors[f"{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(tensors[f"{name}.lora_B.weight"])
            layer.load_norm_window(tensors[f"{name}.norm_window"].to(layer.lora_A.weight.device))
    return model
