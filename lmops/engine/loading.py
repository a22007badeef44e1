"""Loading a packed lmops BitNet directory without ever holding float projection weights.

``lmops.bitnet.from_pretrained`` allocates the whole float model first (uninitialised) and copies a
full state_dict into it. :func:`load_packed` builds the model on the meta device instead, swaps the
listed projections for packed ``BitLinear`` skeletons, then reads the safetensors file(s) tensor by
tensor and puts each tensor in place (no second copy). Peak resident-set growth of load + a first
generate, on a 168 MiB packed checkpoint of a 247M-parameter Llama in bfloat16 (the test's, measured
2026-11-29 after the modeling code was imported): ``from_pretrained`` 449 MiB, ``load_packed`` 168 MiB.
safetensors hands out tensors backed by a private copy-on-write mapping of the file, so weights enter
the resident set as they are first read; tensors cast to another ``dtype`` are copies. Only what
cannot be in a checkpoint is computed: the rotary embedding's frequencies.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..bitnet.io import CONFIG_NAME, SAFE_INDEX, SAFE_WEIGHTS, build_config, build_skeleton, read_config_dict
from ..bitnet.layer import BitLinear
from ..bitnet.model import FORMAT_NAME, FORMAT_VERSION, PACKED_LAYOUT, _set_record

__all__ = ["load_packed"]


def _weight_files(root: Path) -> list[Path]:
    if (root / SAFE_WEIGHTS).is_file():
        return [root / SAFE_WEIGHTS]
    if (root / SAFE_INDEX).is_file():
        try:
            weight_map = json.loads((root / SAFE_INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{root / SAFE_INDEX}: expected a JSON object with a 'weight_map' ({e!r})") from e
        files = [root / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file}: missing shard listed in {SAFE_INDEX}")
        return files
    raise FileNotFoundError(f"{root}: no {SAFE_WEIGHTS} or {SAFE_INDEX} (load_packed reads safetensors only)")


def _open(file: Path):
    """``safe_open`` with the error :func:`lmops.bitnet.from_pretrained` gives for a bad file."""
    from safetensors import safe_open

    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing weight file")
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type (and OSError) on bad files
        raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def _check_section(section: dict | None, root: Path) -> dict:
    if not isinstance(section, dict):
        raise ValueError(
            f"{root / CONFIG_NAME}: not an lmops BitNet directory (no 'lmops.bitnet' section); "
            "use lmops.bitnet.from_pretrained for transformers BitNet checkpoints"
        )
    for key, want in (("format", FORMAT_NAME), ("layout", PACKED_LAYOUT)):
        if section.get(key) != want:
            raise ValueError(f"{root / CONFIG_NAME}: lmops.bitnet.{key} is {section.get(key)!r}, expected {want!r}")
    if not isinstance(section.get("version"), int) or section["version"] > FORMAT_VERSION:
        raise ValueError(f"{root / CONFIG_NAME}: lmops.bitnet.version is {section.get('version')!r}, "
                         f"this lmops reads versions up to {FORMAT_VERSION}")
    if not section.get("packed"):
        raise ValueError(f"{root}: the BitLinear layers are not packed (a QAT checkpoint); load it with "
                         "lmops.bitnet.from_pretrained")
    return section


def _packed_skeleton(linear: nn.Module, name: str, rms_norm: bool, eps: float, dtype: torch.dtype,
                     root: Path) -> BitLinear:
    """A packed ``BitLinear`` on the meta device shaped like ``linear`` (nothing allocated)."""
    if type(linear) is not nn.Linear:
        raise ValueError(f"{root}: module '{name}' is a {type(linear).__name__}, expected an nn.Linear to replace")
    with torch.device("meta"):
        layer = BitLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, rms_norm=rms_norm,
                          eps=eps, dtype=dtype)
        cols = 4 * ((linear.in_features + 15) // 16)
        bias, layer.bias = layer.bias, None
        layer._set_packed(torch.empty((linear.out_features, cols), dtype=torch.uint8), torch.empty(1), bias)
    return layer


def _assign(model: nn.Module, key: str, value: torch.Tensor, dtype: torch.dtype, file: Path) -> bool:
    """Put ``value`` in place of the (meta) tensor ``key`` of ``model``; False when the model has none."""
    owner_name, _, attr = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return False
    current = owner._parameters.get(attr) if attr in owner._parameters else owner._buffers.get(attr)
    if current is None:
        return False
    if tuple(value.shape) != tuple(current.shape):
        raise ValueError(f"{file}: tensor '{key}' has shape {tuple(value.shape)}, but the model built from "
                         f"{CONFIG_NAME} expects {tuple(current.shape)}")
    if value.dtype.is_floating_point:
        value = value.to(torch.float32 if attr == "weight_scale" else dtype)
    elif value.dtype != current.dtype:
        raise ValueError(f"{file}: tensor '{key}' is {value.dtype}, expected {current.dtype}")
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=current.requires_grad and value.is_floating_point())
    else:
        owner._buffers[attr] = value
    return True


def _rebuild_rotary(model: nn.Module) -> None:
    """Rotary embeddings keep only computed buffers (no checkpoint entry): build them for real."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding") and any(b.is_meta for b in module.buffers()):
            model.set_submodule(name, type(module)(config=module.config))


def load_packed(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> nn.Module:
    """A packed lmops BitNet directory (``lmops.bitnet.save_pretrained`` of a packed model) as a
    ``transformers`` causal LM with packed ``BitLinear`` layers, built without float projection weights.

    Same result as ``lmops.bitnet.from_pretrained(path, dtype=dtype, device=device)`` (eval mode, the
    conversion record, the generation config), at a fraction of the peak memory (module docstring).

    Args:
        dtype: of every floating tensor but ``weight_scale`` (float32).
        device: where the model lives.
    Raises:
        FileNotFoundError: no directory, config, weights or shard.
        ValueError: not a packed lmops directory, a tensor of the wrong shape or dtype, or a tensor the
            model needs missing from the checkpoint.
    """
    root = Path(path)
    cfg = read_config_dict(root)
    section = _check_section((cfg.pop("lmops", None) or {}).get("bitnet"), root)
    cfg.pop("quantization_config", None)
    files = _weight_files(root)
    names: dict[str, Path] = {}
    for file in files:
        with _open(file) as f:
            names.update(dict.fromkeys(f.keys(), file))
    with torch.device("meta"):
        model = build_skeleton(build_config(cfg), dtype)
    eps = float(section.get("rms_norm_eps", 1e-6))
    for name in section.get("modules", []):
        if f"{name}.weight_packed" not in names:
            raise ValueError(f"{root}: the checkpoint lacks '{name}.weight_packed' (listed in lmops.bitnet.modules)")
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{root}: lmops.bitnet.modules names '{name}', which the model built from "
                             f"{CONFIG_NAME} lacks") from None
        model.set_submodule(name, _packed_skeleton(linear, name, f"{name}.rms_norm.weight" in names, eps, dtype, root))
    unexpected = []
    for file in files:
        with _open(file) as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if not _assign(model, key, f.get_tensor(key), dtype, file):
                    unexpected.append(key)
    if unexpected:
        warnings.warn(f"{root}: ignoring {len(unexpected)} tensors the model does not have: {unexpected[:8]}",
                      stacklevel=2)
    for target, source in (section.get("tied") or {}).items():
        owner_name, _, attr = target.rpartition(".")
        setattr(model.get_submodule(owner_name), attr, model.get_parameter(source))
    head, embed = getattr(model, "lm_head", None), model.get_input_embeddings()
    if head is not None and head.weight.is_meta and getattr(model.config, "tie_word_embeddings", False):
        head.weight = embed.weight
    _rebuild_rotary(model)
    missing = [k for k, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    missing += [f"{n} (buffer)" for n, b in model.named_buffers() if b.is_meta and n not in missing]
    if missing:
        raise ValueError(f"{root}: the checkpoint lacks {len(missing)} tensors the model needs: {sorted(missing)[:8]}")
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.relayout()  # the checkpoint holds the canonical layout; the backend may prefer another
    _set_record(model, section)
    if (root / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(root))
    return model.to(device).eval()
