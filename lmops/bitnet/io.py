"""BitNet checkpoints: :func:`save_pretrained`, :func:`from_pretrained`, :func:`convert_directory`, and
the plumbing under them (reading configs and weight files, building an empty model skeleton, loading
a state_dict with clear errors).

Only local files are read (no hub access), and only formats that cannot run code: safetensors, or a
``torch.load`` with ``weights_only=True`` for ``pytorch_model.bin``. Directories are written
atomically (:func:`lmops.common.files.atomic_directory`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..common.files import atomic_directory
from .hf import HF_QUANT_METHOD, hf_bitnet_to_lmops
from .layer import BitLinear
from .model import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PACKED_LAYOUT,
    QAT_WARNING,
    _bitlinears,
    _pack_all,
    _set_record,
    conversion_record,
    convert,
)

__all__ = [
    "build_config",
    "build_skeleton",
    "convert_directory",
    "from_pretrained",
    "load_into",
    "read_config_dict",
    "read_state_dict",
    "save_pretrained",
    "split_shared_tensors",
    "tokenizer_and_extra_files",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict. FileNotFoundError / ValueError name the path."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected a model directory holding {CONFIG_NAME})")
    file = root / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; a model directory needs a {CONFIG_NAME}")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{file}: expected a transformers config (a JSON object with 'model_type')")
    return cfg


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing weight file")
    try:
        return load_file(str(file), device="cpu")
    except Exception as e:  # safetensors raises its own error type (and OSError) on bad files
        raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing weight file")
    try:
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{file}: not a readable weights-only torch file (truncated, corrupt or pickled code?): {e}"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{file}: expected a dict of tensors (a state_dict)")
    return sd


def _read_index(file: Path) -> list[str]:
    try:
        weight_map = json.loads(file.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: expected a JSON object with a 'weight_map' ({e!r})") from e
    return sorted(set(weight_map.values()))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a model directory, on CPU.

    Looks for, in order: ``model.safetensors``, ``model.safetensors.index.json`` (shards),
    ``pytorch_model.bin``, ``pytorch_model.bin.index.json``.
    """
    root = Path(path)
    loaders = ((SAFE_WEIGHTS, SAFE_INDEX, _load_safetensors), (BIN_WEIGHTS, BIN_INDEX, _load_bin))
    for single, index, load in loaders:
        if (root / single).is_file():
            return load(root / single)
        if (root / index).is_file():
            sd: dict[str, torch.Tensor] = {}
            for shard in _read_index(root / index):
                sd.update(load(root / shard))
            return sd
    names = ", ".join(n for s, i, _ in loaders for n in (s, i))
    raise FileNotFoundError(f"{root}: no weights found (looked for {names})")


# ----------------------------------------------------------------------------------------------
# building and loading
# ----------------------------------------------------------------------------------------------


def build_config(cfg: dict[str, Any]):
    """A transformers config object from a ``config.json`` dict (without lmops/quantization keys)."""
    from transformers import AutoConfig

    cfg = dict(cfg)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def build_skeleton(config, dtype: torch.dtype) -> nn.Module:
    """An ``AutoModelForCausalLM`` of ``config`` on CPU in ``dtype`` with initialisation skipped.

    Parameters hold uninitialised memory until a state_dict is loaded; non-persistent buffers (RoPE
    frequencies) are computed as usual. Weight ties are *not* applied here (see :func:`load_into`).
    """
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        try:
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # pragma: no cover - transformers 4.x spelling
            return AutoModelForCausalLM.from_config(config, torch_dtype=dtype)


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def load_into(
    model: nn.Module, sd: dict[str, torch.Tensor], path: str | os.PathLike, tied: dict[str, str] | None = None
) -> None:
    """Copy ``sd`` into ``model`` (dtype cast by ``copy_``), then tie weights.

    ``tied`` maps a key left out of ``sd`` to the key whose tensor it shares (lmops directories record
    it); transformers' own ``tie_weights`` handles the ties its config declares. Raises ValueError
    naming ``path`` and the key for a tensor of the wrong shape or a tensor the checkpoint lacks;
    tensors the model does not have are reported with a warning.
    """
    expected = model.state_dict()
    unexpected = []
    for key, value in sd.items():
        if key not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path}: tensor '{key}' has shape {tuple(value.shape)}, but the model built from "
                f"{CONFIG_NAME} expects {tuple(expected[key].shape)}"
            )
    if unexpected:
        warnings.warn(
            f"{path}: ignoring {len(unexpected)} tensors the model does not have: {unexpected[:8]}", stacklevel=3
        )
        sd = {k: v for k, v in sd.items() if k not in set(unexpected)}
    missing = set(model.load_state_dict(sd, strict=False).missing_keys)
    for target, source in (tied or {}).items():
        if target in missing and source not in missing:
            parent_name, _, attr = target.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, model.get_parameter(source))
            missing.discard(target)
    if missing and hasattr(model, "tie_weights"):
        try:
            model.tie_weights(missing_keys=missing)  # transformers >= 5: symmetric, discards what it ties
        except TypeError:  # pragma: no cover - transformers 4.x
            model.tie_weights()
            current = model.state_dict(keep_vars=True)
            loaded = [current[k] for k in sd if k in current]
            missing = {k for k in missing if not any(_shares_storage(current[k], t) for t in loaded)}
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} tensors the model needs: {sorted(missing)[:8]}")


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def split_shared_tensors(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Make a state_dict safetensors can store (it refuses tensors sharing memory).

    Returns ``(tensors, tied)``: keys whose tensor is the very same view as an earlier key's are dropped
    and recorded in ``tied`` (dropped key -> kept key); other overlapping views are cloned. Every
    tensor comes back detached, contiguous and on CPU.
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for key, t in sd.items():
        t = t.detach()
        storage = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        view = (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if storage is not None and view in seen:
            tied[key] = seen[view]
            continue
        if storage is not None:
            seen[view] = key
            if storage in storages:
                t = t.clone()
            storages.add(storage)
        tensors[key] = t.to("cpu").contiguous()
    # a tensor moved from an accelerator or made contiguous may still alias another one: clone the rest
    ptrs: set[int] = set()
    for key, t in tensors.items():
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in ptrs or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                tensors[key] = t = t.clone()
            ptrs.add(t.untyped_storage().data_ptr())
    return tensors, tied


def tokenizer_and_extra_files(src: str | os.PathLike) -> list[Path]:
    """Files of a model directory other than its config and weights (tokenizer, generation config,
    chat template, README, ...), to copy untouched next to a converted model."""
    root = Path(src)
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != CONFIG_NAME
        and not p.name.endswith(_WEIGHT_SUFFIXES)
    )


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    extra_files: Iterable[str | os.PathLike] = (),
) -> None:
    """Write ``model`` as an lmops BitNet directory, atomically (a temporary directory beside ``path``
    is renamed into place; an existing ``path`` is replaced only once everything was written).

    Contents: ``config.json`` (the transformers config without ``quantization_config``, plus an
    ``lmops.bitnet`` section: format, version, layout, exclude, rms_norm, packed, the converted module
    names and tied keys), ``model.safetensors`` (the state_dict: ``weight_packed`` uint8 and
    ``weight_scale`` float32 (1,) for packed layers, latent ``weight`` for training-mode ones; tied
    tensors stored once), ``generation_config.json``, the tokenizer if given, and ``extra_files``
    copied byte for byte. No pickle anywhere.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model: expected a transformers model with a .config, got {type(model).__name__}")
    layers = _bitlinears(model)
    if not layers:
        raise ValueError("save_pretrained: the model has no BitLinear layer; call lmops.bitnet.convert(model) first")
    packed = {layer.is_packed for layer in layers.values()}
    if len(packed) > 1:
        raise ValueError(
            "save_pretrained: some BitLinear layers are packed and others are not; call lmops.bitnet.pack(model)"
        )
    tensors, tied = split_shared_tensors(model.state_dict())
    _set_record(model, conversion_record(model) or {})
    section = {**conversion_record(model), "tied": tied}
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["lmops"] = {**(cfg.get("lmops") or {}), "bitnet": section}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / SAFE_WEIGHTS), metadata={"format": "pt", "lmops_format": FORMAT_NAME})
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for file in map(Path, extra_files):
            if file.name not in (CONFIG_NAME, SAFE_WEIGHTS):
                shutil.copyfile(file, tmp / file.name)


def _lmops_plan(model: nn.Module, sd: dict[str, torch.Tensor], section: dict[str, Any], path: Path) -> None:
    """Swap the modules an lmops directory lists for BitLinears shaped like its tensors."""
    for key, want in (("format", FORMAT_NAME), ("layout", PACKED_LAYOUT)):
        if section.get(key) != want:
            raise ValueError(f"{path / CONFIG_NAME}: lmops.bitnet.{key} is {section.get(key)!r}, expected {want!r}")
    if not isinstance(section.get("version"), int) or section["version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path / CONFIG_NAME}: lmops.bitnet.version is {section.get('version')!r}, "
            f"this lmops reads versions up to {FORMAT_VERSION}"
        )
    eps = float(section.get("rms_norm_eps", 1e-6))
    for name in section.get("modules", []):
        try:
            linear = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(
                f"{path}: lmops.bitnet.modules names '{name}', which the model built from {CONFIG_NAME} lacks"
            ) from e
        if type(linear) is not nn.Linear:
            raise ValueError(f"{path}: module '{name}' is a {type(linear).__name__}, expected an nn.Linear to convert")
        has_norm = f"{name}.rms_norm.weight" in sd
        key = f"{name}.weight_packed"
        if key not in sd:  # latent (training-mode) weights, loaded into a fresh BitLinear
            model.set_submodule(name, BitLinear.from_linear(linear, rms_norm=has_norm, eps=eps))
            continue
        want = (linear.out_features, 4 * ((linear.in_features + 15) // 16))
        if tuple(sd[key].shape) != want or sd[key].dtype != torch.uint8:
            raise ValueError(f"{path}: tensor '{key}' is {sd[key].dtype} {tuple(sd[key].shape)}, expected uint8 {want} "
                             f"for a ({linear.out_features}, {linear.in_features}) linear")
        q = torch.zeros(linear.out_features, linear.in_features, dtype=torch.int8)  # real values loaded below
        bias = torch.zeros(linear.out_features, dtype=linear.weight.dtype) if linear.bias is not None else None
        layer = BitLinear.from_ternary(q, 1.0, bias, rms_norm=has_norm, eps=eps)
        if layer.rms_norm is not None:
            layer.rms_norm.to(linear.weight.dtype)
        model.set_submodule(name, layer)


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Load a BitNet causal LM from a local directory, offline, into lmops ``BitLinear`` layers.

    Reads (a) an lmops directory (:func:`save_pretrained`; packed or training-mode; a packed one through
    :func:`lmops.engine.load_packed`, which never materializes float projection weights) or (b) a
    transformers BitNet checkpoint (``quantization_config.quant_method == "bitnet"``): weights packed in
    transformers' layout, ``uint8 (out/4, in)`` under ``<name>.weight`` with ``<name>.weight_scale``
    (``linear_class="bitlinear"``: ``y = x_q q^T / (s_x * weight_scale)``, so gamma = 1/weight_scale;
    ``"autobitlinear"``: ``y = (x_q q^T + b) * weight_scale``, so gamma = weight_scale), or latent float
    weights in ``quantization_mode="online"``. ``use_rms_norm``/``rms_norm_eps`` and
    ``modules_to_not_convert`` are honoured. Weights: ``model.safetensors``, sharded safetensors
    (``model.safetensors.index.json``) or a weights-only ``pytorch_model.bin``.

    Args:
        dtype: dtype of every floating tensor but ``weight_scale`` (always float32).
        device: where the returned model lives.
    Returns:
        the transformers ``AutoModelForCausalLM`` in eval mode, its converted linears BitLinear.
    Raises:
        FileNotFoundError: no directory, no ``config.json``, no weights, a missing shard.
        ValueError: an unreadable (truncated/corrupt) weight file, a tensor of the wrong shape or
            missing from the checkpoint, or a config that is neither lmops BitNet nor transformers BitNet.
    """
    root = Path(path)
    cfg = read_config_dict(root)
    section = (cfg.pop("lmops", None) or {}).get("bitnet")
    if isinstance(section, dict) and section.get("packed"):
        # packed lmops directory: a meta-device skeleton filled straight from the file, no float weights
        from ..engine.loading import load_packed

        return load_packed(root, dtype=dtype, device=device)
    quant = cfg.pop("quantization_config", None)
    is_hf = isinstance(quant, dict) and quant.get("quant_method") == HF_QUANT_METHOD
    if section is None and not is_hf:
        raise ValueError(
            f"{root / CONFIG_NAME}: neither an lmops BitNet directory (no 'lmops.bitnet' section) nor a "
            "transformers BitNet checkpoint (no quantization_config with quant_method 'bitnet'); to convert a "
            "float model use lmops.bitnet.convert_directory or lmops.bitnet.convert"
        )
    sd = read_state_dict(root)
    model = build_skeleton(build_config(cfg), dtype)
    if section is not None:
        _lmops_plan(model, sd, section, root)
        record = section
        tied = section.get("tied") or {}
    else:
        record = hf_bitnet_to_lmops(model, sd, quant, root, dtype)
        tied = {}
    load_into(model, sd, root, tied)
    _set_record(model, record)
    generation_file = root / "generation_config.json"
    if generation_file.is_file() and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(root))
    return model.to(device).eval()


def convert_directory(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    pack: bool = False,
    dtype: torch.dtype = torch.float32,
    exclude: str | Iterable[str] = ("lm_head",),
    rms_norm: bool = False,
) -> None:
    """A local Hugging Face model directory -> an lmops BitNet directory (the ``lmops convert`` verb).

    ``src`` may be a float causal LM (converted with :func:`convert`: latent weights, ready for QAT),
    a transformers BitNet checkpoint or an lmops directory. Tokenizer and other non-weight files are
    copied untouched. ``pack=True`` also packs the weights; on a model never trained with QAT (anything
    but a BitNet architecture, a BitNet checkpoint or an lmops directory) it warns (UserWarning) that
    this destroys the model's quality, and how to run QAT instead.
    """
    root = Path(src)
    cfg = read_config_dict(root)
    quant = cfg.get("quantization_config")
    already = (cfg.get("lmops") or {}).get("bitnet") is not None or (
        isinstance(quant, dict) and quant.get("quant_method") == HF_QUANT_METHOD
    )
    if already:
        model = from_pretrained(root, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        names = (SAFE_WEIGHTS, SAFE_INDEX, BIN_WEIGHTS, BIN_INDEX)
        if not any((root / n).is_file() for n in names):
            raise FileNotFoundError(f"{root}: no weights found (looked for {', '.join(names)})")
        model = AutoModelForCausalLM.from_pretrained(
            str(root), dtype=dtype, local_files_only=True, trust_remote_code=False
        )
        convert(model, exclude=exclude, rms_norm=rms_norm)
    if pack:
        trained_with_qat = already or cfg.get("model_type") == "bitnet"
        if not trained_with_qat:
            warnings.warn(QAT_WARNING, UserWarning, stacklevel=2)
        _pack_all(model)
    save_pretrained(model, dst, extra_files=tokenizer_and_extra_files(root))
