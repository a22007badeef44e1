"""Checkpoint plumbing behind :mod:`lmops.bitnet`: reading configs and weight files, building an empty
model skeleton, loading a state_dict with clear errors, and writing a directory atomically.

Nothing here knows about BitNet; :mod:`lmops.bitnet` decides what the tensors mean. Only local files
are read (no hub access), and only formats that cannot run code: safetensors, or a ``torch.load``
with ``weights_only=True`` for ``pytorch_model.bin``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

__all__ = [
    "atomic_directory",
    "build_config",
    "build_skeleton",
    "is_excluded",
    "load_into",
    "read_config_dict",
    "read_state_dict",
    "split_shared_tensors",
    "tokenizer_and_extra_files",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")


def is_excluded(name: str, patterns: Iterable[str]) -> bool:
    """True when some pattern equals a run of consecutive dotted components of module ``name``:
    ``"lm_head"`` matches ``lm_head``, ``"mlp"`` every ``...mlp.*`` module, ``"layers.0"`` layer 0 only
    (not ``layers.10``). A trailing ``.weight`` on a pattern is ignored."""
    parts = name.split(".")
    for pattern in patterns:
        p = pattern.removesuffix(".weight").split(".")
        if any(parts[i : i + len(p)] == p for i in range(len(parts) - len(p) + 1)):
            return True
    return False


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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced only after everything was written (it is renamed aside, the new
    directory renamed in, then the old one removed); on any error the temporary directory is removed
    and an existing ``path`` is left as it was.
    """
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
